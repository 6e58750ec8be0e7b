"""A member's pooled pre-logits features and logits on some labelled data, cached on disk.

Features are timm's ``forward_head(forward_features(x), pre_logits=True)`` — the same place
for every architecture, so members of different families compare. They are computed once per
(member's exact bytes, data files, preprocessing, label order) and kept as safetensors under
``$ZOO_CACHE/features/``; a second ``zoo select`` on the same data does no forward pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.kit._infra import cache

FEATURES_VERSION = 2  # bump when what is extracted changes: old entries are then ignored


@dataclass
class Extracted:
    features: Any  # torch (N, D) float32
    logits: Any  # torch (N, Z) float32, or None for a member without a classifier
    labels: Any  # torch (N,) int64, indices into ``classes``
    classes: list[str]
    cached: bool  # True when read from disk: no forward pass was run
    seconds: float  # time spent computing (0 when cached)

    @property
    def probs(self):
        """Softmax over the member's own classes (None without a classifier)."""
        return None if self.logits is None else self.logits.float().softmax(dim=1)


def _key(member, data: str, cfg: dict[str, Any], classes: list[str], device=None) -> str:
    from zoo.kit.measure.cached import data_identity, member_identity

    blob = json.dumps({"v": FEATURES_VERSION, **member_identity(member), "data": data_identity(data), "cfg": cfg,
                       "classes": classes,
                       # CUDA extracts under float16 autocast (zoo.kit.train.device.autocast): other numbers
                       # than the CPU's, so a ranking never mixes features of the two
                       **({"precision": "cuda-float16"} if getattr(device, "type", "cpu") == "cuda" else {})},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _path(key: str) -> Path:
    return cache.root() / "features" / f"{key}.safetensors"


def extract(member, data: str, classes: list[str], device, *, batch_size: int = 128, progress=None) -> Extracted:
    """Features, softmax and labels of ``member`` on the image folder ``data`` (cached)."""
    import time

    import torch
    from safetensors.torch import load_file, save_file

    from zoo.kit.data import data_config, load_split
    from zoo.kit.train.device import autocast

    cfg = data_config(member.pretrained_cfg)
    path = _path(_key(member, data, cfg, classes, device))
    if path.is_file():
        try:
            t = load_file(path)
            return Extracted(t["features"], t.get("logits"), t["labels"], classes, cached=True, seconds=0.0)
        except Exception:  # a damaged entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    start = time.perf_counter()  # decoding counts: it is part of what a cache hit saves
    split = load_split(data, cfg, label_names=classes, num_classes=len(classes), progress=progress)
    model = member.create_model().to(device)
    feats, logits = [], []
    task = progress.task(f"features of {member.name}", total=len(split)) if progress else None
    with torch.inference_mode(), autocast(device):
        for images, _ in split.batches(batch_size):
            x = model.forward_features(images.to(device, non_blocking=True))
            feats.append(model.forward_head(x, pre_logits=True).float().flatten(1).cpu())
            if member.num_classes > 0:
                logits.append(model.forward_head(x).float().cpu())
            if task:
                task.advance(len(images))
    if task:
        task.close()
    out = {"features": torch.cat(feats), "labels": split.targets.clone()}
    if logits:
        out["logits"] = torch.cat(logits)
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(out, tmp, metadata={"member": member.name, "data": str(data)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return Extracted(out["features"], out.get("logits"), out["labels"], classes, cached=False, seconds=seconds)
