"""`zoo discover BASE --check` across member formats: a timm base whose fine-tunes on the Hub come in timm's
layout and in transformers' (an image classifier, a text model, one needing the repo's own code) and one in
no format, and a transformers base with fine-tunes in both; each candidate's format, whether zoo loads it,
the count per format and the verdicts, read from config.json and safetensors headers alone."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ORG = "discover-formats"


def _card(base: str) -> str:
    return f"---\nbase_model: {base}\nbase_model_relation: finetune\n---\n\n# a test model\n"


def _train_vit(model, steps: int, seed: int) -> None:
    """A few steps of SGD on scikit-learn's digits, upscaled to the model's 32x32 RGB input."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    g = torch.Generator().manual_seed(seed)
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    labels = torch.tensor(digits.target)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(labels), (32,), generator=g)
        loss = F.cross_entropy(model(pixel_values=(images[idx] - 0.5) / 0.5).logits, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def tree(hub, ingredients, digits_zoo, tmp_path_factory):
    """The repos published (each with a card naming its base), {name: commit sha}."""
    import torch
    from transformers import (BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification,
                              ViTImageProcessor)

    labels = {str(i): str(i) for i in range(10)}
    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=64, id2label=labels,
                                              layer_norm_eps=1e-6,  # timm's: it converts exactly
                                              label2id={v: int(k) for k, v in labels.items()}))
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)

    def saved(name: str, model) -> object:
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        return folder

    _train_vit(vit, steps=8, seed=0)
    vit_base = saved("vit-base", vit)
    _train_vit(vit, steps=3, seed=1)  # a fine-tune of it
    vit_ft = saved("vit-ft", vit)

    bert = tmp_path_factory.mktemp("bert")  # a text classifier: transformers' layout, another task
    BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32)).save_pretrained(bert)
    remote = tmp_path_factory.mktemp("remote")  # a ViT whose config maps to the repo's own code
    for f in vit_ft.iterdir():
        shutil.copy(f, remote / f.name)
    config = json.loads((vit_ft / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({
        **config, "model_type": "zoo-test-vit", "architectures": ["ZooTestViTForImageClassification"],
        "auto_map": {"AutoConfig": "configuration_zoo.ZooConfig",
                     "AutoModelForImageClassification": "modeling_zoo.ZooTestViTForImageClassification"}}))
    import zoo

    as_timm = tmp_path_factory.mktemp("as-timm") / "out"  # the fine-tune converted to timm's layout
    zoo.combine("soup", [str(vit_ft)], out=as_timm, format="timm")
    plain = tmp_path_factory.mktemp("plain")  # a config.json no format claims
    shutil.copy(ingredients[2] / "model.safetensors", plain / "model.safetensors")
    (plain / "config.json").write_text(json.dumps({"num_classes": 10, "input_size": [3, 32, 32]}))

    base, vbase = f"{ORG}/base", f"{ORG}/vit-base"
    repos = {  # name: (folder, base), most downloaded first under each base
        "base": (digits_zoo / "members" / "base", None),
        "timm-ft": (ingredients[0], base), "vit-ft": (vit_ft, base), "bert-ft": (bert, base),
        "remote-ft": (remote, base), "plain-ft": (plain, base),
        "vit-base": (vit_base, None), "vit-base-ft": (vit_ft, vbase), "timm-on-vit": (ingredients[1], vbase),
        "vit-as-timm": (as_timm, vbase),
    }
    shas = {}
    for i, (name, (source, card_base)) in enumerate(repos.items()):
        folder = tmp_path_factory.mktemp(f"publish-{name}")
        for f in source.iterdir():
            shutil.copy(f, folder / f.name)
        if card_base:
            (folder / "README.md").write_text(_card(card_base))
        shas[name] = hub.publish(folder, f"{ORG}/{name}")
        hub.stats[f"{ORG}/{name}"] = {"downloads": 100 - i, "likes": 0}
    return shas


def _checked(zoo_cli, base: str) -> dict:
    return json.loads(zoo_cli("discover", f"{ORG}/{base}", "--check", "--json").stdout)


def _name(c: dict) -> str:
    return c["repo_id"].split("/")[1]


def test_check_names_each_candidates_format_and_whether_zoo_loads_it(tree, zoo_cli):
    from huggingface_hub import try_to_load_from_cache

    out = _checked(zoo_cli, "base")
    assert [(_name(c), c["format"], c["loads"], c["fits"], c["verdict"]) for c in out["candidates"]] == [
        ("timm-ft", "timm", True, True, "fits"),
        ("vit-ft", "transformers", True, False, "another architecture"),
        ("bert-ft", "transformers", False, False, "another task"),
        ("remote-ft", "transformers", False, False, "needs remote code"),
        ("plain-ft", None, False, False, "in no format"),
    ]
    assert out["formats"] == {"transformers": 3, "timm": 1, "none": 1} and out["base"] == f"{ORG}/base"
    why = {_name(c): c["reason"] for c in out["candidates"]}
    # the format's own words: the text model is not an image classifier, the other needs its repo's code
    assert "BertForSequenceClassification" in why["bert-ft"] and "not an image classifier" in why["bert-ft"]
    assert "trust_remote_code" in why["remote-ft"] and "never runs code" in why["remote-ft"]
    # converted to timm (it converts: a ViT), it is another architecture than the base's
    assert "ViTForImageClassification" in why["vit-ft"] and "test_efficientnet" in why["vit-ft"]
    assert "converted to timm" in why["vit-ft"]
    assert "no format zoo reads" in why["plain-ft"] and "timm, transformers" in why["plain-ft"]

    assert json.loads(zoo_cli("discover", f"{ORG}/base", "--json").stdout)["formats"] is None  # unchecked

    # small files only: each one's config.json, no weights and no image processor's config (this module's
    # repos are read by these commands alone, through the session's huggingface_hub cache)
    cache = Path(os.environ["HF_HOME"]) / "hub"
    ours = list(cache.glob(f"models--{ORG}--*"))
    assert {p.name for p in ours} >= {f"models--{ORG}--{n}" for n in ("base", *(_name(c) for c in out["candidates"]))}
    assert [p for d in ours for p in d.rglob("*") if p.name.endswith(".safetensors")] == []
    assert [p for d in ours for p in d.rglob("preprocessor_config.json")] == []
    for name in ("timm-ft", "vit-ft", "bert-ft", "remote-ft", "plain-ft"):
        assert isinstance(try_to_load_from_cache(f"{ORG}/{name}", "config.json", cache_dir=cache,
                                                 revision=tree[name]), str), name


def test_the_table_shows_formats_and_counts_them(tree, zoo_cli):
    proc = zoo_cli("discover", f"{ORG}/base", "--check", env={"COLUMNS": "200"})  # a wide terminal: no folds
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if "model" in line and "revision" in line)
    assert [w for w in header.replace("┃", " ").split()] == ["#", "model", "revision", "downloads", "format",
                                                               "loads", "architecture", "fits"], header

    def row(name: str) -> list[str]:
        return next(line for line in lines if f"{ORG}/{name} " in line).replace("│", " ").split()

    assert row("timm-ft")[4:] == ["timm", "yes", "test_efficientnet", "fits"]
    assert row("vit-ft")[4:] == ["transformers", "yes", "ViTForImageClassification", "another", "architecture"]
    assert row("bert-ft")[4:] == ["transformers", "no", "BertForSequenceClassification", "another", "task"]
    assert row("plain-ft")[4:] == ["none", "no", "-", "in", "no", "format"]
    assert "formats: 3 transformers, 1 timm, 1 none" in proc.stdout, proc.stdout
    assert f"3. {ORG}/bert-ft does not fit: " in proc.stdout and "not an image classifier" in proc.stdout
    assert ("1 of 5 fit" in proc.stderr and "1 another architecture" in proc.stderr
            and "1 another task" in proc.stderr and "1 needs remote code" in proc.stderr), proc.stderr


