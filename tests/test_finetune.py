"""zoo finetune on the digits zoo: LP, LP-FT with label smoothing and Mixup, a new head, resume."""

from __future__ import annotations

import json
import re

import pytest
import timm
import torch
from safetensors.torch import load_file

import zoo
from conftest import class_slice, kill_after_checkpoint


@pytest.fixture(scope="module")
def base(digits_zoo):
    return digits_zoo / "members" / "base"


def test_lp_ft_with_smoothing_and_mixup_is_a_member(tmp_path, base, digits_zoo, zoo_cli):
    data, out = digits_zoo / "data", tmp_path / "ft"
    zoo_cli("finetune", base, "--train-data", data / "train", "--eval-data", data / "val", "--linear-probe-first",
            "--lp-epochs", "5", "--epochs", "2", "--label-smoothing", "0.1", "--mixup", "0.2", "--out", out)
    recipe = json.loads((out / "zoo.json").read_text())
    phases = [h["phase"] for h in recipe["report"]["history"]]
    assert phases == ["lp"] * 5 + ["ft"] * 2
    assert recipe["options"]["label_smoothing"] == 0.1 and recipe["options"]["mixup"] == 0.2
    assert (out / "training.png").is_file() and not (tmp_path / ".ft.finetune").exists()
    model = timm.create_model(f"local-dir:{out}", pretrained=True)  # an ordinary timm repo
    assert model.pretrained_cfg["label_names"] == [str(i) for i in range(10)]
    proc = zoo_cli("eval", out, "--data", data / "val", "--json")
    assert json.loads(proc.stdout)["top1"] == pytest.approx(recipe["metrics"]["top1"])
    assert recipe["metrics"]["top1"] > 0.5  # 10 classes: far above chance
    # and it is a member like any other: a WiSE-FT end
    result = zoo.combine("wise-ft", [str(base), str(out)], options={"pick": "alpha=1"})
    want = load_file(out / "model.safetensors")
    assert all(torch.equal(result.state_dict[k], want[k]) for k in want)


def test_linear_probe_changes_only_the_head(tmp_path, base, digits_zoo):
    out = tmp_path / "lp"
    zoo.finetune(str(base), str(digits_zoo / "data" / "train"), out,
                 recipe=zoo.FinetuneRecipe(mode="lp", lp_epochs=3))
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    head = timm.create_model("test_efficientnet", num_classes=10).default_cfg["classifier"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"{head}.weight", f"{head}.bias"}  # backbone and BatchNorm statistics untouched


def test_lp_ft_probes_with_the_fine_tunes_label_smoothing(tmp_path, base, digits_zoo):
    """LP-FT fits its probe to the loss the fine-tune will use, so the fine-tune starts at the head's optimum."""
    data = digits_zoo / "data"
    probes = {}
    for name, recipe in {"plain": zoo.FinetuneRecipe(mode="lp", lp_epochs=5),
                         "smoothed": zoo.FinetuneRecipe(mode="lp-ft", lp_epochs=5, epochs=0, label_smoothing=0.3)
                         }.items():
        zoo.finetune(str(base), str(data / "train"), tmp_path / name, recipe=recipe)
        probes[name] = zoo.evaluate(str(tmp_path / name), str(data / "val"))
    # ε = 0.3 caps the probe's confidence (at most 0.73 on a sure sample); plain cross-entropy does not
    assert probes["smoothed"].confidence < probes["plain"].confidence - 0.1, probes
    assert probes["smoothed"].top1 > 0.5


def _inverted(src, dst, per_class: int | None = None):
    """An image folder of ``src``'s digits, white on black turned black on white: a shift the base never saw."""
    from PIL import Image, ImageOps

    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / cls.name).mkdir(parents=True)
        for image in sorted(cls.iterdir())[:per_class]:
            ImageOps.invert(Image.open(image).convert("L")).save(dst / cls.name / image.name)
    return dst


def test_bn_auto_keeps_a_linear_probes_statistics_when_it_is_fine_tuned(tmp_path, base, digits_zoo, zoo_cli):
    """`--mode ft` from a member that `--mode lp` made is the second half of LP-FT: `--bn auto` keeps the
    BatchNorm statistics the probed head was fit on (frozen), as it does for `--mode lp-ft`. With train-mode
    statistics the first batches of shifted data replace them under the head and accuracy collapses (here
    from ~80% to ~30%: the Lite0 → MNIST case of docs/usage.md, on inverted digits)."""
    train = _inverted(digits_zoo / "data" / "train", tmp_path / "train", per_class=60)
    val = _inverted(digits_zoo / "data" / "val", tmp_path / "val")
    lp, ft = tmp_path / "lp", tmp_path / "ft"
    zoo_cli("finetune", base, "--train-data", train, "--mode", "lp", "--lp-epochs", "5", "--out", lp)
    proc = zoo_cli("finetune", lp, "--train-data", train, "--eval-data", val, "--mode", "ft", "--epochs", "1",
                   "--lr", "1e-4", "--batch-size", "16", "--out", ft)
    assert "--bn auto: frozen" in proc.stderr
    recipe = json.loads((ft / "zoo.json").read_text())
    assert recipe["options"]["bn"] == "auto" and recipe["report"]["bn"] == "frozen"
    probed, tuned = load_file(lp / "model.safetensors"), load_file(ft / "model.safetensors")
    stats = [k for k in probed if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(probed[k], tuned[k]) for k in stats)  # the probe's statistics kept
    assert recipe["metrics"]["top1"] > 0.6, recipe["metrics"]  # 10 classes: not collapsed toward chance
    # auto is train for a member that was not linear-probed, and for a probe given a new head
    from zoo.api.combine import load_member

    digits, auto = [str(i) for i in range(10)], zoo.FinetuneRecipe(mode="ft")
    assert auto.bn_for(load_member(str(ft)), digits) == "train" == auto.bn_for(load_member(str(base)), digits)
    assert auto.bn_for(load_member(str(lp)), digits[:3]) == "train"


