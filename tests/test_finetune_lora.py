"""zoo finetune --lora: a PEFT LoRA adapter trained through the kit's one loop on the digits-demo base (timm's
test_efficientnet) and on a small transformers ViT, written by PEFT's save_pretrained, opened by PEFT and by
zoo, and its per-epoch snapshots merged by MWA (the MWA paper's own setting)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import class_slice, kill_after_checkpoint

LORA = ["--lora", "r=4,alpha=8", "--batch-size", "32", "--lr", "1e-2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits_zoo) -> dict[str, Path]:
    """``zoo finetune base --lora r=4 --epochs 2 --snapshots run/ --out lora/`` on 10 images of each digit, run
    from a project folder that holds a link to the base (so the adapter names it by a relative path)."""
    from conftest import run_zoo

    root = tmp_path_factory.mktemp("lora")
    (root / "base").symlink_to(digits_zoo / "members" / "base")
    train = class_slice({"train": digits_zoo / "data" / "train"}, root / "data", {"train": 10})["train"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        run_zoo("finetune", "base", "--train-data", "data/train", *LORA, "--epochs", "2", "--snapshots", "run",
                "--out", "lora")
    return {"root": root, "base": root / "base", "train": train, "out": root / "lora", "run": root / "run"}


def _peft_logits(base: Path, adapter: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The adapter applied by PEFT itself onto the base model zoo builds (its own head: same classes): its
    logits as PEFT runs it (LoRA beside the frozen weights), then merged (``merge_and_unload``)."""
    from peft import PeftModel

    import zoo

    model = PeftModel.from_pretrained(zoo.load_member(str(base)).create_model(), str(adapter)).eval()
    with torch.no_grad():
        beside = model(x)
        return beside, model.merge_and_unload()(x)


def test_lora_output_is_a_peft_adapter_zoo_and_peft_apply_alike(run, val_dir):
    import zoo
    from huggingface_hub import ModelCard

    out = run["out"]
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "zoo.json"} <= files
    assert not (out / "model.safetensors").exists()  # an adapter, not a full model
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["base_model_name_or_path"] == "../base"  # the base by its place beside the adapter, no path
    assert config["modules_to_save"] == ["classifier"]
    tensors = load_file(out / "adapter_model.safetensors")
    # the default targets: the 1×1 convolutions (conv_pw, conv_pwl, conv_head), not the classifier
    adapted = {re.sub(r"\.lora_[AB]\.weight$", "", k) for k in tensors if ".lora_" in k}
    assert any(k.endswith("conv_pwl") for k in adapted) and any(k.endswith("conv_head") for k in adapted)
    assert not any("classifier" in k for k in adapted) and "base_model.model.classifier.weight" in tensors
    assert not any(k.endswith(("running_mean", "running_var")) for k in tensors)  # BatchNorm stays the base's

    card = ModelCard.load(out / "README.md").data
    assert card.library_name == "peft" and card.base_model is None  # a local base is no Hub repo to name
    recipe = json.loads((out / "zoo.json").read_text())
    history = recipe["report"]["history"]
    assert [h["epoch"] for h in history] == [1, 2] and history[1]["step"] > history[0]["step"] > 0
    assert all(h["loss"] > 0 for h in history) and recipe["options"]["lora"]["r"] == 4
    assert recipe["members"][0]["files"]["model.safetensors"]  # the base pinned by its sha256
    published = (out / "zoo.json").read_text() + (out / "README.md").read_text() + json.dumps(config)
    assert str(run["root"]) not in published and os.path.expanduser("~") not in published

    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        ours = zoo.load(str(out))(x)
        before = zoo.load(str(run["base"]))(x)
    beside, merged = _peft_logits(run["base"], out, x)
    assert torch.equal(ours, merged)  # PEFT's merge arithmetic, bit for bit
    torch.testing.assert_close(ours, beside, atol=1e-4, rtol=1e-4)  # unmerged: the float rounding differs
    assert not torch.allclose(ours, before, atol=1e-3)  # it trained


