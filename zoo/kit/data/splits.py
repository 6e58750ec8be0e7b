"""Labelled image data for evaluation and training, decoded and transformed once, then kept as tensors.

Preprocessing always comes from the member's pretrained config through ``timm.data``
(``resolve_data_config`` + ``create_transform``): never hand-written. A split is
cached in memory by (source, its files' fingerprint, data config, label order), so a
greedy soup that evaluates twenty candidates decodes the images once. The label order is a
model's (``label_names``); ``common_labels`` checks that members share one label space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from zoo.kit.strategy.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    import torch

IMG_EXTENSIONS = {".png", ".jpg", ".jpeg"}  # what timm's folder reader accepts
TIMM_PREFIXES = ("torch/", "hfds/", "hfids/", "tfds/", "wds/")

_CACHE: dict[tuple, Split] = {}


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) float32, already normalised
    targets: torch.Tensor  # (N,) int64, indices into the model's classes
    classes: list[str]  # the model's label names (or indices as strings)
    source: str

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def batches(self, batch_size: int, *, shuffle: bool = False, generator=None):
        import torch

        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            yield self.images[idx], self.targets[idx]


def data_config(pretrained_cfg: dict[str, Any]) -> dict[str, Any]:
    """timm's eval data config for a member: input size, interpolation, crop, mean and std."""
    from timm.data import resolve_data_config

    return resolve_data_config({}, pretrained_cfg=pretrained_cfg)


def label_names(model: Any) -> list[str]:
    """A member's (or model's) class names: its ``label_names``, else its class indices as strings."""
    return [str(n) for n in (model.label_names or range(model.num_classes))]


def common_labels(members: Sequence[Any], *, why: str, role: str = "members",
                  labels: Sequence[str] | None = None) -> list[str]:
    """The one label space of ``members``: the first's classes (or ``labels``, when they come from elsewhere,
    e.g. a label map), which every other member must have in the same order. Otherwise a :class:`BadInput`
    naming the first two that differ, with ``why`` the strategy needs one label space (and what to do)."""
    first = members[0]
    own = list(labels) if labels is not None else label_names(first)
    for m in members[1:]:
        theirs = label_names(m)
        if theirs != own:
            raise BadInput(f"{role} {first.name} and {m.name} have different label spaces ({len(own)} classes: "
                           f"{_few(own)} vs {len(theirs)}: {_few(theirs)}); {why}")
    return own


def _few(names: list[str]) -> str:
    return ", ".join(names[:4]) + ("…" if len(names) > 4 else "")


def _fingerprint(root: Path) -> tuple:
    count, latest, size = 0, 0.0, 0
    for dirpath, _, files in os.walk(root, followlinks=True):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            count, latest, size = count + 1, max(latest, st.st_mtime), size + st.st_size
    return count, latest, size


def _label_map(found: list[str], label_names: list[str] | None, num_classes: int, source: str) -> list[int]:
    """Map the data's class names to the model's class indices, by name when the model has names."""
    if label_names:
        index = {str(n): i for i, n in enumerate(label_names)}
        unknown = [c for c in found if c not in index]
        if unknown:
            raise BadInput(f"data {source}: classes {unknown[:5]} are not among the model's labels "
                           f"({', '.join(map(str, label_names[:12]))}{'…' if len(label_names) > 12 else ''}); "
                           "name the class folders after the model's labels")
        return [index[c] for c in found]
    if len(found) > num_classes:
        raise BadInput(f"data {source}: {len(found)} classes but the model has {num_classes} outputs")
    return list(range(len(found)))


