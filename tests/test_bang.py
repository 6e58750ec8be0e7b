"""BANG on the digits zoo: the whole recipe from one member, and averaging only from two."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import zoo

SHORT = {"lp_epochs": 3, "epochs": 1}  # enough to move the weights; the test checks exactness, not accuracy


@pytest.fixture(scope="module")
def data(digits_zoo):
    return digits_zoo / "data"


@pytest.fixture(scope="module")
def base(digits_zoo):
    return str(digits_zoo / "members" / "base")


def test_without_calibration_bang_is_wise_ft_on_an_lp_and_an_lp_ft(tmp_path, base, data):
    """ε=0 and no Mixup: BANG is exactly WiSE-FT between a linear probe and its LP-FT."""
    train = str(data / "train")
    recipe = zoo.FinetuneRecipe
    lp = zoo.finetune(base, train, tmp_path / "lp", recipe=recipe(mode="lp", lp_epochs=SHORT["lp_epochs"]))
    ft = zoo.finetune(base, train, tmp_path / "ft", recipe=recipe(mode="lp-ft", **SHORT))
    assert lp.report["history"] and ft.report["history"]
    common = {"pick": "alpha=0.5", "bn": "interpolate"}
    wise = zoo.combine("wise-ft", [str(tmp_path / "lp"), str(tmp_path / "ft")], options=common)
    bang = zoo.combine("bang", [base], options={**common, **SHORT, "label_smoothing": 0.0, "mixup": 0.0},
                       train_data=train)
    assert bang.state_dict.keys() == wise.state_dict.keys()
    assert all(torch.equal(bang.state_dict[k], wise.state_dict[k]) for k in wise.state_dict)
    # the ends really differ, so the equality above is not between two copies of one model
    a, b = load_file(tmp_path / "lp" / "model.safetensors"), load_file(tmp_path / "ft" / "model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_whole_recipe_writes_a_calibrated_end_and_reports_both_ends(tmp_path, base, data, zoo_cli):
    out = tmp_path / "bang"
    zoo_cli("combine", "-s", "bang", "-m", base, "--train-data", data / "train", "--eval-data", data / "val",
            "--ood-data", data / "test", "-o", "alphas=0:1:0.5", "-o", "pick=alpha=1", "-o", "bn=interpolate",
            "-o", "label_smoothing=0.3", "-o", "mixup=0.2", *[f"-o{k}={v}" for k, v in SHORT.items()],
            "--out", out)
    recipe = json.loads((out / "zoo.json").read_text())
    report = recipe["report"]
    assert report["bang"]["made_ends"] and report["bang"]["label_smoothing"] == 0.3
    assert set(report["bang"]["training"]) == {"linear-probe", "calibrated-fine-tune"}
    assert report["picked_alpha"] == 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 10 and len(config["pretrained_cfg"]["label_names"]) == 10
    card = (out / "README.md").read_text()
    assert "BANG: the ends on shifted data" in card and "WiSE-FT sweep" in card
    # the card's numbers for the fine-tuned end are those of the written model on the shifted data
    tuned = next(p for p in report["sweep"] if p["alpha"] == 1.0)
    measured = json.loads(zoo_cli("eval", out, "--data", data / "test", "--json").stdout)
    assert measured["top1"] == pytest.approx(tuned["ood_top1"])
    assert measured["confidence"] == pytest.approx(tuned["ood_confidence"])
    assert f"| {tuned['ood_top1']:.4f} | {tuned['ood_confidence']:.4f} | {tuned['ood_ece']:.4f} |" in card
    # label smoothing 0.3 caps what the fine-tune learns to say: it is far less sure than the linear probe
    start = next(p for p in report["sweep"] if p["alpha"] == 0.0)
    assert tuned["id_confidence"] < start["id_confidence"] - 0.1


def test_two_members_only_average(tmp_path, digits_zoo):
    members = [str(digits_zoo / "members" / n) for n in ("base", "ft-ls0.1")]
    opts = {"pick": "alpha=0.3", "bn": "interpolate"}
    bang = zoo.combine("bang", members, options=opts)
    wise = zoo.combine("wise-ft", members, options=opts)
    assert all(torch.equal(bang.state_dict[k], wise.state_dict[k]) for k in wise.state_dict)
    assert bang.report["bang"]["made_ends"] is False


@pytest.mark.parametrize("args,message", [
    (["-m", "{base}"], "pass --train-data"),
    (["-m", "{base}", "-m", "{base}", "-m", "{base}"], "got 3"),
    (["-m", "{base}", "--train-data", "{train}", "-o", "label_smoothing=1.5"], "label_smoothing"),
])
def test_bad_input(tmp_path, base, data, zoo_cli, args, message):
    out = tmp_path / "out"
    args = [a.format(base=base, train=data / "train") for a in args]
    proc = zoo_cli("combine", "-s", "bang", *args, "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
