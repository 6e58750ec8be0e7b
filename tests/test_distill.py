"""Distillation: the losses' properties, a real distillation of real teachers, --resume, and torchrun (gloo)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import kill_after_checkpoint, start_until
from zoo.plugins.distill.losses import kd_loss, meal_v2_loss, teacher_target


# ---- the losses ---------------------------------------------------------------------------------
def test_one_teacher_target_is_its_softmax_and_several_average():
    a, b = torch.randn(5, 7), torch.randn(5, 7)
    assert torch.allclose(teacher_target([a], "meal-v2", 4.0), a.softmax(1))
    assert torch.allclose(teacher_target([a, b], "meal-v2", 4.0), (a.softmax(1) + b.softmax(1)) / 2)
    assert torch.allclose(teacher_target([a], "kd", 4.0), (a / 4).softmax(1))


def test_meal_v2_loss_takes_no_labels_and_is_minimal_at_the_target():
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(16, 10, generator=gen).softmax(1)
    at_target = target.log().requires_grad_()
    loss = meal_v2_loss(at_target, target)
    loss.backward()
    assert at_target.grad.abs().max() < 1e-6  # a stationary point
    for _ in range(20):
        moved = target.log() + 0.3 * torch.randn(16, 10, generator=gen)
        assert meal_v2_loss(moved, target) > loss
    # the loss is the cross-entropy with the targets: entropy of p̄ at its minimum
    assert loss.item() == pytest.approx(-(target * target.log()).sum(1).mean().item(), rel=1e-5)


def test_kd_loss_is_hintons():
    import torch.nn.functional as F

    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    soft = (t / 4).softmax(1)
    kl = (soft * (soft.log() - (s / 4).log_softmax(1))).sum(1).mean()
    assert kd_loss(s, soft, y, 4.0, 1.0).item() == pytest.approx(16 * kl.item(), rel=1e-5)
    assert kd_loss(s, soft, y, 4.0, 0.0).item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    mixed = kd_loss(s, soft, y, 4.0, 0.9).item()
    assert mixed == pytest.approx(0.9 * 16 * kl.item() + 0.1 * F.cross_entropy(s, y).item(), rel=1e-5)


# ---- real distillation --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def teachers(digits_zoo):
    m = digits_zoo / "members"
    return [m / "ft-lr3e-3", m / "independent", m / "other-arch"]  # two architectures


def _args(teachers, digits_zoo, *options):
    return ["combine", "-s", "distill", *[a for t in teachers for a in ("-m", t)],
            "--train-data", digits_zoo / "data" / "train", *[a for o in options for a in ("--option", o)]]


def test_distilled_student_comes_close_to_the_ensemble(tmp_path, teachers, digits_zoo, zoo_cli):
    out = tmp_path / "student"
    zoo_cli(*_args(teachers, digits_zoo, f"student={digits_zoo / 'members' / 'base'}", "epochs=2"),
            "--eval-data", digits_zoo / "data" / "val", "--out", out)
    recipe = json.loads((out / "zoo.json").read_text())
    ev = recipe["report"]["evaluation"]
    assert set(ev["teachers"]) == {"ft-lr3e-3", "independent", "other-arch"}
    # the student (a weaker start: the base the fine-tunes came from) ends within 3 points of the ensemble
    assert ev["student"]["top1"] >= ev["ensemble"]["top1"] - 0.03, ev
    assert ev["student"]["top1"] > 0.9
    assert [m["name"] for m in recipe["members"]] == ["ft-lr3e-3", "independent", "other-arch"]
    assert all(m["files"]["model.safetensors"] for m in recipe["members"])
    card = (out / "README.md").read_text()
    assert "## Distillation" in card and "training.png" in card and (out / "training.png").is_file()
    import timm

    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert model.num_classes == 10 and type(model).__name__ == "EfficientNet"


def test_fresh_student_of_another_architecture_with_kd(tmp_path, teachers, digits_zoo, zoo_cli):
    out = tmp_path / "vit"
    zoo_cli(*_args(teachers[:2], digits_zoo, "student=test_vit", "loss=kd", "temperature=2"), "--epochs", "1",
            "--out", out)
    import timm

    model = timm.create_model(f"local-dir:{out}", pretrained=True)  # its input size travels in model_args
    assert type(model).__name__ == "VisionTransformer" and model.patch_embed.img_size == (32, 32)
    options = json.loads((out / "zoo.json").read_text())["options"]
    assert options["loss"] == "kd" and options["epochs"] == 1


def test_interrupted_distillation_resumes_to_the_same_weights(tmp_path, teachers, digits_zoo, zoo_cli):
    args = _args(teachers[:2], digits_zoo, f"student={digits_zoo / 'members' / 'base'}", "epochs=3",
                 "discriminator=true")
    reference = tmp_path / "reference"
    zoo_cli(*args, "--out", reference)
    out = tmp_path / "student"
    checkpoint = tmp_path / ".student.distill" / "checkpoint.pt"
    kill_after_checkpoint(args, out, checkpoint)
    assert not out.exists()
    refused = zoo_cli(*args, "--out", out, check=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = zoo_cli(*args, "--out", out, "--resume")
    # it resumed (a run started over would give the same weights too): from a checkpointed epoch, not epoch 0
    start = re.search(r"resuming from epoch (\d+) of 3", resumed.stderr)
    assert start and 1 <= int(start.group(1)) < 3, resumed.stderr
    got, want = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not checkpoint.parent.exists()


def test_two_processes_with_gloo_match_one(tmp_path, teachers, digits_zoo):
    """torchrun, 2 CPU processes (gloo), the same global batch: the student matches the 1-process run.

    The student is a ViT (LayerNorm): with BatchNorm each process would normalise over its half of
    the batch, a real (and expected) difference. What remains is the order of float additions."""
    from conftest import run_zoo
    from hubserver import free_port

    args = _args(teachers[:2], digits_zoo, "student=test_vit", "epochs=1", "batch_size=64")
    one, two = tmp_path / "one", tmp_path / "two"
    run_zoo("--quiet", *args, "--out", one)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                           "-m", "zoo", "--quiet", *map(str, args), "--out", str(two)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
    assert json.loads((two / "zoo.json").read_text())["world_size"] == 2


# ---- bad input ----------------------------------------------------------------------------------
def test_bad_input(tmp_path, teachers, digits_zoo, zoo_cli):
    from zoo.demos import ensure_built

    parity = ensure_built("transfer") / "members" / "parity-vit"  # 2 classes: even / odd
    out = tmp_path / "out"
    cases = [
        (["combine", "-s", "distill", "-m", teachers[0], "-m", parity, "--train-data", digits_zoo / "data" / "train"],
         ["ft-lr3e-3", "parity-vit", "different label spaces"]),
        (_args(teachers[:1], digits_zoo, "student=resnet9000"), ["resnet9000", "timm knows no such"]),
        (_args(teachers[:1], digits_zoo, "loss=kd", "discriminator=true"), ["meal-v2"]),
        (["combine", "-s", "distill", "-m", teachers[0]], ["--train-data"]),
        (_args(teachers[:1], digits_zoo) + ["--resume"], ["no interrupted distillation"]),
        (_args(teachers[:1], digits_zoo, "epochs=3") + ["--epochs", "2"], ["disagree"]),
    ]
    for args, words in cases:
        proc = zoo_cli(*args, "--out", out, check=False)
        assert proc.returncode == 2, proc.stderr
        assert all(w in proc.stderr for w in words), (words, proc.stderr)
        assert not out.exists()
    # a damaged checkpoint: one clear line, the checkpoint left for the user to look at
    ckpt = tmp_path / ".out.distill" / "checkpoint.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"not a checkpoint")
    proc = zoo_cli(*_args(teachers[:1], digits_zoo), "--out", out, "--resume", check=False)
    assert proc.returncode == 2 and "damaged" in proc.stderr and ckpt.exists() and not out.exists()


def test_live_teachers_train_like_cached_ones_and_augment_runs_them_live(tmp_path, teachers, digits_zoo, zoo_cli):
    """Live teachers see each training batch as it comes, cached ones were run once over the split in order:
    the same logits up to the rounding of batched convolutions, whose blocking depends on the batch size on
    some CPUs (bit-identical on the Intel machines this was first written on; ~7e-5 apart after one epoch on
    an AMD EPYC). A wrong teacher, order or temperature moves the student by far more than the tolerance."""
    args = _args(teachers[:2], digits_zoo, f"student={digits_zoo / 'members' / 'base'}", "epochs=1")
    zoo_cli(*args, "--option", "teacher_outputs=live", "--out", tmp_path / "live")
    zoo_cli(*args, "--option", "teacher_outputs=cached", "--out", tmp_path / "cached")
    a, b = load_file(tmp_path / "live" / "model.safetensors"), load_file(tmp_path / "cached" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-3) for k in a)
    aug = tmp_path / "aug"
    zoo_cli(*args, "--option", "augment=true", "--option", "hflip=0", "--option", "crop_scale=0.5",
            "--eval-data", digits_zoo / "data" / "val", "--out", aug)
    got = load_file(aug / "model.safetensors")
    assert any(not torch.equal(got[k], a[k]) for k in a)  # other images, other weights
    assert json.loads((aug / "zoo.json").read_text())["metrics"]["top1"] > 0.8
    proc = zoo_cli(*args, "--option", "augment=true", "--option", "teacher_outputs=cached",
                   "--out", tmp_path / "bad", check=False)
    assert proc.returncode == 2 and "teacher_outputs=live" in proc.stderr


def test_a_dying_process_stops_torchrun_and_leaves_the_checkpoint_to_resume(tmp_path, teachers, digits_zoo,
                                                                           zoo_cli):
    """One of two processes is killed mid-run: torchrun stops the other and fails; nothing is written
    but the last whole checkpoint, from which --resume (here in one process) finishes the run."""
    from hubserver import free_port

    args = _args(teachers[:2], digits_zoo, "student=test_vit", "epochs=3")
    out = tmp_path / "student"
    checkpoint = tmp_path / ".student.distill" / "checkpoint.pt"
    proc = start_until([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-addr", "127.0.0.1", "--master-port", free_port(),
                        "-m", "zoo", "--quiet", *args, "--out", out], checkpoint)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    subprocess.run(["kill", "-9", workers[-1]], check=True)  # rank 1 dies
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "FAILED" in err.upper()
    assert not out.exists()
    state = torch.load(checkpoint, weights_only=True)  # whole, readable
    assert state["epoch"] >= 1
    zoo_cli(*args, "--out", out, "--resume")
    assert (out / "model.safetensors").is_file() and not checkpoint.parent.exists()


def test_a_label_map_brings_a_teacher_with_other_label_names_in(tmp_path, teachers, digits_zoo, zoo_cli):
    """The same teacher with its labels renamed (and reordered): refused without a map; with one, the
    distillation is exactly the one with the original teacher."""
    import shutil

    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    renamed = tmp_path / "renamed"
    shutil.copytree(teachers[1], renamed)
    config = json.loads((renamed / "config.json").read_text())
    config["label_names"] = words
    config.get("pretrained_cfg", {}).pop("label_names", None)
    (renamed / "config.json").write_text(json.dumps(config))
    base = ["combine", "-s", "distill", "-m", teachers[0], "--train-data", digits_zoo / "data" / "train",
            "--option", f"student={digits_zoo / 'members' / 'base'}", "--option", "epochs=1"]
    proc = zoo_cli(*base, "-m", renamed, "--out", tmp_path / "x", check=False)
    assert proc.returncode == 2 and "label_map" in proc.stderr and "renamed" in proc.stderr
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"renamed": {w: str(i) for i, w in enumerate(words)}}))
    zoo_cli(*base, "-m", renamed, "--option", f"label_map={mapping}", "--out", tmp_path / "mapped")
    zoo_cli(*base, "-m", teachers[1], "--out", tmp_path / "plain")
    a = load_file(tmp_path / "mapped" / "model.safetensors")
    b = load_file(tmp_path / "plain" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
