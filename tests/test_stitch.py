"""Stitching (SN-Net): enumeration, least squares, exactness, the CLI end to end, --resume, the Hub, bad input.

Anchors are the stitch-demo zoos (zoo.demo_stitch): tiny timm test_efficientnet and test_vit families
trained on scikit-learn's digits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import kill_after_checkpoint
from zoo.plugins.stitch.export import stitch_configs, stitch_export

ORG = "zoo-test"


@pytest.fixture(scope="module")
def stitch_zoo() -> Path:
    from zoo.demos import ensure_built

    return ensure_built("stitch")


def members(root: Path, family: str) -> list[str]:
    return [str(root / "members" / f"{family}-{size}") for size in "sml"]


def data(root: Path) -> tuple[str, str]:
    return str(root / "data" / "train"), str(root / "data" / "val")


def _digits(root: Path, n: int = 16) -> torch.Tensor:
    from zoo.kit.data import data_config, load_split
    from zoo.demos.digits import LABELS, PRETRAINED_CFG

    split = load_split(root / "data" / "val", data_config(PRETRAINED_CFG), label_names=LABELS, num_classes=10)
    return split.images[:n]


# ---- enumeration and least squares --------------------------------------------------------------------
def test_depth_12_pairs_give_34_configs_and_11_layers_and_3_anchors_71():
    import timm

    from zoo.plugins.stitch.snnet import SNNet, paired_positions, window_stitches

    stitches = window_stitches(paired_positions([12], [12]))
    assert len(stitches) == 34 and len({w for *_, w in stitches}) == 11
    assert stitches[:4] == [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)] and stitches[-1] == (11, 11, 10)
    anchors = [timm.create_model("test_vit", embed_dim=d, depth=12, num_heads=2, patch_size=8, img_size=32,
                                 num_classes=10) for d in (16, 32, 48)]
    net = SNNet.build(anchors, ["s", "m", "l"], input_size=(3, 32, 32))
    assert len(net.configs) == 3 + 2 * 34 == 71
    assert len(net.stitch) == 22 and all(isinstance(m, torch.nn.Linear) for m in net.stitch.values())
    assert net.stitch["0-1_0"].weight.shape == (32, 16) and net.stitch["1-2_10"].weight.shape == (48, 32)


def test_depth_mismatch_maps_block_ids_by_nearest_interpolation():
    from zoo.plugins.stitch.snnet import paired_positions

    # torch's nearest interpolation of 4 ids onto 6 places: floor(p * 4 / 6)
    expected = torch.nn.functional.interpolate(torch.arange(4.0)[None, None], size=6, mode="nearest")
    assert paired_positions([4], [6]) == list(zip(expected.flatten().long().tolist(), range(6)))
    # stage by stage: the second stage's ids start after the first stage's
    assert paired_positions([1, 2], [2, 3]) == [(0, 0), (0, 1), (1, 2), (1, 3), (2, 4)]


def test_least_squares_recovers_identity_and_an_exact_linear_map():
    from zoo.plugins.stitch.snnet import least_squares

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 24, generator=gen)
    w, b = least_squares(x, x)
    assert torch.allclose(w, torch.eye(24, dtype=w.dtype), atol=1e-9) and b.abs().max() < 1e-9
    a, c = torch.randn(40, 24, generator=gen), torch.randn(40, generator=gen)
    w, b = least_squares(x, x @ a.T + c)
    assert torch.allclose(w, a.double(), atol=1e-8) and torch.allclose(b, c.double(), atol=1e-8)


@pytest.mark.parametrize("arch,args", [("test_vit", {"img_size": 32, "patch_size": 8}),
                                       ("test_efficientnet", {"depth_multiplier": 1.5})])
def test_stem_blocks_head_is_the_model_bit_for_bit(arch, args):
    import timm

    from zoo.plugins.stitch.blocks import family_of

    model = timm.create_model(arch, num_classes=10, **args).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(family_of(model, arch).forward(model, x), model(x))


@pytest.mark.parametrize("arch,args", [("test_vit", {"img_size": 32, "patch_size": 8, "depth": 3}),
                                       ("test_efficientnet", {})])
def test_flops_summed_over_parts_equal_counting_each_configuration(arch, args):
    """count_flops counts each anchor's parts and each stitching layer once and sums them per configuration;
    the sums equal FlopCounterMode around each configuration's own run."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    from zoo.plugins.stitch.snnet import SNNet

    widths = {"test_vit": [{"embed_dim": 16, "num_heads": 2}, {"embed_dim": 32, "num_heads": 2}],
              "test_efficientnet": [{"channel_multiplier": 1.0, "depth_multiplier": 1.0},
                                    {"channel_multiplier": 1.5, "depth_multiplier": 1.5}]}[arch]
    anchors = [timm.create_model(arch, num_classes=10, **args, **w).eval() for w in widths]
    net = SNNet.build(anchors, ["s", "l"], input_size=(3, 32, 32)).eval()
    net.count_flops((3, 32, 32))
    assert len(net.configs) > 4
    for cfg in net.configs:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            net.run(torch.zeros(1, 3, 32, 32), cfg)
        assert net.measured[cfg.id]["gflops"] * 1e9 == pytest.approx(counter.get_total_flops(), abs=0.5), cfg


