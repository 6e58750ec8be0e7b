"""Bad input: one clear line naming what is wrong, a non-zero exit code, and no output folder."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file


def _fails(zoo_cli, out, *args, code=2, words=()):
    proc = zoo_cli(*args, check=False)
    assert proc.returncode == code, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err
    if out is not None:
        assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))
    return err


def test_incompatible_members_name_both_and_the_tensor(tmp_path, ingredients, digits_zoo, zoo_cli):
    out = tmp_path / "out"
    other = digits_zoo / "members" / "other-arch"
    _fails(zoo_cli, out, "combine", "-s", "soup", "-m", ingredients[0], "-m", other, "--out", out,
           words=["ft-lr3e-3", "other-arch", "different tensors"])


@pytest.mark.parametrize("mode", ["uniform", "greedy"])
def test_architecture_timm_does_not_know(tmp_path, ingredients, val_dir, zoo_cli, mode):
    # uniform never builds a model (the check runs alongside the merge); greedy builds one at once
    import json

    renamed = []
    for i, src in enumerate(ingredients[:2]):
        dst = tmp_path / f"m{i}"
        shutil.copytree(src, dst)
        cfg = json.loads((dst / "config.json").read_text())
        cfg["architecture"] = "no_such_net"
        (dst / "config.json").write_text(json.dumps(cfg))
        renamed.append(dst)
    out = tmp_path / "out"
    _fails(zoo_cli, out, "combine", "-s", "soup", "-m", renamed[0], "-m", renamed[1], "--eval-data", val_dir,
           "--option", f"mode={mode}", "--out", out, words=["member m0", "'no_such_net'", "timm"])


def test_truncated_safetensors(tmp_path, ingredients, zoo_cli):
    broken = tmp_path / "broken"
    shutil.copytree(ingredients[1], broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    _fails(zoo_cli, out, "combine", "-s", "soup", "-m", ingredients[0], "-m", broken, "--out", out,
           words=["member broken", "model.safetensors", "truncated or corrupt"])


def test_member_with_nan(tmp_path, ingredients, zoo_cli):
    bad = tmp_path / "nan-member"
    shutil.copytree(ingredients[1], bad)
    sd = load_file(str(bad / "model.safetensors"))
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 4)
    sd[key].view(-1)[3] = float("nan")
    save_file(sd, str(bad / "model.safetensors"))
    out = tmp_path / "out"
    _fails(zoo_cli, out, "combine", "-s", "soup", "-m", ingredients[0], "-m", bad, "--out", out,
           words=["nan-member", key, "NaN or Inf"])


def test_pickle_refused_without_opt_in(tmp_path, ingredients, zoo_cli):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(ingredients[1] / "config.json", pickled)
    torch.save(load_file(str(ingredients[1] / "model.safetensors")), pickled / "pytorch_model.bin")
    out = tmp_path / "out"
    _fails(zoo_cli, out, "combine", "-s", "soup", "-m", ingredients[0], "-m", pickled, "--out", out,
           words=["pickled", "--allow-pickle"])
    zoo_cli("combine", "-s", "soup", "-m", ingredients[0], "-m", pickled, "--allow-pickle", "--out", out)
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("make, words", [
    (lambda p: p.mkdir(), ["no class sub-folders"]),
    (lambda p: (p / "3").mkdir(parents=True), ["no images found"]),
    (lambda p: ((p / "3").mkdir(parents=True), (p / "3" / "x.png").write_bytes(b"not a png")), ["cannot read"]),
    (lambda p: ((p / "cat").mkdir(parents=True), (p / "cat" / "x.png").write_bytes(b"x")), ["'cat'", "labels"]),
    (lambda p: None, ["no such folder"]),
])
def test_bad_data_folder(tmp_path, ingredients, zoo_cli, make, words):
    data = tmp_path / "data"
    make(data)
    out = tmp_path / "out"
    _fails(zoo_cli, out, "combine", "-s", "soup", "-m", ingredients[0], "-m", ingredients[1], "--eval-data", data,
           "--out", out, words=words)


def test_existing_out_refused_unless_force(tmp_path, ingredients, zoo_cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = zoo_cli("combine", "-s", "soup", "-m", ingredients[0], "--out", out, check=False)
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert (out / "keep.txt").read_text() == "mine"
    zoo_cli("combine", "-s", "soup", "-m", ingredients[0], "--out", out, "--force")
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()


def test_unknown_strategy_and_option(tmp_path, ingredients, zoo_cli):
    out = tmp_path / "out"
    _fails(zoo_cli, out, "combine", "-s", "nope", "-m", ingredients[0], "--out", out,
           words=["unknown strategy 'nope'", "soup"])
    _fails(zoo_cli, out, "combine", "-s", "soup", "-m", ingredients[0], "-o", "colour=red", "--out", out,
           words=["unknown option 'colour'", "mode"])
    _fails(zoo_cli, out, "combine", "-s", "soup", "-m", ingredients[0], "-o", "mode=soupy", "--out", out,
           words=["uniform, greedy, learned"])
    _fails(zoo_cli, out, "combine", "-s", "soup", "-o", "mode=greedy", "-m", ingredients[0], "--out", out,
           words=["--eval-data"])


def test_missing_member_path(tmp_path, zoo_cli):
    out = tmp_path / "out"
    _fails(zoo_cli, out, "combine", "-s", "soup", "-m", tmp_path / "nowhere", "--out", out,
           words=["not a path that exists"])


def test_bare_file_needs_arch(tmp_path, ingredients, zoo_cli):
    f = tmp_path / "weights.safetensors"
    shutil.copy(ingredients[0] / "model.safetensors", f)
    out = tmp_path / "out"
    _fails(zoo_cli, out, "combine", "-s", "soup", "-m", f, "--out", out, words=["--arch"])
    _fails(zoo_cli, out, "combine", "-s", "soup", "-m", f, "--arch", "no_such_net", "--out", out,
           words=["no_such_net"])
    zoo_cli("combine", "-s", "soup", "-m", f, "-m", ingredients[0], "--arch", "test_efficientnet", "--out", out)
    assert (out / "config.json").is_file()