def test_lora_snapshots_merge_by_mwa_as_the_weighted_mean_of_their_full_models(run, tmp_path, zoo_cli):
    import zoo
    from zoo.api.combine import whole
    from zoo.plugins.merges.mwa import mwa_weights

    snaps = [run["run"] / "epoch-1", run["run"] / "epoch-2"]
    losses = []
    for n, snap in enumerate(snaps, 1):
        history = json.loads((snap / "zoo.json").read_text())["report"]["history"]
        assert [h["epoch"] for h in history] == list(range(1, n + 1))  # the history up to that epoch
        assert json.loads((snap / "adapter_config.json").read_text())["base_model_name_or_path"] == "../../base"
        losses.append(history[-1]["loss"])
    # the final adapter is the last snapshot
    assert load_file(snaps[-1] / "adapter_model.safetensors").keys() == load_file(
        run["out"] / "adapter_model.safetensors").keys()

    out = tmp_path / "mwa"
    zoo_cli("combine", "-s", "mwa", *sum((["-m", s] for s in snaps), []), "-o", "by=loss", "-o", "penalty=2",
            "--out", out)
    report = json.loads((out / "zoo.json").read_text())["report"]["mwa"]
    weights = mwa_weights(losses, "loss", 2.0)
    assert report["weights"] == pytest.approx(weights) and weights[1] > weights[0]  # lower loss weighs more
    full = [whole(zoo.load_member(str(s))) for s in snaps]
    parts = [f.read(f.keys()) for f in full]
    got = load_file(out / "model.safetensors")
    assert got.keys() == parts[0].keys()
    for k, v in got.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, weights[0] * parts[0][k] + weights[1] * parts[1][k], atol=1e-6, rtol=1e-5)


def test_mwa_reads_a_trainer_checkpoints_state(run, tmp_path, zoo_cli):
    """Checkpoints as a transformers / PEFT ``Trainer`` leaves them (``checkpoint-N/``: the adapter and
    ``trainer_state.json``, no zoo.json): MWA by step weighs them by ``global_step``, by loss by the last
    training loss logged by then."""
    import shutil

    from zoo.plugins.merges.mwa import mwa_weights

    checkpoints = []
    for n, (step, losses) in enumerate([(10, [2.5, 2.0]), (20, [2.5, 2.0, 1.2, 0.9])]):
        folder = tmp_path / "trainer" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy(run["run"] / f"epoch-{n + 1}" / name, folder / name)
        (folder / "trainer_state.json").write_text(json.dumps({
            "global_step": step, "epoch": float(n + 1),
            "log_history": [{"loss": v, "step": 5 * (i + 1), "learning_rate": 1e-3} for i, v in enumerate(losses)]
            + [{"train_runtime": 1.0, "step": step}]}))
        checkpoints.append(folder)
    members = sum((["-m", c] for c in checkpoints), [])
    for by, metrics in (("step", [10, 20]), ("loss", [2.0, 0.9])):
        out = tmp_path / f"mwa-{by}"
        zoo_cli("combine", "-s", "mwa", *members, "--base", run["base"], "-o", f"by={by}", "-o", "penalty=2",
                "--out", out)
        report = json.loads((out / "zoo.json").read_text())["report"]["mwa"]
        assert report["metrics"] == metrics and report["weights"] == pytest.approx(mwa_weights(metrics, by, 2.0))
        assert "trainer_state.json" in report["source"]


