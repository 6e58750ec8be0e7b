"""Known sha256 digests of member files, kept in zoo's cache folder so unchanged files are not hashed again.

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
import os
import time
from pathlib import Path

from zoo.kit._infra.cache import root, write_atomically

RACY_SECONDS = 2.0


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
        write_atomically(_entry(path), digest)
    except OSError:
        pass
