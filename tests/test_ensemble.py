"""Output ensembles and window-based early-exit cascades on the digits-demo members (two architectures)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from conftest import run_zoo
from hubserver import TOKEN

ORG = "ensemble-test"


@pytest.fixture(scope="module")
def members(digits_zoo):
    root = digits_zoo / "members"
    # ft-lr3e-3 and independent: test_efficientnet; other-arch: another architecture, same digits
    return [root / "ft-lr3e-3", root / "other-arch", root / "independent"]


@pytest.fixture(scope="module")
def val_batch(digits_zoo, members):
    """Held-out images as the ensemble's own preprocessing gives them (not normalised), with labels."""
    import zoo
    from zoo.kit.data import data_config, load_split

    m = zoo.load_member(str(members[0]))
    cfg = {**m.pretrained_cfg, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    split = load_split(str(digits_zoo / "data" / "val"), data_config(cfg), label_names=m.label_names,
                       num_classes=m.num_classes)
    return split.images[:64], split.targets[:64]


def _member_probs(path, digits_zoo, n=64) -> torch.Tensor:
    """A member's softmax on held-out images through its own timm preprocessing."""
    import zoo
    from zoo.kit.data import data_config, load_split

    m = zoo.load_member(str(path))
    split = load_split(str(digits_zoo / "data" / "val"), data_config(m.pretrained_cfg), label_names=m.label_names,
                       num_classes=m.num_classes)
    with torch.inference_mode():
        return m.create_model()(split.images[:n]).softmax(dim=1)


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, hub, members, digits_zoo):
    out = tmp_path_factory.mktemp("ensemble") / "ens"
    run_zoo("combine", "-s", "ensemble", *sum((["-m", m] for m in members), []), "--eval-data",
            digits_zoo / "data" / "val", "--out", out, "--push", f"{ORG}/ens", env={"HF_TOKEN": TOKEN})
    return out


def test_an_ensemble_is_the_mean_of_its_members_softmax_from_a_folder_and_from_the_hub(
        ensemble, members, val_batch, digits_zoo, zoo_cli):
    import zoo

    expected = sum(_member_probs(m, digits_zoo) for m in members) / len(members)
    images, _ = val_batch
    for where in (ensemble, f"hf-hub:{ORG}/ens"):
        net = zoo.load(str(where))
        with torch.inference_mode():
            got = net(images).softmax(dim=1)
        assert torch.allclose(got, expected, atol=1e-6), where
        assert net.last_macs == len(images) * sum(net.macs)
    # the card's figures are what `zoo eval` measures on the loaded module
    recipe = json.loads((ensemble / "zoo.json").read_text())
    again = json.loads(zoo_cli("eval", ensemble, "--data", digits_zoo / "data" / "val", "--json").stdout)
    assert again["top1"] == pytest.approx(recipe["metrics"]["top1"], abs=1e-9)
    assert 0 <= recipe["metrics"]["disagreement"] <= 1 and recipe["metrics"]["aurc"] > 0
    assert [r["name"] for r in recipe["report"]["rows"]] == [m.name for m in members] + ["ensemble"]
    assert (ensemble / "risk-coverage.png").is_file()


def _cascade(tmp_path, members, digits_zoo, *options) -> tuple:
    import zoo

    out = tmp_path / "cascade"
    run_zoo("combine", "-s", "cascade", "-m", members[1], "-m", members[0], "--eval-data", digits_zoo / "data" / "val",
            *sum((["-o", o] for o in options), []), "--out", out)
    return out, zoo.load(str(out)), json.loads((out / "zoo.json").read_text())


def test_a_zero_width_window_is_member_one_alone_and_an_infinite_one_the_full_ensemble(
        tmp_path, members, val_batch, digits_zoo):
    images, _ = val_batch
    # stages are ordered by MACs: ft-lr3e-3 (test_efficientnet) is cheaper than other-arch
    first, second = _member_probs(members[0], digits_zoo), _member_probs(members[1], digits_zoo)
    _, net, recipe = _cascade(tmp_path / "zero", members, digits_zoo, "window=0")
    assert recipe["report"]["stages"] == [members[0].name, members[1].name]
    with torch.inference_mode():
        got = net(images).softmax(dim=1)
    assert torch.allclose(got, first, atol=1e-6) and bool((net.last_exits == 1).all())
    assert net.last_macs == len(images) * net.macs[0]
    _, net, _ = _cascade(tmp_path / "inf", members, digits_zoo, "window=inf")
    with torch.inference_mode():
        got = net(images).softmax(dim=1)
    assert torch.allclose(got, (first + second) / 2, atol=1e-6) and bool((net.last_exits == 2).all())