# ---- the CLI end to end -----------------------------------------------------------------------------------
def test_cnn_stitch_end_to_end_list_select_export(tmp_path, stitch_zoo, zoo_cli):
    """--epochs 0: anchors untouched, so anchor-only configurations are the members bit for bit (through
    save and load); every stitched configuration is solved by least squares and evaluated."""
    import timm

    import zoo

    out = tmp_path / "snnet"
    train, val = data(stitch_zoo)
    anchors = members(stitch_zoo, "effnet")
    proc = zoo_cli("combine", "--strategy", "stitch", "-m", anchors[2], "-m", anchors[0], "-m", anchors[1],
                   "--train-data", train, "--eval-data", val, "--epochs", "0", "--out", out)
    assert "anchors, small to large: effnet-s, effnet-m, effnet-l" in proc.stderr
    assert {"config.json", "model.safetensors", "README.md", "frontier.png", "zoo.json"} <= {
        p.name for p in out.iterdir()}

    net = zoo.load(out)
    x = _digits(stitch_zoo)
    with torch.no_grad():
        for i, spec in enumerate(anchors):
            member = zoo.load(spec)
            assert torch.equal(net.run(x, i), member(x))  # bit for bit
    assert all(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.bias is not None
               for m in net.stitch.values())

    rows = stitch_configs(out)  # what `zoo stitch list --json` prints
    assert len(rows) == len(net.configs) and all(r["top1"] is not None and r["gflops"] > 0 for r in rows)
    by_id = {r["id"]: r for r in rows}
    assert by_id[0]["gflops"] < by_id[1]["gflops"] < by_id[2]["gflops"]
    assert by_id[0]["params"] < by_id[1]["params"] < by_id[2]["params"]
    stitched = [r for r in rows if len(r["anchors"]) == 2]
    # least squares alone already gives working networks: most stitches classify digits well above chance
    assert sum(r["top1"] > 0.5 for r in stitched) >= 0.75 * len(stitched), [r["top1"] for r in stitched]
    assert "★" in zoo_cli("stitch", "list", out, "--sort", "gflops").stdout

    # select: by id, by FLOPs budget (the most accurate within it), by parameters
    budget = (by_id[0]["gflops"] + by_id[1]["gflops"]) / 2
    chosen = net.select(max_gflops=budget).active
    within = [r for r in rows if r["gflops"] <= budget]
    assert chosen == max(within, key=lambda r: (r["top1"], -r["params"]))["id"]
    assert net.select(max_params=by_id[0]["params"]).active == 0
    assert net.select(5).active == 5

    # export: a stitch as a one-configuration network with only its weights, an anchor as a timm folder
    sid = max(stitched, key=lambda r: r["top1"])["id"]
    zoo_cli("stitch", "export", out, "--config", sid, "--out", tmp_path / "one")
    one = zoo.load(tmp_path / "one")
    assert torch.equal(one(x), net.select(sid)(x))
    assert sum(t.numel() for t in load_file(str(tmp_path / "one" / "model.safetensors")).values()) < \
        sum(t.numel() for t in load_file(str(out / "model.safetensors")).values())
    assert json.loads((tmp_path / "one" / "config.json").read_text())["configs"][0]["top1"] == by_id[sid]["top1"]
    stitch_export(out, tmp_path / "anchor", config=1)
    plain = timm.create_model(f"local-dir:{tmp_path / 'anchor'}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(plain(x), net.select(1)(x))
    from transformers import AutoModelForImageClassification  # and transformers opens it with timm's logits

    with torch.no_grad():
        assert torch.equal(AutoModelForImageClassification.from_pretrained(tmp_path / "anchor")(x).logits, plain(x))

    card = (out / "README.md").read_text()
    assert "zoo.load" in card and "ordinary timm model" not in card and "| id | configuration |" in card


def test_vit_stitch_trains_per_token_linear_layers(tmp_path, stitch_zoo, zoo_cli):
    """Tokens: nn.Linear stitching layers, depths 4 and 6 mapped by nearest interpolation; one epoch of
    training with a configuration drawn per batch changes the anchors and the layers."""
    import zoo
    from zoo.plugins.stitch.snnet import paired_positions, window_stitches

    out = tmp_path / "vit"
    train, val = data(stitch_zoo)
    zoo_cli("combine", "--strategy", "stitch", "--zoo", "stitch-vit-demo", "--epochs", "1", "--out", out)
    net = zoo.load(out)
    assert all(isinstance(m, torch.nn.Linear) for m in net.stitch.values())
    expected = 3 + len(window_stitches(paired_positions([4], [4]))) + len(window_stitches(paired_positions([4], [6])))
    assert len(net.configs) == expected
    recipe = json.loads((out / "zoo.json").read_text())
    assert recipe["report"]["history"][0]["epoch"] == 1 and (out / "training.png").is_file()
    before = zoo.load(members(stitch_zoo, "vit")[0]).state_dict()
    after = {k[len("anchors.0."):]: v for k, v in net.state_dict().items() if k.startswith("anchors.0.")}
    assert any(not torch.equal(before[k], after[k]) for k in before)  # everything trains, anchors too


def test_resume_after_a_crash_gives_the_same_network(tmp_path, stitch_zoo, zoo_cli):
    anchors = members(stitch_zoo, "effnet")
    _, small = data(stitch_zoo)  # 359 images: short epochs
    args = ["combine", "--strategy", "stitch", *sum((["-m", a] for a in anchors[:2]), []), "--train-data", small,
            "--epochs", "2"]
    zoo_cli(*args, "--out", tmp_path / "straight")
    out = tmp_path / "resumed"
    kill_after_checkpoint(args, out, tmp_path / ".resumed.stitch" / "checkpoint.pt")
    assert not out.exists()
    zoo_cli(*args, "--out", out, "--resume")
    a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / ".resumed.stitch").exists()