def test_a_transformers_base_and_its_fine_tunes_in_both_formats(tree, tmp_path, zoo_cli):
    import zoo
    from zoo.api.discover import format_counts

    found = zoo.discover(f"{ORG}/vit-base", check=True)
    # the fine-tune in timm's layout fits once converted (planned from its header); an EfficientNet does not
    assert [(_name(c.as_dict()), c.format, c.loads, c.verdict) for c in found] == [
        ("vit-base-ft", "transformers", True, "fits"), ("timm-on-vit", "timm", True, "another format (timm)"),
        ("vit-as-timm", "timm", True, "fits, converted from timm")]
    assert found[0].architecture == "ViTForImageClassification"
    assert "does not convert" in found[1].reason and "test_efficientnet" in found[1].reason
    assert format_counts(found) == {"timm": 2, "transformers": 1}
    path = tmp_path / "zoo.toml"  # its zoo: the fine-tune in both formats, which zoo combine merges
    out = json.loads(zoo_cli("discover", f"{ORG}/vit-base", "--write", path, "--json").stdout)
    assert out["formats"] == {"timm": 2, "transformers": 1}
    assert tomllib.loads(path.read_text())["members"] == [f"hf-hub:{ORG}/vit-base-ft@{tree['vit-base-ft']}",
                                                          f"hf-hub:{ORG}/vit-as-timm@{tree['vit-as-timm']}"]
    zoo_cli("combine", "-s", "soup", "--members-from", path, "--out", tmp_path / "soup")
    assert json.loads((tmp_path / "soup" / "config.json").read_text())["architectures"] == [
        "ViTForImageClassification"]


def test_a_base_zoo_cannot_load_is_refused(tree):
    import zoo

    with pytest.raises(zoo.BadInput, match="not an image classifier.*a base zoo can load"):
        zoo.discover(f"{ORG}/bert-ft", check=True)  # a text model as the base