def test_interrupted_lora_run_resumes_to_the_same_adapter(run, tmp_path, zoo_cli):
    """Killed after the first checkpoint (which holds the adapter's trained tensors alone), resumed: the
    adapter of a run never interrupted (the fixture's, which had the same settings)."""
    args = ["finetune", run["base"], "--train-data", run["train"], *LORA, "--epochs", "2"]
    out = tmp_path / "ft"
    checkpoint = tmp_path / ".ft.finetune" / "checkpoint.pt"
    kill_after_checkpoint(args, out, checkpoint)
    assert not out.exists()
    saved = torch.load(checkpoint, weights_only=True)["model"]
    assert saved and all(".lora_" in k or "modules_to_save" in k for k in saved)  # not the whole base
    resumed = zoo_cli(*args, "--out", out, "--resume")
    assert re.search(r"resuming from epoch 1 of 2", resumed.stderr), resumed.stderr
    got, want = load_file(out / "adapter_model.safetensors"), load_file(run["out"] / "adapter_model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not checkpoint.parent.exists()


@pytest.mark.parametrize("value,words", [
    ("r=0", ["r=0", "at least 1"]),
    ("alpha=16", ["r is required"]),
    ("r=8,rank=4", ["unknown key 'rank'", "targets"]),
    ("r=8,dropout=1.5", ["dropout=1.5"]),
    ("r=8,rslora=maybe", ["rslora='maybe'"]),
    ("r=8,targets=conv_pw+", ["empty module name"]),
    ("r=8,targets=attn", ["targets='attn'", "no module"]),
    ("r=8,targets=conv_dw", ["'conv_dw'", "Conv2d", "1×1"]),  # a depthwise 3×3 convolution
    ("r=8,targets=classifier", ["classifier", "saved whole"]),
])
def test_bad_lora_values_are_refused(tmp_path, digits_zoo, run, zoo_cli, value, words):
    out = tmp_path / "out"
    proc = zoo_cli("finetune", run["base"], "--train-data", run["train"], "--lora", value, "--out", out, check=False)
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1, proc.stderr
    assert all(w in message for w in words), message
    assert not out.exists() and not (tmp_path / ".out.finetune").exists()


@pytest.mark.parametrize("flags,words", [(["--mode", "lp-ft"], ["--mode lp-ft"]),
                                         (["--bn", "train"], ["BatchNorm statistics"])])
def test_lora_refuses_what_an_adapter_cannot_be(tmp_path, run, zoo_cli, flags, words):
    proc = zoo_cli("finetune", run["base"], "--train-data", run["train"], "--lora", "r=4", *flags, "--out",
                   tmp_path / "out", check=False)
    assert proc.returncode == 2 and all(w in " ".join(proc.stderr.split()) for w in words), proc.stderr
    assert not (tmp_path / "out").exists()


def test_multi_task_adapters_are_written_as_one_adapter_per_task_with_its_own_head(run, tmp_path, zoo_cli):
    """Two LoRA fine-tunes with different heads (the run's, on the base's ten digits; one on five digits, a new
    head) merged with --multi-task --format adapter: each task is a PEFT adapter that, loaded by PEFT onto the
    base (its classifier reset to the task's classes), gives the full multi-task merge's logits for that task,
    and that zoo eval --base scores as the full merge's task model."""
    from peft import PeftModel

    import zoo
    from zoo.kit.data import data_config, load_split

    root = run["root"]
    five = tmp_path / "five"
    for digit in range(5):
        (five / str(digit)).mkdir(parents=True)
        for image in sorted((run["train"] / str(digit)).iterdir()):
            (five / str(digit) / image.name).symlink_to(image.resolve())
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        zoo_cli("finetune", "base", "--train-data", five, *LORA, "--epochs", "1", "--out", tmp_path / "lora5")
    common = ["-s", "task-arithmetic", "--base", run["base"], "-m", run["out"], "-m", tmp_path / "lora5",
              "--multi-task", "--eval-data", f"lora={run['train']}", "--eval-data", f"lora5={five}"]
    zoo_cli("combine", *common, "--out", tmp_path / "full")
    zoo_cli("combine", *common, "--format", "adapter", "--out", tmp_path / "adapters")
    for task, classes in (("lora", 10), ("lora5", 5)):
        folder = tmp_path / "adapters" / task
        assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json",
                                                             "adapter_model.safetensors", "zoo.json"]
        recorded = json.loads((folder / "zoo.json").read_text())
        assert recorded["format"] == "adapter" and recorded["report"]["adapter"]["saved_whole"] == ["classifier"]
        full = zoo.load(tmp_path / "full" / task)
        model = zoo.load_member(str(run["base"])).create_model()
        if classes != 10:
            model.reset_classifier(classes)
        peft_model = PeftModel.from_pretrained(model, str(folder)).eval()
        split = load_split(five if classes == 5 else run["train"], data_config(zoo.load(run["base"]).pretrained_cfg),
                           label_names=[str(i) for i in range(classes)], num_classes=classes)
        with torch.no_grad():
            torch.testing.assert_close(peft_model(split.images), full(split.images), atol=1e-4, rtol=0)
        scored = zoo.evaluate(str(folder), str(five if classes == 5 else run["train"]), base=str(run["base"]))
        assert scored.top1 == pytest.approx(json.loads((tmp_path / "full" / "zoo.json").read_text())
                                            ["tasks"][task]["metrics"]["top1"])


