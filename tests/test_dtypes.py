"""Members stored in different precisions, the output's dtype (--dtype), and messages that name what
really differs between two members (the tensor set, a shape, or a dtype)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo


def _as(src: Path, dst: Path, dtype: torch.dtype) -> Path:
    """``src``'s member with its floating tensors stored as ``dtype``."""
    shutil.copytree(src, dst)
    sd = load_file(str(src / "model.safetensors"))
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()},
              str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _soup_in_float32(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The uniform soup as zoo.kit.tensors.weights.weighted_sum computes it, in float32, member order."""
    sds = [load_file(str(p / "model.safetensors")) for p in paths]
    c = 1.0 / len(sds)
    out = {}
    for k, v in sds[0].items():
        if not v.is_floating_point():
            out[k] = v
            continue
        acc = torch.mul(v.float(), c)
        for sd in sds[1:]:
            acc.add_(sd[k].float(), alpha=c)
        out[k] = acc
    return out


def test_members_in_different_precisions_merge_in_float32(tmp_path, ingredients, zoo_cli):
    half = _as(ingredients[1], tmp_path / "bf16-member", torch.bfloat16)
    members = [ingredients[0], half, ingredients[2]]
    out = tmp_path / "soup"
    zoo_cli("combine", "-s", "soup", *sum((["-m", m] for m in members), []), "--out", out)
    got = load_file(str(out / "model.safetensors"))
    expected = _soup_in_float32(members)
    assert {v.dtype for v in got.values() if v.is_floating_point()} == {torch.float32}  # they disagree: float32
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_dtype_sets_the_output_precision(tmp_path, ingredients, zoo_cli):
    out = tmp_path / "soup"
    zoo_cli("combine", "-s", "soup", "-m", ingredients[0], "-m", ingredients[1], "--dtype", "bfloat16", "--out", out)
    got = load_file(str(out / "model.safetensors"))
    expected = _soup_in_float32(ingredients[:2])
    for k, v in expected.items():
        assert torch.equal(got[k], v.to(torch.bfloat16) if v.is_floating_point() else v), k
    assert json.loads((out / "zoo.json").read_text())["dtype"] == "bfloat16"
    # the same soup held in memory (no out) and saved with a dtype: the same bytes
    result = zoo.combine("soup", [str(p) for p in ingredients[:2]])
    zoo.api.combine.save(result, tmp_path / "saved", dtype="bfloat16")
    assert (tmp_path / "saved" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_bad_dtype_and_what_differs(tmp_path, ingredients, digits_zoo, zoo_cli):
    out = tmp_path / "out"
    proc = zoo_cli("combine", "-s", "soup", "-m", ingredients[0], "-m", ingredients[1], "--dtype", "float8",
                   "--out", out, check=False)
    assert proc.returncode == 2 and "--dtype 'float8'" in proc.stderr and "bfloat16" in proc.stderr
    assert not out.exists()
    # an integer buffer stored as a float: the message says dtype, not "a different head or width"
    odd = tmp_path / "odd"
    shutil.copytree(ingredients[1], odd)
    sd = load_file(str(odd / "model.safetensors"))
    key = next(k for k, v in sd.items() if not v.is_floating_point())
    sd[key] = sd[key].float()
    save_file(sd, str(odd / "model.safetensors"), metadata={"format": "pt"})
    proc = zoo_cli("combine", "-s", "soup", "-m", ingredients[0], "-m", odd, "--out", out, check=False)
    assert proc.returncode == 2 and f"differ at tensor '{key}' in dtype: I64 vs F32" in proc.stderr
    # another head: the message says shape
    other = digits_zoo / "members" / "other-arch"
    proc = zoo_cli("combine", "-s", "soup", "-m", ingredients[0], "-m", other, "--out", out, check=False)
    assert proc.returncode == 2 and ("in shape" in proc.stderr or "different tensors" in proc.stderr)
    assert not out.exists()
