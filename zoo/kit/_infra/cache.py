"""zoo's cache folder: $ZOO_CACHE, default ~/.cache/zoo, and an atomic write into it.

What lives there: built demo zoos (``zoo.demos``), cached features (``zoo.kit.measure.features``),
measurements kept by what they were computed from (``zoo.kit.measure.cached``: ``measures/``),
known file hashes (``hash_cache``) and the names the installed timm knows (``timm_names``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def root() -> Path:
    return Path(os.environ.get("ZOO_CACHE", Path.home() / ".cache" / "zoo"))


def write_atomically(path: Path, text: str) -> None:
    """Write atomically: concurrent zoo runs see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
