"""AdaMerging (plugins/merges/adamerging.py) on the digits-demo zoo: λ frozen is task arithmetic, AdaMerging++ is
the TIES-trimmed vectors at λ, the entropy falls as λ is learned, labels are never read, one model per task with
--multi-task, --resume, bad input. Small slices of the data and few steps keep the file to seconds."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file

import zoo
from conftest import class_slice, kill_after_checkpoint, refused


def _args(members):
    return sum((["-m", str(m)] for m in members), [])


@pytest.fixture(scope="module")
def data(tmp_path_factory, digits_zoo):
    """4 held-out images per digit (40) as unlabeled data, and 20 training images per digit."""
    return class_slice({"val": digits_zoo / "data" / "val", "train": digits_zoo / "data" / "train"},
                       tmp_path_factory.mktemp("slice"), {"val": 4, "train": 20})


@pytest.fixture(scope="module")
def parity(tmp_path_factory, digits_zoo, data):
    """Another task on the same images, even/odd (2 classes: another head), and a short real fine-tune of the
    digits base on it."""
    from conftest import run_zoo

    root = tmp_path_factory.mktemp("parity")
    for split in ("train", "val"):
        for f in sorted(data[split].glob("*/*.png")):
            d = root / split / ("even" if int(f.parent.name) % 2 == 0 else "odd")
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, d / f.name)
    run_zoo("finetune", digits_zoo / "members" / "base", "--train-data", root / "train", "--epochs", "1",
            "--lr", "3e-3", "--out", root / "parity-ft")
    return {"val": root / "val", "member": root / "parity-ft"}


def _state(result) -> dict[str, torch.Tensor]:
    return {k: result.state_dict[k] for k in result.state_dict}


def test_frozen_coefficients_give_task_arithmetic_at_scale_init(ingredients, digits_zoo, data):
    """steps=0 (task-wise) and lr=0 (layer-wise, trained for a few steps that move nothing): θ₀ + 0.3·Σ τᵢ, the
    task arithmetic zoo writes at scale 0.3 — BatchNorm's statistics included (moved by t = Σ λᵢ = 0.6)."""
    base, members = str(digits_zoo / "members" / "base"), [str(m) for m in ingredients[:2]]
    ta = _state(zoo.combine("task-arithmetic", members, base=base, options={"scale": 0.3}))
    for options in ({"steps": 0, "granularity": "task"}, {"steps": 3, "lr": 0.0, "granularity": "layer"}):
        ada = zoo.combine("adamerging", members, base=base, eval_data=str(data["val"]), options=options)
        got = _state(ada)
        assert got.keys() == ta.keys()
        for k in ta:
            assert got[k].dtype == ta[k].dtype and torch.allclose(got[k], ta[k], rtol=1e-6, atol=1e-7), k
        assert any("running_var" in k for k in ta)
        lam = ada.report["adamerging"]["coefficients"]
        flat = [x for v in lam.values() for x in (v if isinstance(v, list) else [v])]
        assert flat and all(x == pytest.approx(0.3) for x in flat)


def test_plus_at_frozen_coefficients_adds_the_ties_trimmed_agreeing_entries(ingredients, digits_zoo, data):
    """AdaMerging++ at λ = 0.3, steps=0: θ₀ + 0.3·Σᵢ τ̂ᵢ, τ̂ᵢ = τᵢ trimmed to its top 20% magnitudes over the whole
    model (a sort here), then only the entries whose sign agrees with sign(Σᵢ τ̂ᵢ)."""
    base_dir, members = digits_zoo / "members" / "base", ingredients[:2]
    ada = _state(zoo.combine("adamerging", [str(m) for m in members], base=str(base_dir), eval_data=str(data["val"]),
                             options={"steps": 0, "plus": True, "density": 0.2}))
    b = load_file(str(base_dir / "model.safetensors"))
    thetas = [load_file(str(m / "model.safetensors")) for m in members]
    keys = [k for k in b if b[k].is_floating_point() and not zoo.is_statistic(k)]
    flat = torch.stack([torch.cat([(t[k] - b[k]).flatten() for k in keys]) for t in thetas])
    d = flat.shape[1]
    kth = flat.abs().sort(dim=1, descending=True).values[:, round(0.2 * d) - 1:round(0.2 * d)]
    trimmed = torch.where(flat.abs() >= kth, flat, torch.zeros_like(flat))
    sign = trimmed.sum(0).sign()
    kept = torch.where(trimmed * sign > 0, trimmed, torch.zeros_like(trimmed))
    want = torch.cat([b[k].flatten() for k in keys]) + 0.3 * kept.sum(0)
    got = torch.cat([ada[k].flatten() for k in keys])
    assert torch.allclose(got, want, atol=1e-6)
    assert 0.05 < (kept != 0).float().mean() < 0.2  # the trim and the election really removed entries


