"""The per-tensor merge contract (zoo.merge): the streaming core, merge methods, a base model, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file


def _exact_member(folder: Path, j: int, dtype: torch.dtype) -> Path:
    """A test_efficientnet member whose values are fixed by integer arithmetic alone (no RNG, no training),
    exactly representable in ``dtype``: the same bytes on every machine and every torch version."""
    import timm

    shapes = timm.create_model("test_efficientnet", num_classes=10).state_dict()
    sd = {}
    for i, (k, v) in enumerate(shapes.items()):
        if not v.is_floating_point():
            sd[k] = torch.tensor(j + 5, dtype=v.dtype)
            continue
        n = torch.arange(v.numel(), dtype=torch.int64)
        ints = (n * (7919 + 31 * j) + 104729 * i) % 255 - 127  # in [-127, 127]: exact in bf16 too
        t = ints.to(torch.float32) / 128
        if k.endswith("running_var"):
            t = t.abs() + 0.5
        sd[k] = t.reshape(v.shape).to(dtype)
    folder.mkdir(parents=True)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"architecture": "test_efficientnet", "num_classes": 10}))
    return folder


# sha256 of model.safetensors of the uniform soup of the three exact members below, recorded before the
# streaming core was generalised (zoo.merge.map_tensors): the rewrite must not move a single bit
SOUP_SHA256 = {
    "float32": "0e948fda53531c2e17b20360c8750acbd91baf2433397fcb0f7e719ecdb5485e",
    "bfloat16": "a860e7eec39ed42e4a242027307c34abd88c1561ed139388d2dc69df7ea298ec",
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_uniform_soup_bytes_are_pinned(tmp_path, zoo_cli, dtype):
    members = [_exact_member(tmp_path / f"m{j}", j, getattr(torch, dtype)) for j in range(3)]
    out = tmp_path / "soup"
    zoo_cli("combine", "-s", "soup", *sum((["-m", m] for m in members), []), "--out", out)
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    soup, first = load_file(str(out / "model.safetensors")), load_file(str(members[0] / "model.safetensors"))
    assert all(soup[k].dtype == first[k].dtype for k in first)  # cast back to the members' dtype
    assert digest == SOUP_SHA256[dtype], digest
