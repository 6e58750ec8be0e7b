"""--strategy concat on the digits demo: members' pooled features side by side, one linear head."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file


def _subset(root, digits_zoo, split: str, classes: list[str]):
    """An image folder with some of the digits' classes (links to the demo's class folders)."""
    folder = root / split
    folder.mkdir(parents=True)
    for c in classes:
        (folder / c).symlink_to(digits_zoo / "data" / split / c)
    return folder


def test_concat_of_one_member_is_its_linear_probe(tmp_path, digits_zoo, zoo_cli):
    import zoo
    from zoo.kit.data import data_config, load_split

    classes = ["0", "1", "2", "3", "4"]  # other classes than the member's: both start a new head
    train = _subset(tmp_path, digits_zoo, "train", classes)
    base = digits_zoo / "members" / "base"
    zoo_cli("combine", "-s", "concat", "-m", base, "--train-data", train, "--out", tmp_path / "cat")
    zoo_cli("finetune", base, "--train-data", train, "--mode", "lp", "--out", tmp_path / "lp")
    net, probe = zoo.load(str(tmp_path / "cat")), zoo.load(str(tmp_path / "lp"))
    member = zoo.load_member(str(base))
    val = _subset(tmp_path, digits_zoo, "val", classes)
    shared = json.loads((tmp_path / "cat" / "config.json").read_text())["pretrained_cfg"]  # mean 0, std 1
    ours = load_split(str(val), data_config(shared), label_names=classes, num_classes=5)
    theirs = load_split(str(val), data_config(member.pretrained_cfg), label_names=classes, num_classes=5)
    with torch.inference_mode():
        a, b = net(ours.images[:64]), probe(theirs.images[:64])
    assert a.shape == (64, 5) and torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    # and the member inside is the member, frozen, without its head
    weights = load_file(str(tmp_path / "cat" / "model.safetensors"))
    own = load_file(str(base / "model.safetensors"))
    assert {k.removeprefix("members.0.") for k in weights if k.startswith("members.0.")} == \
        {k for k in own if not k.startswith("classifier.")}
    assert all(torch.equal(weights[f"members.0.{k}"], v) for k, v in own.items() if not k.startswith("classifier."))


def test_concat_of_two_architectures_reads_both_and_reports_each_alone(tmp_path, digits_zoo, zoo_cli):
    import zoo

    data, members = digits_zoo / "data", digits_zoo / "members"
    out = tmp_path / "cat"
    zoo_cli("combine", "-s", "concat", "-m", members / "base", "-m", members / "other-arch",
            "--train-data", data / "train", "--eval-data", data / "val", "--ood-data", data / "test",
            "-o", "lp_epochs=5", "--out", out)
    recipe = json.loads((out / "zoo.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["dims"] == [256, 96] and config["zoo_type"] == "concat"
    weights = load_file(str(out / "model.safetensors"))
    assert weights["head.weight"].shape == (10, 256 + 96)
    # each member's features reach the head: the head's weights on both parts were trained
    assert weights["head.weight"][:, :256].abs().sum() > 0 and weights["head.weight"][:, 256:].abs().sum() > 0
    alone = recipe["report"]["eval_members_alone"]
    assert set(alone) == {"base", "other-arch"} and "ood" in recipe["report"]
    measured = json.loads(zoo_cli("eval", out, "--data", data / "val", "--json").stdout)
    assert measured["top1"] == pytest.approx(recipe["metrics"]["top1"], abs=1e-9)
    assert recipe["metrics"]["top1"] > 0.5
    assert "Concatenated features: measured" in (out / "README.md").read_text()
    net = zoo.load(str(out))
    with torch.inference_mode():
        features = net.features(torch.rand(2, 3, 32, 32))
        part = net.member_features(1, torch.rand(2, 3, 32, 32))
    assert features.shape == (2, 352) and part.shape == (2, 96)


def test_held_out_data_with_a_class_the_head_lacks_is_refused(tmp_path, digits_zoo, zoo_cli):
    train = _subset(tmp_path, digits_zoo, "train", ["0", "1", "2"])
    out = tmp_path / "out"
    proc = zoo_cli("combine", "-s", "concat", "-m", digits_zoo / "members" / "base", "--train-data", train,
                   "--eval-data", digits_zoo / "data" / "val", "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("error:") == 1 and "3" in proc.stderr, proc.stderr
    assert not out.exists()


def test_concat_of_members_of_different_input_sizes_feeds_each_its_own_size(tmp_path, digits_zoo, zoo_cli):
    import shutil

    import zoo

    data, members = digits_zoo / "data", digits_zoo / "members"
    large = tmp_path / "other-arch-48"  # the same ResNet, preprocessing at 48 px instead of 32
    shutil.copytree(members / "other-arch", large)
    config = json.loads((large / "config.json").read_text())
    config["pretrained_cfg"]["input_size"] = [3, 48, 48]
    (large / "config.json").write_text(json.dumps(config))
    out = tmp_path / "cat"
    zoo_cli("combine", "-s", "concat", "-m", members / "base", "-m", large, "--train-data", data / "train",
            "--eval-data", data / "val", "-o", "lp_epochs=5", "--out", out)
    net = zoo.load(str(out))
    assert json.loads((out / "config.json").read_text())["pretrained_cfg"]["input_size"] == [3, 48, 48]
    assert [p.size for p in net.prep] == [(32, 32), (48, 48)]  # the small member is resized to its own 32 px
    with torch.inference_mode():
        assert net(torch.rand(2, 3, 48, 48)).shape == (2, 10)
    recipe = json.loads((out / "zoo.json").read_text())
    assert recipe["metrics"]["top1"] > 0.5
