"""Evaluation in one place: a metric added by an outside plugin (the `zoo_metrics` hook) is measured for
every strategy's output and reaches its zoo.json and model card — soup, wise-ft, bang, distill, stitch.

The plugin's metric is top-2 accuracy; each output's top-2 is checked against top-1 (top-2 ≥ top-1) and,
for the timm-model outputs, against a top-2 computed here from the written model's own logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

PLUGIN = '''
import zoo


def top2(logits, targets):
    return float(logits.topk(2, dim=1).indices.eq(targets[:, None]).any(dim=1).float().mean())


@zoo.hookimpl
def zoo_metrics():
    return {"outside_top2": top2}
'''


@pytest.fixture(scope="module")
def metric_env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("metric-plugin")
    (folder / "top2_metric.py").write_text(PLUGIN)
    return {"PYTHONPATH": str(folder), "ZOO_PLUGINS": "top2_metric"}


def _top2_of(out: Path, val: Path) -> float:
    """Top-2 of the written model on ``val``, computed here from timm and zoo's data loading."""
    import timm

    from zoo.kit.data import data_config, load_split

    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    classes = sorted(p.name for p in Path(val).iterdir() if p.is_dir())
    split = load_split(str(val), data_config(model.pretrained_cfg), label_names=classes, num_classes=len(classes))
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in split.batches(256)])
    return float(logits.topk(2, dim=1).indices.eq(split.targets[:, None]).any(dim=1).float().mean())


def _reported(out: Path) -> dict:
    metrics = json.loads((out / "zoo.json").read_text())["metrics"]
    assert "outside_top2" in metrics, metrics
    assert metrics["outside_top2"] >= metrics["top1"] - 1e-9
    card = (out / "README.md").read_text()
    assert f"| outside_top2 | {metrics['outside_top2']:.4f} |" in card
    return metrics


def test_soup_wise_ft_and_bang_report_an_outside_metric(tmp_path, digits_zoo, metric_env, zoo_cli):
    members, val = digits_zoo / "members", digits_zoo / "data" / "val"
    runs = {
        "soup": ["-s", "soup", "-m", members / "ft-lr3e-3", "-m", members / "ft-lr1e-3"],
        "wise-ft": ["-s", "wise-ft", "-m", members / "base", "-m", members / "ft-long", "-o", "alphas=0,0.5,1",
                    "-o", "bn=interpolate"],
        "bang": ["-s", "bang", "-m", members / "base", "-m", members / "ft-ls0.1", "-o", "alphas=0,0.5,1",
                 "-o", "bn=interpolate"],
    }
    for name, args in runs.items():
        out = tmp_path / name
        zoo_cli("combine", *args, "--eval-data", val, "--out", out, env=metric_env)
        metrics = _reported(out)
        assert metrics["outside_top2"] == pytest.approx(_top2_of(out, val), abs=1e-6), name


def test_distill_and_stitch_report_an_outside_metric(tmp_path, digits_zoo, metric_env, zoo_cli):
    from zoo.demos import ensure_built

    members, data = digits_zoo / "members", digits_zoo / "data"
    out = tmp_path / "student"
    zoo_cli("combine", "-s", "distill", "-m", members / "ft-lr3e-3", "-m", members / "independent",
            "--train-data", data / "val", "--eval-data", data / "val", "-o", "epochs=1", "--out", out, env=metric_env)
    metrics = _reported(out)
    assert metrics["outside_top2"] == pytest.approx(_top2_of(out, data / "val"), abs=1e-6)
    evaluation = json.loads((out / "zoo.json").read_text())["report"]["evaluation"]
    assert "outside_top2" in evaluation["ensemble"] and all("outside_top2" in t for t in evaluation["teachers"].values())

    stitch = ensure_built("stitch")
    anchors = sorted(str(p) for p in (stitch / "members").iterdir() if p.name.startswith("effnet"))[:2]
    out = tmp_path / "snnet"
    zoo_cli("combine", "-s", "stitch", "-m", anchors[0], "-m", anchors[1], "--train-data", stitch / "data" / "val",
            "--eval-data", stitch / "data" / "val", "--epochs", "0", "--out", out, env=metric_env)
    _reported(out)
