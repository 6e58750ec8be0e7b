"""BANG end to end on real ImageNet weights (EfficientNet-Lite0) under a real shift (MNIST → scikit-learn digits).

A class-balanced slice of the mnist-shift zoo keeps this near a minute on 2 CPU cores; the full-size
measurement is bench/wise_ft_shift.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from timm.data import create_dataset, create_transform, resolve_data_config

from conftest import class_slice

pytestmark = pytest.mark.slow

PER_CLASS = {"train": 60, "eval": 30, "ood": 30}


@pytest.fixture(scope="module")
def shift(tmp_path_factory) -> dict[str, Path]:
    """The mnist-shift zoo's member and a slice of its data (symlinked image folders, one folder per class)."""
    from zoo.registry import load_zoo

    z = load_zoo("mnist-shift")
    return {"member": Path(z.members[0]), **class_slice(z.data, tmp_path_factory.mktemp("mnist-shift-slice"), PER_CLASS)}


def test_bang_on_real_weights_keeps_the_probe_and_writes_a_timm_model(tmp_path, shift, zoo_cli):
    out = tmp_path / "bang"
    zoo_cli("combine", "-s", "bang", "-m", shift["member"], "--train-data", shift["train"],
            "--eval-data", shift["eval"], "--ood-data", shift["ood"], "-o", "lp_epochs=10", "-o", "epochs=1",
            "-o", "lr=1e-4", "-o", "label_smoothing=0.1", "-o", "mixup=0", "-o", "alphas=0,0.5,1",
            "-o", "pick=best-id", "-o", "bn=interpolate", "--out", out)
    report = json.loads((out / "zoo.json").read_text())["report"]
    ends = {p["alpha"]: p for p in report["sweep"] if p["alpha"] in (0.0, 1.0)}
    # ImageNet features, probed on 600 MNIST images: far above the 10% of chance
    assert ends[0.0]["id_top1"] > 0.6, ends[0.0]
    # LP-FT's defaults keep the probed head working: BatchNorm statistics frozen (with train-mode statistics
    # this end fell from 91% to 54% in bench/wise_ft_shift.py) and the probe fit with the fine-tune's label
    # smoothing (fit with plain cross-entropy, the first smoothed steps cost it 6 points here). Mixup is off:
    # nine steps are too few for it (it cost 7 more points in this budget)
    assert ends[1.0]["id_top1"] >= ends[0.0]["id_top1"] - 0.03, ends
    # the shift is real: both ends lose most of their accuracy on the 8×8 digits
    assert max(e["ood_top1"] for e in ends.values()) < min(e["id_top1"] for e in ends.values()) - 0.2

    # the output is an ordinary timm model: timm alone loads it and evaluates it with its own data pipeline
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert model.num_classes == 10 and type(model).__name__ == "EfficientNet"
    images = create_dataset("", root=str(shift["eval"]),
                            transform=create_transform(**resolve_data_config({}, model=model)))
    loader = torch.utils.data.DataLoader(images, batch_size=100)
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    picked = next(p for p in report["sweep"] if p.get("kept") and p["alpha"] == report["picked_alpha"])
    assert correct / len(images) == pytest.approx(picked["id_top1"])
    assert "BANG: the ends on shifted data" in (out / "README.md").read_text()