def test_the_window_holds_a_fifth_of_the_validation_samples_and_the_cascade_counts_its_macs(
        tmp_path, members, val_batch, digits_zoo):
    from torch.utils.flop_counter import FlopCounterMode

    # the paper's window, 10% of the samples either side of τ, for an operating point in the middle (at
    # risk@5% these members cover everything, τ is the lowest score and the window is open below it)
    _, net, recipe = _cascade(tmp_path, members, digits_zoo, "target=coverage@50%")
    exited = recipe["report"]["exited_at_stage"]
    n = sum(exited.values())
    # every validation sample inside the window went on: 20% of them, give or take ties at the bounds
    assert abs(exited["2"] / n - 0.2) <= 3 / n, exited
    images, _ = val_batch
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        out = net(images)
    went_on = int((net.last_exits == 2).sum())
    assert net.last_macs == counter.get_total_flops() // 2 == len(images) * net.macs[0] + went_on * net.macs[1]
    # a sample that exited at stage 1 has member 1's output; one that went on, the mean of both
    first, second = _member_probs(members[0], digits_zoo), _member_probs(members[1], digits_zoo)
    stayed = net.last_exits == 1
    assert torch.allclose(out.softmax(1)[stayed], first[stayed], atol=1e-6)
    assert torch.allclose(out.softmax(1)[~stayed], ((first + second) / 2)[~stayed], atol=1e-6)
    assert recipe["metrics"]["macs_per_image"] < sum(net.macs)


def test_plain_early_exit_lets_four_fifths_exit(tmp_path, members, digits_zoo):
    _, _, recipe = _cascade(tmp_path, members, digits_zoo, "exit=confidence", "threshold=auto")
    exited = recipe["report"]["exited_at_stage"]
    assert abs(exited["1"] / sum(exited.values()) - 0.8) <= 3 / sum(exited.values()), exited


@pytest.fixture(scope="module")
def odd_members(tmp_path_factory, members):
    root = tmp_path_factory.mktemp("odd")
    relabelled = root / "relabelled"  # the same weights, other class names: another label space
    shutil.copytree(members[0], relabelled)
    config = json.loads((relabelled / "config.json").read_text())
    config["label_names"] = [f"class-{i}" for i in range(config["num_classes"])]
    config.setdefault("pretrained_cfg", {})["label_names"] = config["label_names"]
    (relabelled / "config.json").write_text(json.dumps(config))
    untrained = root / "untrained"  # a fresh, random net: no threshold gives it a low risk
    shutil.copytree(members[0], untrained)
    import zoo

    model = zoo.load_member(str(members[0])).create_model()
    torch.manual_seed(0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(untrained / "model.safetensors"))
    return relabelled, untrained


@pytest.mark.parametrize("case", ["label spaces", "one member", "unreachable risk", "window too wide", "bad target"])
def test_bad_input_is_refused_and_nothing_is_written(case, tmp_path, members, odd_members, digits_zoo, zoo_cli):
    relabelled, untrained = odd_members
    val = digits_zoo / "data" / "val"
    args, words = {
        "label spaces": (["-s", "ensemble", "-m", members[0], "-m", relabelled], "different label spaces"),
        "one member": (["-s", "cascade", "-m", members[0], "--eval-data", val], "at least 2"),
        "unreachable risk": (["-s", "cascade", "-m", untrained, "-m", members[0], "--eval-data", val,
                              "-o", "target=risk@1%"], "no threshold reaches a risk of 1.0%"),
        "window too wide": (["-s", "cascade", "-m", members[0], "-m", members[1], "--eval-data", val,
                             "-o", "window=1.5"], "wider than the data allows"),
        "bad target": (["-s", "cascade", "-m", members[0], "-m", members[1], "--eval-data", val,
                        "-o", "target=accuracy@90"], "risk@5%"),
    }[case]
    out = tmp_path / "out"
    proc = zoo_cli("combine", *args, "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    assert words in " ".join(proc.stderr.split()) and proc.stderr.count("error:") == 1
    assert not out.exists()
    if case == "unreachable risk":
        assert "the lowest risk it reaches is" in " ".join(proc.stderr.split())
