"""Where an output's local members and data were on this machine: a record in zoo's cache, never published.

An output's ``zoo.json`` names no path of the machine it was made on (``zoo.kit._infra.scrub_paths``): the output is a
Hub repo, meant to be pushed. So that ``zoo reproduce OUT`` works where the output was made without naming
every local member and data folder again, saving an output also writes, in zoo's own cache,
``$ZOO_CACHE/outputs/<sha256 of its zoo.json>.json``: the absolute paths of the local members, the base and
the data folders the run read, and a fingerprint of each data folder.

Why zoo's cache and not a hidden file in the output: everything in an output folder travels with it —
copied to another machine, uploaded by ``hf upload`` (which skips no dot-file but ``.git`` and its own
cache) — and a path of this machine must never go with it. Keyed by the bytes of ``zoo.json``, the record
still finds an output that was moved or copied on this machine, and an edited ``zoo.json`` finds none.

A record is only a hint: ``zoo reproduce`` uses a member's recorded path only when its files still have the
sha256 ``zoo.json`` pins, and a data folder only when its fingerprint (every file's name, size and
modification time) is the recorded one; otherwise it asks for ``--member NAME=PATH`` or ``--eval-data DIR``
as it does without a record.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_LOCAL = "local-dir:"
DATA_KINDS = ("eval", "train", "ood")


@dataclass
class Record:
    """The paths one output was made from: ``members`` in zoo.json's order (None: a Hub member), the
    ``base``, and ``data[kind] = (path, fingerprint)``."""

    members: list[str | None] = field(default_factory=list)
    base: str | None = None
    data: dict[str, tuple[str, str]] = field(default_factory=dict)


def _where(zoo_json: bytes) -> Path:
    from zoo.kit._infra import cache

    return cache.root() / "outputs" / f"{hashlib.sha256(zoo_json).hexdigest()}.json"


def remember(out: Path, recipe: dict[str, Any]) -> None:
    """Record where the local inputs of the output in ``out`` are (``recipe``: its zoo.json before paths
    were scrubbed). Best effort: an unwritable cache only means reproduce asks for the paths."""
    try:
        zoo_json = (Path(out) / "zoo.json").read_bytes()
        record = {
            "members": [_local_path(m) for m in recipe.get("members") or []],
            "base": _local_path(recipe["base"]) if recipe.get("base") else None,
            "data": {kind: [path, fingerprint(Path(path))] for kind in DATA_KINDS
                     if (path := _data_path(recipe.get(f"{kind}_data")))},
        }
        from zoo.kit._infra import cache

        cache.write_atomically(_where(zoo_json), json.dumps(record, indent=1))  # atomic, as zoo's other cache entries
    except OSError:
        pass


def recall(zoo_json: bytes) -> Record | None:
    """The record of the output whose zoo.json is ``zoo_json``, if this machine made it."""
    try:
        raw = json.loads(_where(zoo_json).read_text())
        return Record(members=list(raw["members"]), base=raw.get("base"),
                      data={k: (v[0], v[1]) for k, v in raw.get("data", {}).items()})
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def fingerprint(path: Path) -> str:
    """What a data folder holds, cheaply: every file's relative name, size and modification time (as git's
    index tells an unchanged file by its stat), hashed. Reading every image would cost what the run cost."""
    digest = hashlib.sha256()
    if path.is_file():
        st = path.stat()
        digest.update(f"{st.st_size}|{st.st_mtime_ns}".encode())
        return digest.hexdigest()
    for folder, dirs, files in sorted(os.walk(path, followlinks=True)):
        dirs.sort()
        for name in sorted(files):
            f = Path(folder) / name
            st = f.stat()
            digest.update(f"{f.relative_to(path).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _local_path(provenance: dict[str, Any]) -> str | None:
    """A local member's absolute path (None for a Hub member, or one that is not on disk)."""
    spec = str(provenance.get("spec") or "")
    if provenance.get("repo_id") or not spec:
        return None
    path = Path(spec[len(_LOCAL):] if spec.startswith(_LOCAL) else spec).expanduser()
    return os.path.abspath(path) if path.exists() else None


def _data_path(value: Any) -> str | None:
    from zoo.kit.data.splits import TIMM_PREFIXES

    if not isinstance(value, str) or value.startswith(TIMM_PREFIXES) or not Path(value).exists():
        return None  # a timm dataset spec (zoo.json keeps it as it is), or a dict of tasks
    return os.path.abspath(Path(value).expanduser())