def _shuffled(folder, out):
    """The same images with their labels shuffled: each copied into a random class folder."""
    files = sorted(folder.glob("*/*.png"))
    classes = sorted({f.parent.name for f in files})
    rng = random.Random(0)
    for f in files:
        target = out / rng.choice(classes)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, target / f.name)
    return out


@pytest.fixture(scope="module")
def learned(tmp_path_factory, ingredients, digits_zoo, data):
    """One layer-wise run, 9 steps (3 epochs of 3) on the 40 unlabeled images: (its command, its output)."""
    from conftest import run_zoo

    args = ["combine", "-s", "adamerging", "--base", digits_zoo / "members" / "base", *_args(ingredients[:2]),
            "-o", "steps=9", "-o", "lr=0.02"]
    out = tmp_path_factory.mktemp("learned") / "ada"
    run_zoo(*args, "--eval-data", data["val"], "--out", out)
    return args, out


def test_entropy_falls_labels_are_never_read_and_the_card_shows_the_coefficients(tmp_path, ingredients, data,
                                                                                  learned, zoo_cli):
    from figcheck import assert_png_is

    from zoo.kit.card import merging_coefficients

    args, out = learned
    recipe = json.loads((out / "zoo.json").read_text())
    report = recipe["report"]["adamerging"]
    entropy, history = report["entropy"], report["history"]
    assert entropy["end"]["held-out"] < entropy["start"]["held-out"]
    assert [r["epoch"] for r in history] == [1, 2, 3] and history[-1]["step"] == 9
    assert history[-1]["loss"] < history[0]["loss"] and "train_top1" not in history[0]
    layers, lam = report["layers"], report["coefficients"]
    assert set(lam) == {m.name for m in ingredients[:2]} and all(len(v) == len(layers) for v in lam.values())
    assert layers[0] == "conv_stem.weight" and "classifier.weight" in layers  # model order; the head merged too
    assert any(abs(x - 0.3) > 1e-3 for v in lam.values() for x in v)  # λ moved
    card = (out / "README.md").read_text()
    assert "AdaMerging (layer-wise)" in card and "adamerging.png" in card
    history0 = [{"epoch": 0, "loss": entropy["start"]["held-out"], "entropy/held-out": entropy["start"]["held-out"]}]
    assert_png_is(out / "adamerging.png", merging_coefficients(
        lam, layers=layers, history=history0 + history, title="AdaMerging (layer-wise): learned λ"))
    # the same images under shuffled labels: the same bytes (only the measured held-out top-1 differs)
    shuffled = _shuffled(data["val"], tmp_path / "shuffled")
    assert sorted(p.name for p in shuffled.glob("*/*.png")) == sorted(p.name for p in data["val"].glob("*/*.png"))
    again = tmp_path / "again"
    zoo_cli(*args, "--eval-data", shuffled, "--out", again)
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    other = json.loads((again / "zoo.json").read_text())
    assert other["report"]["adamerging"]["coefficients"] == lam
    assert other["metrics"]["top1"] < recipe["metrics"]["top1"] - 0.3