def load_split(spec: str | os.PathLike, cfg: dict[str, Any], *, label_names: list[str] | None,
               num_classes: int, progress: Any = None) -> Split:
    """A labelled split from an image folder (class per sub-folder) or a timm dataset spec."""
    import torch
    from timm.data import create_dataset, create_transform

    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise BadInput(f"data {spec}: no class sub-folders; expected one sub-folder of images per class")
        if not any(os.path.splitext(f)[1].lower() in IMG_EXTENSIONS  # followlinks: as timm's folder reader
                   for _, _, files in os.walk(path, followlinks=True) for f in files):
            raise BadInput(f"data {spec}: no images found (extensions {', '.join(sorted(IMG_EXTENSIONS))})")
        key = ("dir", str(path.resolve()), _fingerprint(path))
        make = lambda: create_dataset("", root=str(path), split="validation", search_split=False,  # noqa: E731
                                      class_map={c: i for i, c in enumerate(classes)})
    elif spec.startswith(TIMM_PREFIXES):
        name, _, split = spec.partition("@")
        root = os.environ.get("ZOO_DATA_DIR", str(Path.home() / ".cache" / "zoo" / "data"))
        key = ("timm", spec, root)
        classes = None
        make = lambda: create_dataset(name, root=root, split=split or "validation", download=True)  # noqa: E731
    else:
        raise BadInput(f"data {spec}: no such folder; give an image folder (one sub-folder per class) "
                       f"or a timm dataset spec ({', '.join(TIMM_PREFIXES)}...)")
    frozen_cfg = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in cfg.items()))
    key = key + (frozen_cfg, tuple(label_names or ()), num_classes)
    if key in _CACHE:
        return _CACHE[key]
    try:
        dataset = make()
    except BadInput:
        raise
    except Exception as e:
        raise BadInput(f"data {spec}: cannot open it as a dataset ({type(e).__name__}: {e})") from None
    if len(dataset) == 0:
        raise BadInput(f"data {spec}: no images found (extensions {', '.join(sorted(IMG_EXTENSIONS))})")
    if classes is None:
        classes = [str(c) for c in getattr(dataset.reader, "class_to_idx", {}) or range(num_classes)]
    mapping = _label_map(classes, label_names, num_classes, spec)
    dataset.transform = create_transform(**cfg)
    images, targets = [], []
    task = progress.task(f"decoding {Path(spec).name or spec}", total=len(dataset)) if progress else None
    for i in range(len(dataset)):
        try:
            img, target = _item(dataset, i)
        except Exception as e:
            name = dataset.filename(i) if hasattr(dataset, "filename") else f"item {i}"
            raise BadInput(f"data {spec}: cannot read {name} ({type(e).__name__}: {e})") from None
        images.append(img)
        targets.append(mapping[int(target)])
        if task:
            task.advance(1)
    if task:
        task.close()
    split = Split(torch.stack(images), torch.tensor(targets, dtype=torch.long),
                  [str(n) for n in (label_names or range(num_classes))], spec)
    _CACHE[key] = split
    return split


def _item(dataset, i: int):
    """One (image tensor, target). Folder images are opened here so that a broken file is an error:
    timm's ImageDataset would log it and silently substitute the next image, changing the data."""
    samples = getattr(getattr(dataset, "reader", None), "samples", None)
    if samples is None:
        return dataset[i]
    from PIL import Image

    path, target = samples[i]
    with Image.open(path) as img:
        return dataset.transform(img.convert("RGB")), target


def augmented_loader(folder: str, cfg: dict[str, Any], classes: list[str], options: dict[str, Any], *,
                     batch_size: int, generator, drop_last: bool, device):
    """One epoch of an image folder through timm's *training* transform, for fine-tuning with augmentation.

    ``options`` go to ``timm.data.create_transform`` (``hflip``, ``scale``, ``auto_augment``). Images
    are decoded by worker processes; torch's DataLoader draws the order and every worker's seeds
    (torch, ``random``, numpy — timm's transforms use ``random``) from ``generator``, so an epoch
    is reproducible from the generator's state. At least one worker always: in the main process
    the transforms would draw from the global ``random``, which a checkpoint does not hold.
    """
    import torch
    from timm.data import create_dataset, create_transform

    dataset = create_dataset("", root=str(folder), split="train", search_split=False,
                             class_map={c: i for i, c in enumerate(classes)})
    dataset.transform = create_transform(**cfg, is_training=True, **options)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=generator, drop_last=drop_last,
        num_workers=max(1, min(4, (os.cpu_count() or 2) - 1)), pin_memory=device.type == "cuda")
