"""The stitch-demo zoos: two tiny model families trained on scikit-learn's digits, to stitch (SN-Net).

- ``vit-s``, ``vit-m``, ``vit-l``: timm's ``test_vit`` at 32 px with 8-px patches, widths 32/48/64;
  the largest is also deeper (6 blocks against 4), so stitching maps block ids by nearest interpolation.
- ``effnet-s``, ``effnet-m``, ``effnet-l``: timm's ``test_efficientnet`` with channel multipliers
  0.5/1.0/1.5 and depth multipliers 1/1.5/2 (1 or 2 blocks per stage).

Each anchor is trained from scratch on the digits-demo training split (real handwritten digits);
the data lives beside them in ``data/{train,val,test}``. The CNNs reach 87/97/97% held-out top-1; the
ViTs, trained from scratch on 1,078 images for 8 epochs, stay weak (31/40/49%): ViTs need far
more data or steps than a test fixture can spend. Built on first use (about a minute on 2 CPU
cores) into zoo's cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

VERSION = 1

# name, architecture, constructor arguments, epochs, learning rate, seed
_VIT = {"num_heads": 2, "patch_size": 8, "img_size": 32, "global_pool": "avg"}
ANCHORS = [
    ("vit-s", "test_vit", {"embed_dim": 32, "depth": 4, **_VIT}, 8, 2e-3, 1),
    ("vit-m", "test_vit", {"embed_dim": 48, "depth": 4, **_VIT}, 8, 2e-3, 2),
    ("vit-l", "test_vit", {"embed_dim": 64, "depth": 6, **_VIT}, 8, 2e-3, 3),
    ("effnet-s", "test_efficientnet", {"channel_multiplier": 0.5, "depth_multiplier": 1.0}, 3, 3e-3, 4),
    ("effnet-m", "test_efficientnet", {"channel_multiplier": 1.0, "depth_multiplier": 1.5}, 3, 3e-3, 5),
    ("effnet-l", "test_efficientnet", {"channel_multiplier": 1.5, "depth_multiplier": 2.0}, 3, 3e-3, 6),
]


def build(root: Path, *, progress: Any = None) -> None:
    import timm
    import torch
    from timm.models import save_for_hf

    from zoo.kit.data import data_config, load_split
    from zoo.demos.digits import LABELS, PRETRAINED_CFG, train, write_digits_folders

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    folders = write_digits_folders(root)
    split = load_split(folders["train"], data_config(PRETRAINED_CFG), label_names=LABELS, num_classes=10)
    for name, arch, args, epochs, lr, seed in ANCHORS:
        torch.manual_seed(seed)
        model = timm.create_model(arch, pretrained=False, num_classes=10, pretrained_cfg_overlay=PRETRAINED_CFG,
                                  **args)
        model = train(model, split, epochs=epochs, lr=lr, seed=seed, progress=progress, name=name)
        save_for_hf(model.eval(), str(root / "members" / name), model_config={"label_names": LABELS},
                    model_args=args, safe_serialization=True)
