"""transformers image classifiers as members: read from the (local, real) Hub, merged on their own tensor
names, run through transformers for the strategies that run models, written back as transformers repos —
and converted exactly to and from timm.

The members are real: a small ViTForImageClassification trained on scikit-learn's digits (the digits-demo
zoo's images, through the preprocessing its own image processor says), then fine-tuned twice from there,
and published to the test Hub as transformers' ``save_pretrained`` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ORG = "hf-vit"
LABELS = [str(i) for i in range(10)]


def _vit_config():
    from transformers import ViTConfig

    return ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
                     image_size=32, patch_size=8, layer_norm_eps=1e-6, hidden_dropout_prob=0.0,
                     id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})


def _save(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    _save_processor(folder)
    return folder


def _save_processor(folder: Path) -> None:
    from transformers import ViTImageProcessor

    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)


def _train(model, split, *, epochs: int, lr: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for images, targets in split.batches(32, shuffle=True, generator=gen):
            loss = torch.nn.functional.cross_entropy(model(pixel_values=images).logits, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


@pytest.fixture(scope="module")
def vits(tmp_path_factory, digits_zoo, hub) -> dict[str, Path]:
    """base (trained from scratch on the digits), ft-a and ft-b (fine-tuned from it), on disk and on the Hub."""
    import copy

    from transformers import ViTForImageClassification

    import zoo
    from zoo.kit.data import data_config, load_split

    root = tmp_path_factory.mktemp("hf-vit")
    torch.manual_seed(0)
    init = _save(ViTForImageClassification(_vit_config()), root / "init")
    cfg = data_config(zoo.load_member(str(init)).pretrained_cfg)  # what its image processor says
    train = load_split(digits_zoo / "data" / "train", cfg, label_names=LABELS, num_classes=10)
    base = ViTForImageClassification.from_pretrained(init)
    _train(base, train, epochs=4, lr=3e-3, seed=0)
    folders = {"base": _save(base, root / "base")}
    for name, seed, lr in (("ft-a", 1, 1e-3), ("ft-b", 2, 2e-3)):
        ft = copy.deepcopy(base)
        _train(ft, train, epochs=1, lr=lr, seed=seed)
        folders[name] = _save(ft, root / name)
    for name, folder in folders.items():
        hub.publish(folder, f"{ORG}/{name}")
    return folders


def _said(proc) -> str:
    """What a command printed on stderr, as one line (the console wraps long messages)."""
    return " ".join(proc.stderr.split())


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _val_images(val_dir: Path, folder: Path) -> torch.Tensor:
    import zoo
    from zoo.kit.data import data_config, load_split

    member = zoo.load_member(str(folder))
    return load_split(val_dir, data_config(member.pretrained_cfg), label_names=LABELS, num_classes=10).images[:64]


def test_soup_of_hub_transformers_members_is_a_transformers_repo(tmp_path, vits, val_dir, zoo_cli):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForImageClassification, pipeline
    from PIL import Image

    out = tmp_path / "soup"
    zoo_cli("combine", "-s", "soup", "-m", f"hf-hub:{ORG}/ft-a", "-m", f"hf-hub:{ORG}/ft-b",
            "--eval-data", val_dir, "--out", out)
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json", "zoo.json"} <= {
        p.name for p in out.iterdir()}
    # the members' own tensor names, each the mean of theirs
    a, b, soup = _tensors(vits["ft-a"]), _tensors(vits["ft-b"]), _tensors(out)
    assert soup.keys() == a.keys()
    for k in a:
        torch.testing.assert_close(soup[k], (a[k] + b[k]) / 2, atol=1e-7, rtol=0)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["ViTForImageClassification"] and config["id2label"]["3"] == "3"
    card = ModelCard.load(out / "README.md").data
    assert card.library_name == "transformers" and card.base_model == [f"{ORG}/ft-a", f"{ORG}/ft-b"]
    recipe = json.loads((out / "zoo.json").read_text())
    assert all(m["format"] == "transformers" and len(m["revision"]) == 40 for m in recipe["members"])
    assert "preprocessor_config.json" in recipe["members"][0]["files"]  # pinned and hashed too
    assert recipe["metrics"]["top1"] > 0.3  # chance: 0.1
    # transformers opens it as it is, and zoo.load gives the same function
    import zoo

    x = _val_images(val_dir, out)
    hf = AutoModelForImageClassification.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(zoo.load(str(out))(x), hf(pixel_values=x).logits, atol=1e-5, rtol=0)
    digit = next((val_dir / "7").iterdir())
    with Image.open(digit) as img:
        top = pipeline("image-classification", model=str(out))(img.convert("RGB"))
    assert {p["label"] for p in top} <= set(LABELS)


def test_ties_of_transformers_members_equals_ties_of_their_timm_conversions(tmp_path, vits, val_dir, zoo_cli):
    import zoo

    common = ["-s", "ties", "--base", f"hf-hub:{ORG}/base", "-m", f"hf-hub:{ORG}/ft-a", "-m", f"hf-hub:{ORG}/ft-b"]
    zoo_cli("combine", *common, "--out", tmp_path / "hf")
    proc = zoo_cli("combine", *common, "--format", "timm", "--out", tmp_path / "timm")
    assert "converted exactly to timm (--format)" in _said(proc)
    timm_config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert timm_config["architecture"].startswith("vit_")
    x = _val_images(val_dir, tmp_path / "hf")
    with torch.no_grad():
        torch.testing.assert_close(zoo.load(str(tmp_path / "timm"))(x), zoo.load(str(tmp_path / "hf"))(x),
                                   atol=1e-5, rtol=0)
    # and converted back, the tensors are the transformers merge's own
    zoo_cli("combine", "-s", "soup", "-m", tmp_path / "timm", "--format", "transformers", "--out", tmp_path / "back")
    back, merged = _tensors(tmp_path / "back"), _tensors(tmp_path / "hf")
    assert back.keys() == merged.keys()
    for k in merged:
        torch.testing.assert_close(back[k], merged[k], atol=1e-6, rtol=0)


def test_members_in_two_formats_are_merged_after_conversion(tmp_path, vits, zoo_cli):
    zoo_cli("combine", "-s", "soup", "-m", vits["ft-b"], "--format", "timm", "--out", tmp_path / "ft-b-timm")
    proc = zoo_cli("combine", "-s", "soup", "-m", vits["ft-a"], "-m", tmp_path / "ft-b-timm", "--out", tmp_path / "mixed")
    assert "converted exactly to transformers (the first member's format" in _said(proc)
    zoo_cli("combine", "-s", "soup", "-m", vits["ft-a"], "-m", vits["ft-b"], "--out", tmp_path / "plain")
    mixed, plain = _tensors(tmp_path / "mixed"), _tensors(tmp_path / "plain")
    assert mixed.keys() == plain.keys() and all(torch.equal(mixed[k], plain[k]) for k in plain)


def test_strategies_that_run_models_run_transformers_members(tmp_path, vits, val_dir, digits_zoo, zoo_cli):
    from zoo.kit.members import from_folder

    train = digits_zoo / "data" / "train"
    greedy = tmp_path / "greedy"
    zoo_cli("combine", "-s", "soup", "-o", "mode=greedy", "-m", vits["ft-a"], "-m", vits["ft-b"], "-m", vits["base"],
            "--eval-data", val_dir, "--out", greedy)
    assert json.loads((greedy / "zoo.json").read_text())["report"]["ingredients"]
    fisher = tmp_path / "fisher"
    zoo_cli("combine", "-s", "fisher", "-o", "samples=16", "-m", vits["ft-a"], "-m", vits["ft-b"],
            "--train-data", train, "--out", fisher)
    # Fisher weights each entry by the members' gradients: its merge is not the plain mean, tensor by tensor
    a, b, f = _tensors(vits["ft-a"]), _tensors(vits["ft-b"]), _tensors(fisher)
    q = "vit.encoder.layer.0.attention.attention.query.weight"
    assert q in f and not torch.allclose(f[q], (a[q] + b[q]) / 2)
    wise = tmp_path / "wise"
    zoo_cli("combine", "-s", "wise-ft", "-m", vits["base"], "-m", vits["ft-a"], "--eval-data", val_dir,
            "--ood-data", val_dir, "--out", wise)
    for out in (greedy, fisher, wise):
        assert from_folder(out, spec=str(out), name=out.name).format.name == "transformers"
    ens = tmp_path / "ensemble"
    proc = zoo_cli("combine", "-s", "ensemble", "-m", vits["ft-a"], "-m", vits["ft-b"], "--eval-data", val_dir,
                   "--out", ens)
    assert "converted exactly to timm (strategy 'ensemble' runs on timm models)" in _said(proc)


def test_finetune_eval_and_select_take_transformers_members(tmp_path, vits, val_dir, digits_zoo, zoo_cli):
    from zoo.kit.members import from_folder
    from conftest import class_slice

    data = class_slice({"train": digits_zoo / "data" / "train"}, tmp_path / "data", {"train": 20})
    ft = tmp_path / "ft"
    zoo_cli("finetune", f"hf-hub:{ORG}/base", "--train-data", data["train"], "--epochs", "1", "--out", ft)
    member = from_folder(ft, spec=str(ft), name="ft")
    assert member.format.name == "transformers" and member.label_names == LABELS
    measured = json.loads(zoo_cli("eval", ft, "--data", val_dir, "--json").stdout)
    assert measured["n"] == len(list(val_dir.rglob("*.png"))) and 0.0 <= measured["top1"] <= 1.0
    zoo_cli("select", "-m", vits["ft-a"], "-m", vits["base"], "--target-data", data["train"], "--metric", "logme",
            "--out", tmp_path / "ranked")
    ranking = json.loads((tmp_path / "ranked" / "ranking.json").read_text())["ranking"]
    assert len(ranking) == 2 and all(isinstance(r["score"], float) for r in ranking)


def _text_model(folder: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32)).save_pretrained(folder)
    return folder


def _remote_code(folder: Path, vits) -> Path:
    import shutil

    shutil.copytree(vits["ft-a"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_mine.MyViT"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _wrong_labels(folder: Path, vits) -> Path:
    import shutil

    shutil.copytree(vits["ft-a"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "cat", "1": "dog", "2": "bird"}
    config["label2id"] = {"cat": 0, "dog": 1, "bird": 2}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("case,words", [
    ("text", ["BertForSequenceClassification", "not an image classifier", "ForImageClassification"]),
    ("remote-code", ["trust_remote_code", "never runs code"]),
    ("labels", ["3 labels", "10 rows", "id2label"]),
    ("no-conversion", ["test_efficientnet", "no conversion"]),
])
def test_transformers_members_zoo_cannot_take_are_refused(tmp_path, vits, ingredients, zoo_cli, case, words):
    bad = {"text": lambda: _text_model(tmp_path / "bert"), "remote-code": lambda: _remote_code(tmp_path / "rc", vits),
           "labels": lambda: _wrong_labels(tmp_path / "labels", vits), "no-conversion": lambda: ingredients[0]}[case]()
    out = tmp_path / "out"
    proc = zoo_cli("combine", "-s", "soup", "-m", vits["ft-a"], "-m", bad, "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1 and all(w in message for w in words), message
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def _family(kind: str):
    """A small transformers image classifier of each family with a conversion besides ViT, and its processor."""
    import transformers

    labels = dict(id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    if kind == "resnet":
        config = transformers.ResNetConfig(embedding_size=64, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                           layer_type="basic", **labels)  # timm's: a 64-wide stem, 4 stages
        model = transformers.ResNetForImageClassification(config)
    elif kind == "convnext":
        config = transformers.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                             layer_norm_eps=1e-12, **labels)  # the Hub's eps: converts within 1e-5
        model = transformers.ConvNextForImageClassification(config)
    else:
        config = transformers.SwinConfig(image_size=32, patch_size=4, window_size=4, embed_dim=16, depths=[1, 1],
                                         num_heads=[2, 2], **labels)
        model = transformers.SwinForImageClassification(config)
    processor = transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                                               image_std=[0.5] * 3)
    return model, processor


@pytest.mark.parametrize("kind", ["resnet", "convnext", "swin"])
def test_each_family_merges_the_same_in_both_formats(tmp_path, digits_zoo, val_dir, kind):
    """Two real fine-tunes of each family (trained on the digits here), souped in their own format and
    through timm: the same function."""
    import copy

    import zoo
    from zoo.kit.data import Split, data_config, load_split

    torch.manual_seed(0)
    model, processor = _family(kind)
    folders = []
    for i, lr in enumerate((3e-3, 1e-3)):
        ft = copy.deepcopy(model)
        if not folders:
            model.save_pretrained(tmp_path / "init")
            processor.save_pretrained(tmp_path / "init")
            cfg = data_config(zoo.load_member(str(tmp_path / "init")).pretrained_cfg)
            train = load_split(digits_zoo / "data" / "train", cfg, label_names=LABELS, num_classes=10)
            train = Split(train.images[:320], train.targets[:320], train.classes, train.source)  # a few steps
        _train(ft, train, epochs=1, lr=lr, seed=i)
        ft.save_pretrained(tmp_path / f"ft{i}")
        processor.save_pretrained(tmp_path / f"ft{i}")
        folders.append(str(tmp_path / f"ft{i}"))
    zoo.combine("soup", folders, out=tmp_path / "own")
    zoo.combine("soup", folders, out=tmp_path / "timm", format="timm")
    assert json.loads((tmp_path / "timm" / "config.json").read_text())["architecture"].startswith(kind)
    x = _val_images(val_dir, tmp_path / "own")
    own, through_timm = zoo.load(str(tmp_path / "own")), zoo.load(str(tmp_path / "timm"))
    with torch.no_grad():
        torch.testing.assert_close(through_timm(x), own(x), atol=1e-5, rtol=0)
        assert own(x).argmax(1).eq(own(x).argmax(1)[0]).float().mean() < 1  # a trained model, not a constant


def test_a_headless_encoder_is_a_base_of_its_fine_tunes(tmp_path, vits, val_dir, zoo_cli):
    """A base published as the encoder alone (``ViTModel``, as google/vit-base-patch16-224-in21k is) lines up
    with its fine-tunes' tensors: a multi-task TIES onto it equals the one onto the full base."""
    from transformers import ViTForImageClassification, ViTModel

    full = ViTForImageClassification.from_pretrained(vits["base"])
    encoder = ViTModel(full.config, add_pooling_layer=True)
    encoder.load_state_dict(full.vit.state_dict(), strict=False)  # the pooler stays as initialised
    encoder.save_pretrained(tmp_path / "encoder")
    _save_processor(tmp_path / "encoder")
    tasks = ["-m", vits["ft-a"], "-m", vits["ft-b"], "--multi-task", "--eval-data", f"ft-a={val_dir}",
             "--eval-data", f"ft-b={val_dir}"]
    zoo_cli("combine", "-s", "ties", "--base", tmp_path / "encoder", *tasks, "--out", tmp_path / "onto-encoder")
    zoo_cli("combine", "-s", "ties", "--base", vits["base"], *tasks, "--out", tmp_path / "onto-full")
    for task in ("ft-a", "ft-b"):
        a, b = _tensors(tmp_path / "onto-encoder" / task), _tensors(tmp_path / "onto-full" / task)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    recipe = json.loads((tmp_path / "onto-encoder" / "ft-a" / "zoo.json").read_text())
    assert recipe["base"]["read_as"] == "ViTForImageClassification without a classifier"
