"""LEVI on the digits demo: a frozen pre-trained member, a small timm model from scratch, adapting layers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import kill_after_checkpoint


def _args(digits_zoo, *options):
    data = digits_zoo / "data"
    return ["combine", "-s", "levi", "-m", digits_zoo / "members" / "base", "--train-data", data / "train",
            "--eval-data", data / "val", "-o", "small=test_efficientnet", *sum((["-o", o] for o in options), [])]


def test_levi_keeps_the_pretrained_model_frozen_and_predicts_the_mean_of_its_levels(tmp_path, digits_zoo, zoo_cli):
    import zoo
    from zoo.kit.data import data_config, load_split

    out = tmp_path / "levi"
    zoo_cli(*_args(digits_zoo, "epochs=2"), "--out", out)
    weights = load_file(str(out / "model.safetensors"))
    base = load_file(str(digits_zoo / "members" / "base" / "model.safetensors"))
    # the pre-trained model is the member, bit for bit (frozen, its BatchNorm statistics too)
    assert all(torch.equal(weights[f"big.{k}"], v) for k, v in base.items())
    assert {k.split(".")[0] for k in weights} == {"big", "small", "adapt"}
    net = zoo.load(str(out))
    member = zoo.load_member(str(digits_zoo / "members" / "base"))
    split = load_split(str(digits_zoo / "data" / "val"), data_config(member.pretrained_cfg),
                       label_names=member.label_names, num_classes=member.num_classes)
    with torch.inference_mode():
        levels = net(split.images[:32], per_level=True)
        assert levels.shape[0] == 2 and torch.allclose(net(split.images[:32]), levels.mean(0))
    recipe = json.loads((out / "zoo.json").read_text())
    measured = json.loads(zoo_cli("eval", out, "--data", digits_zoo / "data" / "val", "--json").stdout)
    assert measured["top1"] == pytest.approx(recipe["metrics"]["top1"], abs=1e-9)
    # the selective-classification figures and the cost, as for ensembles and cascades
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, *member.pretrained_cfg["input_size"]))
    assert recipe["metrics"]["macs_per_image"] == counter.get_total_flops() // 2 > 0
    assert 0 < recipe["metrics"]["aurc"] < 1 and 0 <= recipe["metrics"]["coverage@risk5%"] <= 1
    assert "LEVI: measured" in (out / "README.md").read_text()
    assert recipe["metrics"]["top1"] > 0.5 and len(recipe["report"]["eval_levels_top1"]) == 2


def test_an_interrupted_levi_run_resumes_to_the_same_weights(tmp_path, digits_zoo, zoo_cli):
    args = _args(digits_zoo, "epochs=2")
    reference = tmp_path / "reference"
    zoo_cli(*args, "--out", reference)
    out = tmp_path / "levi"
    checkpoint = tmp_path / ".levi.levi" / "checkpoint.pt"
    kill_after_checkpoint(args, out, checkpoint)
    assert not out.exists()
    resumed = zoo_cli(*args, "--out", out, "--resume")
    assert "resuming from epoch 1 of 2" in resumed.stderr, resumed.stderr  # from the checkpoint, not epoch 0
    got, want = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("case", ["unknown small model", "two members"])
def test_bad_input(case, tmp_path, digits_zoo, zoo_cli):
    args = {"unknown small model": _args(digits_zoo, "small=no_such_net"),
            "two members": _args(digits_zoo) + ["-m", digits_zoo / "members" / "ft-long"]}[case]
    words = {"unknown small model": "timm has no such architecture", "two members": "exactly 1"}[case]
    proc = zoo_cli(*args, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and words in " ".join(proc.stderr.split()), proc.stderr
    assert not (tmp_path / "out").exists()