def test_push_and_load_from_the_hub(tmp_path, hub, stitch_zoo, zoo_cli):
    from hubserver import TOKEN

    import zoo

    anchors = members(stitch_zoo, "effnet")
    train, val = data(stitch_zoo)
    out = tmp_path / "snnet"
    zoo_cli("combine", "--strategy", "stitch", "-m", anchors[0], "-m", anchors[1], "--train-data", train,
            "--eval-data", val, "--epochs", "0", "--out", out, "--push", f"{ORG}/snnet", env={"HF_TOKEN": TOKEN})
    net = zoo.load(f"hf-hub:{ORG}/snnet")
    local = zoo.load(out)
    x = _digits(stitch_zoo)
    for cfg in local.configs:
        assert torch.equal(net.run(x, cfg.id), local.run(x, cfg.id))
    rows = json.loads(zoo_cli("stitch", "list", f"hf-hub:{ORG}/snnet", "--json").stdout)
    assert [r["id"] for r in rows] == [c.id for c in local.configs]


# ---- bad input ------------------------------------------------------------------------------------------
def test_bad_input(tmp_path, stitch_zoo, zoo_cli):
    train, val = data(stitch_zoo)
    vit, cnn = members(stitch_zoo, "vit"), members(stitch_zoo, "effnet")

    def fails(*args, match: str):
        proc = zoo_cli(*args, check=False)
        assert proc.returncode == 2, proc.stderr
        assert match in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr  # one message, no traceback
        return proc

    out = tmp_path / "out"
    fails("combine", "-s", "stitch", "-m", vit[0], "-m", cnn[1], "--train-data", train, "--out", out,
          match="different families and cannot be stitched")
    fails("combine", "-s", "stitch", "-m", cnn[0], "--train-data", train, "--out", out,
          match="needs at least 2 member(s)")
    fails("combine", "-s", "stitch", "-m", cnn[0], "-m", cnn[1], "--out", out, match="needs --train-data")
    from zoo.registry import load_zoo

    parity = next(m for m in load_zoo("transfer-demo").members if m.endswith("parity-vit"))
    fails("combine", "-s", "stitch", "-m", parity, "-m", vit[0], "--train-data", train, "--out", out,
          match="different label spaces")
    assert not out.exists()

    net = tmp_path / "net"
    zoo_cli("combine", "-s", "stitch", "-m", cnn[0], "-m", cnn[1], "--train-data", train, "--epochs", "0",
            "--out", net)
    proc = fails("stitch", "export", net, "--max-gflops", "1e-9", "--out", tmp_path / "e", match="no configuration "
                 "meets the budget")
    assert "the cheapest is configuration 0" in proc.stderr and not (tmp_path / "e").exists()
    fails("stitch", "export", net, "--config", "999", "--out", tmp_path / "e", match="configuration 999 does not exist")
    fails("stitch", "list", cnn[0], match="is not a stitched network")
