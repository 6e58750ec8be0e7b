"""Every plain timm output zoo writes opens in transformers (its TimmWrapper) with timm's logits, and its
image-classification pipeline names the digit of a real image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

import zoo


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, digits_zoo, ingredients) -> dict[str, Path]:
    """A soup, a task-vector merge and a fine-tune with a new head (3 of the 10 digits), written by zoo."""
    root = tmp_path_factory.mktemp("outputs")
    base, data = digits_zoo / "members" / "base", digits_zoo / "data"
    three = root / "three"
    three.mkdir()
    for c in ("0", "1", "7"):
        (three / c).symlink_to(data / "train" / c)
    members = [str(m) for m in ingredients[:2]]
    zoo.combine("soup", members, out=root / "soup")
    zoo.combine("task-arithmetic", members, base=str(base), out=root / "merge")
    zoo.finetune(str(base), str(three), root / "finetune", recipe=zoo.FinetuneRecipe(mode="lp", lp_epochs=1))
    return {name: root / name for name in ("soup", "merge", "finetune")}


def test_the_members_carry_the_class_count_in_model_args(ingredients):
    """What the outputs below are made from: timm's save_for_hf repeats num_classes in model_args (the
    older outputs of zoo did too); zoo reads such folders as members."""
    assert "num_classes" in json.loads((ingredients[0] / "config.json").read_text())["model_args"]


@pytest.mark.parametrize("kind", ["soup", "merge", "finetune"])
def test_output_loads_in_transformers_with_timms_logits(outputs, kind, digits_zoo):
    from transformers import AutoModelForImageClassification, pipeline

    out = outputs[kind]
    hf = AutoModelForImageClassification.from_pretrained(out).eval()
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(hf(x).logits, model(x))
    labels = model.pretrained_cfg["label_names"]
    assert [hf.config.id2label[i] for i in range(len(labels))] == labels
    # a real digit that timm's model gets right: the pipeline (transformers' own preprocessing) names it
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    digit = "7"
    for path in sorted((digits_zoo / "data" / "val" / digit).iterdir()):
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            if labels[int(model(transform(image)[None]).argmax())] == digit:
                break
    else:
        pytest.fail(f"timm's {kind} gets no {digit} of the validation images right")
    classify = pipeline("image-classification", model=str(out))
    assert classify(image)[0]["label"] == digit