def test_new_head_for_other_classes(tmp_path, base, digits_zoo, zoo_cli):
    train = tmp_path / "three"
    train.mkdir()
    for c in ("0", "1", "7"):
        (train / c).symlink_to(digits_zoo / "data" / "train" / c)
    out = tmp_path / "ft3"
    zoo_cli("finetune", base, "--train-data", train, "--num-classes", "3", "--epochs", "1", "--out", out)
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 3 and config["label_names"] == ["0", "1", "7"]
    assert load_file(out / "model.safetensors")["classifier.weight"].shape[0] == 3
    proc = zoo_cli("finetune", base, "--train-data", train, "--num-classes", "4", "--out", tmp_path / "x",
                   check=False)
    assert proc.returncode == 2 and "--num-classes 4" in proc.stderr and not (tmp_path / "x").exists()


@pytest.mark.parametrize("augment", [[], ["--augment", "--hflip", "0", "--crop-scale", "0.5"]],
                         ids=["decoded-once", "timm-augmentation"])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, base, digits_zoo, zoo_cli, augment):
    """Killed after a checkpoint, resumed: the weights of a run never interrupted (with augmentation too:
    the crops of every epoch come from the checkpointed generator)."""
    # 20 images of each digit: four short epochs, decoded and cropped afresh each epoch with augmentation
    train = class_slice({"train": digits_zoo / "data" / "train"}, tmp_path / "data", {"train": 20})["train"]
    args = ["finetune", base, "--train-data", train, "--epochs", "4", "--mixup", "0.2",
            "--label-smoothing", "0.1", *augment]
    reference = tmp_path / "reference"
    zoo_cli(*args, "--out", reference)

    out = tmp_path / "ft"
    checkpoint = tmp_path / ".ft.finetune" / "checkpoint.pt"
    kill_after_checkpoint(args, out, checkpoint)
    assert not out.exists()  # nothing half-written

    refused = zoo_cli(*args, "--out", out, check=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = zoo_cli(*args, "--out", out, "--resume")
    # it resumed (a run started over would give the same weights too): from a checkpointed epoch, not epoch 0
    start = re.search(r"resuming from epoch (\d+) of 4", resumed.stderr)
    assert start and 1 <= int(start.group(1)) < 4, resumed.stderr
    got, want = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not checkpoint.parent.exists()


def test_bad_input(tmp_path, base, digits_zoo, zoo_cli):
    data = digits_zoo / "data"
    for args, words in [
        (["--train-data", tmp_path / "nowhere"], ["no such folder"]),
        (["--train-data", data / "train", "--resume"], ["no interrupted fine-tune"]),
        (["--train-data", data / "train", "--mode", "probe"], ["--mode 'probe'"]),
        (["--train-data", data / "train", "--label-smoothing", "1.5"], ["--label-smoothing"]),
        (["--train-data", data / "train", "--auto-augment", "rand-m9"], ["pass --augment"]),
        (["--train-data", data / "train", "--augment", "--crop-scale", "0"], ["--crop-scale"]),
    ]:
        proc = zoo_cli("finetune", base, *args, "--out", tmp_path / "out", check=False)
        assert proc.returncode == 2, proc.stderr
        assert all(w in proc.stderr for w in words), proc.stderr
        assert not (tmp_path / "out").exists()


def test_snapshots_replace_an_epoch_folder_only_with_force(tmp_path, base, digits_zoo, zoo_cli):
    """`--snapshots DIR` would write DIR/epoch-N: one that is there is refused before any work, as `--out` is."""
    train = class_slice({"train": digits_zoo / "data" / "train"}, tmp_path / "data", {"train": 10})["train"]
    snaps, out = tmp_path / "snaps", tmp_path / "ft"
    (snaps / "epoch-1").mkdir(parents=True)
    (snaps / "epoch-1" / "mine.txt").write_text("keep me")
    args = ["finetune", base, "--train-data", train, "--epochs", "1", "--snapshots", snaps, "--out", out]
    proc = zoo_cli(*args, check=False)
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1, proc.stderr
    assert f"{snaps / 'epoch-1'} exists and is not empty" in " ".join(proc.stderr.split()) and "--force" in proc.stderr
    assert (snaps / "epoch-1" / "mine.txt").read_text() == "keep me"  # nothing replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "snaps"]  # nothing written, nothing staged
    assert sorted(p.name for p in snaps.iterdir()) == ["epoch-1"]
    zoo_cli(*args, "--force")
    assert not (snaps / "epoch-1" / "mine.txt").exists() and (snaps / "epoch-1" / "model.safetensors").is_file()
