"""zoo's cache folder ($ZOO_CACHE, default ~/.cache/zoo): built demo zoos, known file hashes, and
the model names the installed timm knows, and their classifiers' names.

File hashes are remembered by what ``stat`` says about the file — device, inode, size,
mtime and ctime — the way git's index and DVC skip re-hashing unchanged files. Any write
to the file changes its ctime (which no tool can set back), so a hit means the same bytes.
Re-running ``zoo combine`` on the same local checkpoints then reads them once, for the
merge, instead of also hashing gigabytes. A file changed in the last few seconds is not
remembered: timestamps are coarser than writes (git calls this "racy"), so it may still
be changing under an unchanged stat.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

RACY_SECONDS = 2.0


def root() -> Path:
    return Path(os.environ.get("ZOO_CACHE", Path.home() / ".cache" / "zoo"))


def _entry(path: Path) -> Path:
    st = os.stat(path)
    key = f"{Path(path).resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    return root() / "sha256" / hashlib.sha256(key.encode()).hexdigest()[:40]


def known_sha256(path: Path) -> str | None:
    try:
        digest = _entry(path).read_text().strip()
    except OSError:
        return None
    return digest if len(digest) == 64 else None


def remember_sha256(path: Path, digest: str) -> None:
    """Best effort: a cache that cannot be written only costs time next run."""
    try:
        st = os.stat(path)
        if time.time() - max(st.st_mtime, st.st_ctime) < RACY_SECONDS:
            return
        _write(_entry(path), digest)
    except OSError:
        pass


def _timm_models_file(what: str = "models.txt") -> Path | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return root() / f"timm-{version('timm')}-{what}"
    except PackageNotFoundError:
        return None


def known_timm_models() -> set[str]:
    """The model names timm listed when last imported (for the installed timm version), or none.

    Importing timm takes ~3 s (torchvision pulls in torch._dynamo); checking a member's
    architecture should not, when the answer is already known. Only positive answers are
    taken from here: a name not listed is looked up in timm itself.
    """
    path = _timm_models_file()
    try:
        return set(path.read_text().split()) if path else set()
    except OSError:
        return set()


def remember_timm_models(names: list[str]) -> None:
    path = _timm_models_file()
    if path is not None:
        try:
            _write(path, "\n".join(sorted(names)))
        except OSError:
            pass  # best effort, as above


def known_timm_classifiers() -> dict[str, list[str]]:
    """Each architecture's classifier module names, as timm's pretrained cfg gave them (for the
    installed timm version): finding a bare weights file's class count then needs no timm import."""
    path = _timm_models_file("classifiers.json")
    try:
        data = json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, list) and all(isinstance(n, str) for n in v)}


def remember_timm_classifiers(arch: str, names: list[str]) -> None:
    path = _timm_models_file("classifiers.json")
    if path is not None:
        try:
            _write(path, json.dumps({**known_timm_classifiers(), arch: list(names)}, indent=0, sort_keys=True))
        except OSError:
            pass  # best effort, as above


def _write(path: Path, text: str) -> None:
    """Write atomically: concurrent zoo runs see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
