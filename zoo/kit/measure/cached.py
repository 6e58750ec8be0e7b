"""Measurements kept on disk: a JSON-able result under ``$ZOO_CACHE/measures/KIND/``, keyed by what it was
computed from — the members' exact files (``member_identity``), the data folders' contents
(``data_identity``) and the settings. A second run on the same inputs reads it back and computes nothing
(``zoo inspect``'s barriers); a changed file, data folder or setting is another key."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from zoo.kit._infra import cache

MEASURES_VERSION = 1  # bump when what a cached measurement means changes: old entries are then ignored


def member_identity(member) -> dict[str, Any]:
    """What a member computes: its files' digests (``provenance()``), architecture and constructor arguments."""
    return {"files": member.provenance()["files"], "arch": member.architecture, "model_args": member.model_args}


def data_identity(data: str | os.PathLike | None) -> list | None:
    """A data folder as its resolved path and a fingerprint of its files (count, newest change, total size); a
    timm dataset spec as itself."""
    from zoo.kit.data.splits import _fingerprint

    if data is None:
        return None
    path = Path(data).expanduser()
    return [str(path.resolve()), list(_fingerprint(path))] if path.is_dir() else [str(data)]


def cached_json(kind: str, key: dict[str, Any], compute: Callable[[], Any]) -> tuple[Any, bool]:
    """``(compute(), False)``, kept on disk under ``key``; or ``(the kept result, True)``. A damaged entry is
    computed again, never trusted."""
    digest = hashlib.sha256(json.dumps({"v": MEASURES_VERSION, **key}, sort_keys=True, default=str).encode())
    path = cache.root() / "measures" / kind / f"{digest.hexdigest()[:32]}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text()), True
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
    value = compute()
    cache.write_atomically(path, json.dumps(value))  # concurrent runs see no half-written entry
    return value, False