def test_multi_task_learns_on_each_tasks_data_through_its_own_head(tmp_path, ingredients, digits_zoo, data, parity,
                                                                   zoo_cli):
    import timm

    digits_ft, parity_ft = ingredients[0], parity["member"]
    common = ["combine", "-s", "adamerging", "--base", digits_zoo / "members" / "base", *_args([digits_ft, parity_ft]),
              "--multi-task", "-o", "steps=4", "-o", "granularity=task", "-o", "lr=0.02"]
    out = tmp_path / "mt"
    _fails(zoo_cli, out, *common, "--eval-data", f"{digits_ft.name}={data['val']}",
           words=["unlabeled images of every task", "parity-ft", "--eval-data parity-ft=DIR"])
    _fails(zoo_cli, out, *common, "--eval-data", f"parity={parity['val']}", words=["'parity' is not a member"])
    zoo_cli(*common, "--eval-data", f"{digits_ft.name}={data['val']}", "--eval-data", f"parity-ft={parity['val']}",
            "--out", out)
    recipe = json.loads((out / "zoo.json").read_text())
    assert set(recipe["tasks"]) == {digits_ft.name, "parity-ft"}
    assert not list(tmp_path.glob(".mt.*"))  # the finished run's checkpoints are gone
    models = {}
    for member in (digits_ft, parity_ft):
        models[member.name] = timm.create_model(f"local-dir:{out / member.name}", pretrained=True).state_dict()
        theirs = load_file(str(member / "model.safetensors"))
        for k in ("classifier.weight", "classifier.bias"):
            assert torch.equal(models[member.name][k], theirs[k])  # each task keeps its own head
        task = json.loads((out / member.name / "zoo.json").read_text())
        report = task["report"]["adamerging"]
        assert set(report["coefficients"]) == {digits_ft.name, "parity-ft"}
        assert {r for r in report["history"][0] if r.startswith("entropy/")} == {
            f"entropy/{digits_ft.name}", "entropy/parity-ft"}
        assert (out / member.name / "adamerging.png").is_file()
    assert models["parity-ft"]["classifier.weight"].shape[0] == 2
    # one merged backbone, θ₀ + Σ λᵢτᵢ with the learned task-wise λ
    lam = report["coefficients"]
    b = load_file(str(digits_zoo / "members" / "base" / "model.safetensors"))
    thetas = {m.name: load_file(str(m / "model.safetensors")) for m in (digits_ft, parity_ft)}
    for k in ("conv_stem.weight", "blocks.3.0.conv_pw.weight", "bn2.running_var"):
        if zoo.is_statistic(k):  # towards the members' mean by t = Σᵢ λᵢ (within [0, 1])
            t = min(1.0, max(0.0, sum(lam.values())))
            want = b[k] + t * (sum(th[k] for th in thetas.values()) / 2 - b[k])
        else:
            want = b[k] + sum(lam[n] * (th[k] - b[k]) for n, th in thetas.items())
        assert torch.allclose(models["parity-ft"][k], want, atol=1e-6), k
        assert torch.equal(models["parity-ft"][k], models[digits_ft.name][k])
    assert all(abs(v - 0.3) > 1e-4 for v in lam.values())  # learned


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, ingredients, data, learned, zoo_cli):
    from zoo.plugins.merges import adamerging

    args, reference = learned
    args = [*args, "--eval-data", data["val"]]
    out = tmp_path / "ada"
    settings = adamerging.settings_of(adamerging.AdaMerging.Options(steps=9, lr=0.02),
                                      [m.name for m in ingredients[:2]], ["held-out"])
    checkpoint = adamerging.checkpoint_folder(tmp_path / ".ada.adamerging", settings) / "checkpoint.pt"
    kill_after_checkpoint(args, out, checkpoint)
    assert checkpoint.exists() and not out.exists()
    refused = zoo_cli(*args, "--out", out, check=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = zoo_cli(*args, "--out", out, "--resume")
    assert "resuming from epoch" in resumed.stderr
    assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    assert not checkpoint.parent.parent.exists()


def _fails(zoo_cli, out, *args, words=()):
    refused(zoo_cli, out, *args, words=words)


def test_bad_input(tmp_path, ingredients, digits_zoo, data, zoo_cli):
    base = digits_zoo / "members" / "base"
    out = tmp_path / "out"
    two = _args(ingredients[:2])
    _fails(zoo_cli, out, "combine", "-s", "adamerging", "--base", base, *two,
           words=["'adamerging' needs eval data", "--eval-data"])
    _fails(zoo_cli, out, "combine", "-s", "adamerging", *two, "--eval-data", data["val"],
           words=["'adamerging' needs a base model"])
    _fails(zoo_cli, out, "combine", "-s", "adamerging", "--base", base, "-m", ingredients[0], "-m",
           digits_zoo / "members" / "other-arch", "--eval-data", data["val"], words=["other-arch", "different tensors"])
    _fails(zoo_cli, out, "combine", "-s", "adamerging", "--base", base, *two, "--eval-data", data["val"],
           "-o", "plus=true", "-o", "density=0", words=["density=0.0", "(0, 1]"])


@pytest.mark.slow
def test_two_processes_with_gloo_learn_the_coefficients_one_process_learns(tmp_path, ingredients, data, learned):
    """torchrun, 2 CPU processes (gloo): each takes half of every batch and DDP averages the gradients of λ. The
    network runs on its running statistics (evaluation mode), so halving the batch changes nothing but the order
    of float additions: the λ of the one-process run, to float rounding."""
    import subprocess
    import sys

    from hubserver import free_port

    args, one = learned
    two = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                           "-m", "zoo", "--quiet", *map(str, args), "--eval-data", str(data["val"]), "--out", str(two)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((d / "zoo.json").read_text())["report"]["adamerging"] for d in (one, two))
    for name in a["coefficients"]:
        assert a["coefficients"][name] == pytest.approx(b["coefficients"][name], abs=1e-5)
    assert any(abs(x - 0.3) > 1e-2 for x in b["coefficients"][name])
    assert b["history"][-1]["loss"] == pytest.approx(a["history"][-1]["loss"], rel=1e-5)
