"""The target data ``zoo select`` scores members on, checked before any member is read, in the words of the
option it came from (``--target-data``, ``--val-data``, ``--source-data``, or a zoo's data): a failure
there is the data's, and no member should be blamed or skipped for it."""

from __future__ import annotations

import os
from pathlib import Path

from zoo.kit.data.splits import IMG_EXTENSIONS
from zoo.kit.strategy.errors import BadInput


def classes_of(folder: str, given: str | None = None) -> list[str]:
    """The class folders of ``folder`` (sorted, as timm's ImageFolder orders them), each holding images.
    ``given``: how the user gave it, for the messages (default ``--target-data FOLDER``)."""
    path = Path(folder).expanduser()
    shown = given or f"--target-data {folder}"
    if not path.is_dir():
        raise BadInput(f"{shown}: no such folder; give an image folder with one sub-folder of images per class")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise BadInput(f"{shown}: found {len(classes)} class folder(s); need at least two "
                       "(one sub-folder of images per class)")
    empty = [c for c in classes if not _has_images(path / c)]
    if empty:
        listed = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise BadInput(f"{shown}: class folder(s) {listed} hold no images "
                       f"({', '.join(sorted(IMG_EXTENSIONS))}); put each class's images in its folder, "
                       "or remove the empty ones")
    return classes


def _has_images(folder: Path) -> bool:
    # followlinks: as timm's folder reader, which finds the images below a class folder at any depth
    return any(os.path.splitext(f)[1].lower() in IMG_EXTENSIONS
               for _, _, files in os.walk(folder, followlinks=True) for f in files)
