"""The embedded digits-demo zoo, built reproducibly on first use (no network, under a minute on 2 CPU cores).

Real data: scikit-learn's bundled handwritten digits (1,797 8×8 images), split
60/20/20 into train/val/test image folders. Real members: timm's tiny
``test_efficientnet`` "pretrained" on half the training split, then fine-tuned five
ways from that start (learning rate, seed, label smoothing, epochs) — soup
ingredients — plus one trained independently from another initialisation and one of
another architecture (``test_resnet``). Each member is a timm Hub folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from zoo.kit._infra import cache
from zoo.kit.strategy.errors import BadInput

VERSION = 2  # bump when the recipe changes: the cache folder is named by it
LABELS = [str(i) for i in range(10)]
PRETRAINED_CFG = {
    "input_size": (3, 32, 32), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
    "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "num_classes": 10,
}
BASE_ARCH = "test_efficientnet"
OTHER_ARCH = "test_resnet"
FINETUNES = [  # name, lr, seed, label smoothing, epochs
    ("ft-lr3e-3", 3e-3, 1, 0.0, 3),
    ("ft-lr1e-3", 1e-3, 2, 0.0, 3),
    ("ft-ls0.1", 2e-3, 3, 0.1, 3),
    ("ft-seed4", 2e-3, 4, 0.0, 3),
    ("ft-long", 1e-3, 5, 0.0, 5),
]


def write_digits_folders(root: Path) -> dict[str, Path]:
    """scikit-learn's digits as train/val/test image folders (one sub-folder per digit)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    idx = np.arange(len(images))
    train, rest = train_test_split(idx, test_size=0.4, random_state=0, stratify=digits.target)
    val, test = train_test_split(rest, test_size=0.5, random_state=0, stratify=digits.target[rest])
    out = {}
    for split, ids in (("train", train), ("val", val), ("test", test)):
        for i in ids:
            d = root / "data" / split / LABELS[digits.target[i]]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(d / f"{i:04d}.png")
        out[split] = root / "data" / split
    return out


def model_args(arch: str) -> dict[str, Any]:
    """Constructor arguments the tiny models need at 32 px (a ViT's position embedding is sized for it)."""
    return {"img_size": PRETRAINED_CFG["input_size"][-1]} if "vit" in arch else {}


def new_model(arch: str, seed: int, num_classes: int = 10):
    import timm
    import torch

    torch.manual_seed(seed)
    cfg = {**PRETRAINED_CFG, "num_classes": num_classes}
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, pretrained_cfg_overlay=cfg,
                             **model_args(arch))


def train(model, split, *, epochs: int, lr: float, seed: int, label_smoothing: float = 0.0,
          subset: int | None = None, progress: Any = None, name: str = ""):
    """A short AdamW + cosine run (zoo.kit.train.loop) on in-memory tensors, with small random shifts as augmentation."""
    import torch
    from timm.loss import LabelSmoothingCrossEntropy

    from zoo.kit.train import loop as training

    gen = torch.Generator().manual_seed(seed)
    images, targets = split.images, split.targets
    if subset:
        keep = torch.randperm(len(targets), generator=gen)[:subset]
        images, targets = images[keep], targets[keep]
    loss_fn = LabelSmoothingCrossEntropy(label_smoothing) if label_smoothing else torch.nn.CrossEntropyLoss()

    def batches(epoch, gen):  # the order, then each batch's shift, from gen
        for idx in torch.randperm(len(targets), generator=gen).split(32):
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
            yield torch.roll(images[idx], shifts=(dy, dx), dims=(2, 3)), targets[idx]

    def step(batch):
        x, y = batch
        logits = model(x)
        return training.Step(loss_fn(logits, y), n=len(y), correct=int((logits.argmax(1) == y).sum()))

    # torch's CosineAnnealingLR down to 0, no warmup: the recipe the demo zoos (VERSION) were built with
    options = training.LoopOptions(epochs=epochs, lr=lr, steps_per_epoch=-(-len(targets) // 32), weight_decay=0.01,
                                   schedule="cosine-annealing", min_lr_ratio=0.0, label=f"training {name}")
    training.train(model, step, batches, options, device=torch.device("cpu"), generator=gen, progress=progress)
    return model.eval()


def save_member(model, folder: Path, labels: list[str] = LABELS) -> None:
    from timm.models import save_for_hf

    args = model_args(model.pretrained_cfg.get("architecture", "") or type(model).__name__.lower())
    save_for_hf(model, str(folder), model_config={"label_names": labels}, model_args=args or None,
                safe_serialization=True)


def build_digits(root: Path, *, progress: Any = None) -> None:
    import copy

    import torch

    from zoo.kit.data import data_config, load_split

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    folders = write_digits_folders(root)
    split = load_split(folders["train"], data_config(PRETRAINED_CFG), label_names=LABELS, num_classes=10)
    members = root / "members"
    base = train(new_model(BASE_ARCH, 0), split, epochs=4, lr=3e-3, seed=0, subset=len(split) // 2,
                 progress=progress, name="base")
    save_member(base, members / "base")
    for name, lr, seed, ls, epochs in FINETUNES:
        ft = train(copy.deepcopy(base), split, epochs=epochs, lr=lr, seed=seed, label_smoothing=ls,
                   progress=progress, name=name)
        save_member(ft, members / name)
    save_member(train(new_model(BASE_ARCH, 100), split, epochs=5, lr=3e-3, seed=100, progress=progress,
                      name="independent"), members / "independent")
    save_member(train(new_model(OTHER_ARCH, 200), split, epochs=4, lr=3e-3, seed=200, progress=progress,
                      name=OTHER_ARCH), members / "other-arch")
