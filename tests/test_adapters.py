"""PEFT LoRA adapters as members: trained here with PEFT on the digits-demo zoo's base (timm's
test_efficientnet, trained on scikit-learn's digits), saved as PEFT saves them, and merged by zoo as the full
models they stand for — the same tensors PEFT's own ``merge_and_unload`` gives."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# the `adapters` fixture (lora-a, lora-b, trained here with PEFT): tests/lora_adapters.py, through conftest.py


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_an_adapter_is_the_full_model_peft_merges(adapters):
    import zoo
    from zoo.api.combine import whole

    adapter = zoo.load_member(str(adapters["lora-a"]))
    assert adapter.format.name == "adapter" and adapter.format.base_of(adapter) == str(adapters["base"])
    full = whole(adapter)  # applied to the base its adapter_config.json names
    theirs = _tensors(adapters["full-a"])
    assert full.keys() == list(zoo.load_member(str(adapters["base"])).keys())
    got = full.read(full.keys())
    assert set(got) == set(theirs) and all(torch.equal(got[k], theirs[k]) for k in theirs)
    # the LoRA modules moved, the others are the base's, the head is the adapter's own (modules_to_save)
    base = _tensors(adapters["base"])
    assert not torch.equal(got["conv_head.weight"], base["conv_head.weight"])
    assert torch.equal(got["conv_stem.weight"], base["conv_stem.weight"])
    assert not torch.equal(got["classifier.weight"], base["classifier.weight"])


@pytest.mark.parametrize("strategy", ["task-arithmetic", "ties"])
def test_adapters_of_two_ranks_merge_as_their_full_models(tmp_path, adapters, zoo_cli, strategy):
    base = ["--base", adapters["base"]]
    zoo_cli("combine", "-s", strategy, *base, "-m", adapters["lora-a"], "-m", adapters["lora-b"], "--out",
            tmp_path / "adapters")
    zoo_cli("combine", "-s", strategy, *base, "-m", adapters["full-a"], "-m", adapters["full-b"], "--out",
            tmp_path / "full")
    zoo_cli("combine", "-s", strategy, *base, "-m", adapters["lora-a"], "-m", adapters["full-b"], "--out",
            tmp_path / "mixed")  # an adapter and a full fine-tune of the same base
    full = _tensors(tmp_path / "full")
    for out in ("adapters", "mixed"):
        got = _tensors(tmp_path / out)
        assert got.keys() == full.keys() and all(torch.equal(got[k], full[k]) for k in full), out
    recipe = json.loads((tmp_path / "adapters" / "zoo.json").read_text())
    first = recipe["members"][0]
    assert first["adapter_of"] == "base" and "adapter_model.safetensors" in first["files"]
    assert json.loads((tmp_path / "adapters" / "config.json").read_text())["architecture"] == "test_efficientnet"


def test_eval_and_load_open_an_adapter_on_its_base(adapters, val_dir, zoo_cli):
    import zoo

    on_adapter = json.loads(zoo_cli("eval", adapters["lora-a"], "--data", val_dir, "--json").stdout)
    on_full = json.loads(zoo_cli("eval", adapters["full-a"], "--data", val_dir, "--json").stdout)
    assert on_adapter == on_full
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(zoo.load(str(adapters["lora-a"]))(x), zoo.load(str(adapters["full-a"]))(x))


def _ia3(folder: Path, adapters) -> Path:
    shutil.copytree(adapters["lora-a"], folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "IA3", "target_modules": ["conv_pwl"], "feedforward_modules": ["conv_pwl"],
        "base_model_name_or_path": config["base_model_name_or_path"]}))
    return folder


def _no_weights(folder: Path, adapters) -> Path:
    shutil.copytree(adapters["lora-a"], folder)
    (folder / "adapter_model.safetensors").unlink()
    return folder


@pytest.mark.parametrize("case,words", [
    ("other-base", ["does not fit the base", "other-arch", "--base"]),
    ("ia3", ["IA3", "LoRA adapters"]),
    ("no-weights", ["adapter_model.safetensors", "without its weights"]),
])
def test_adapters_zoo_cannot_merge_are_refused(tmp_path, adapters, digits_zoo, zoo_cli, case, words):
    args = {"other-base": lambda: ["-m", adapters["lora-a"], "--base", digits_zoo / "members" / "other-arch"],
            "ia3": lambda: ["-m", _ia3(tmp_path / "ia3", adapters), "--base", adapters["base"]],
            "no-weights": lambda: ["-m", _no_weights(tmp_path / "nw", adapters), "--base", adapters["base"]]}[case]()
    out = tmp_path / "out"
    proc = zoo_cli("combine", "-s", "task-arithmetic", "-m", adapters["lora-b"], *args, "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    message = " ".join(proc.stderr.split())
    assert len(proc.stderr.strip().splitlines()) <= 2 and all(w in message for w in words), message
    assert not out.exists()