def test_lora_on_a_transformers_vit_is_an_adapter_peft_loads(tmp_path, digits_zoo, zoo_cli):
    """A transformers ViTForImageClassification base (small, saved by save_pretrained): the default targets are
    its attention and MLP linear layers, and the adapter PEFT loads onto the base scores the held-out images
    as zoo measured the trained model (the same logits). The adapter keeps PEFT's module names (this
    transformers' own, which differ from the files' in transformers 5): zoo maps them to the base's tensor
    names, and zoo.load of the adapter gives PEFT's logits."""
    from peft import PeftModel
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    import zoo
    from zoo.kit.data import data_config, load_split

    labels = [str(i) for i in range(10)]
    torch.manual_seed(0)
    base = tmp_path / "vit"
    ViTForImageClassification(ViTConfig(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96, image_size=32,
        patch_size=8, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )).save_pretrained(base)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(base)
    data = class_slice({"train": digits_zoo / "data" / "train", "val": digits_zoo / "data" / "val"}, tmp_path / "d",
                       {"train": 5, "val": 5})
    out = tmp_path / "lora"
    zoo_cli("finetune", base, "--train-data", data["train"], "--eval-data", data["val"], *LORA, "--epochs", "1",
            "--out", out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["classifier"]
    model = ViTForImageClassification.from_pretrained(base).eval()
    linears = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "classifier"}
    assert set(config["target_modules"]) == linears and len(linears) == 12  # 2 blocks × (q, k, v, out, 2 MLP)
    peft_model = PeftModel.from_pretrained(model, str(out)).eval()
    val = load_split(data["val"], data_config(zoo.load_member(str(base)).pretrained_cfg), label_names=labels,
                     num_classes=10)
    with torch.no_grad():
        logits = peft_model(pixel_values=val.images).logits
    metrics = json.loads((out / "zoo.json").read_text())["metrics"]
    assert (logits.argmax(1) == val.targets).float().mean().item() == pytest.approx(metrics["top1"])
    nll = torch.nn.functional.cross_entropy(logits, val.targets).item()
    assert nll == pytest.approx(metrics["nll"], rel=1e-4)  # the very logits zoo measured
    from zoo.api.combine import whole

    applied = whole(zoo.load_member(str(out)), zoo.load_member(str(base)))  # named by its folder's name alone
    with torch.no_grad():
        torch.testing.assert_close(applied.create_model()(val.images), logits, atol=1e-4, rtol=0)


def test_lora_of_a_hub_base_names_its_repo_id(run, tmp_path, hub, zoo_cli):
    """A Hub base is named by its repo id (and commit) in adapter_config.json and as the card's base_model, so
    PEFT, the Hub's model tree and zoo all find it; zoo applies the adapter to it from the Hub."""
    import zoo
    from huggingface_hub import ModelCard

    revision = hub.publish(run["base"], "lora-org/base")
    out = tmp_path / "lora"
    zoo_cli("finetune", "hf-hub:lora-org/base", "--train-data", run["train"], "--lora", "r=2", "--epochs", "1",
            "--out", out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "lora-org/base" and config["revision"] == revision
    card = ModelCard.load(out / "README.md").data
    assert card.base_model == "lora-org/base" and card.base_model_relation == "adapter"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(zoo.load(str(out))(x), _peft_logits(run["base"], out, x)[1], atol=0, rtol=0)


def test_an_adapter_for_new_classes_opens_with_its_own_head(tmp_path, digits_zoo, zoo_cli):
    """Three of the ten digits as the class folders: a new head (3 rows) saved whole in the adapter; zoo
    applies it onto its 10-class base as a 3-class model with the adapter's class names, the logits PEFT
    gives on a base whose head was reset the same way."""
    from peft import PeftModel

    import zoo

    source = digits_zoo / "data" / "train"
    for digit in ("3", "5", "8"):
        (tmp_path / "three" / digit).mkdir(parents=True)
        for image in sorted((source / digit).iterdir())[:6]:
            (tmp_path / "three" / digit / image.name).symlink_to(image)
    out = tmp_path / "lora3"
    zoo_cli("finetune", digits_zoo / "members" / "base", "--train-data", tmp_path / "three", *LORA, "--epochs", "1",
            "--out", out)
    member = zoo.load_member(str(out))
    from zoo.api.combine import whole

    applied = whole(member, zoo.load_member(str(digits_zoo / "members" / "base")))
    assert applied.num_classes == 3 and applied.label_names == ["3", "5", "8"]
    base_model = zoo.load_member(str(digits_zoo / "members" / "base")).create_model()
    base_model.reset_classifier(3)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        theirs = PeftModel.from_pretrained(base_model, str(out)).eval().merge_and_unload()(x)
        torch.testing.assert_close(applied.create_model()(x), theirs, atol=1e-5, rtol=0)
