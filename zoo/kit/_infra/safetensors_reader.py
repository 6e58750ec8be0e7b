"""One safetensors file, read tensor by tensor, with its sha256 computed on the way.

zoo records the sha256 of every member file (``zoo.json`` must pin the exact bytes), and
members are often gigabytes. Hashing in a second pass would read every member twice, so
reads that arrive in file order feed the hash as they go; ``sha256()`` then only has to
read what was never asked for. Out-of-order reads are served too, they just do not
advance the hash.

The file is memory-mapped: the hash and the tensors read the page cache directly, with
no copy into fresh (zero-filled) memory. ``read(..., borrow=True)`` hands out views of
the map for a caller that only reads them and is done before it calls ``release``; the
default hands out copies. Either way the pages read leave this process's memory again
(``madvise(DONTNEED)``; they stay in the page cache), so a streamed merge of N members
holds what is in flight, not N files.

safetensors itself validates the file (``safe_open`` at construction: a truncated or
corrupt file fails there, with safetensors' own message). We parse the header again only
for what safetensors does not expose: each tensor's byte offsets, so that we can hash
exactly the bytes we hand out. The format is documented: 8 bytes of little-endian header
length, a JSON header, then the tensors' bytes.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from zoo.kit._infra import hash_cache

if TYPE_CHECKING:  # pragma: no cover
    import torch

# a gap this small between the last in-order read and the next one is read and hashed, not skipped
_SLACK = 1 << 20
_BLOCK = 16 << 20


@dataclass(frozen=True)
class Entry:
    shape: tuple[int, ...]
    dtype: str  # as safetensors spells it: F32, BF16, I64, ...
    start: int  # absolute byte offsets in the file
    end: int


class SafetensorsFile:
    def __init__(self, path: Path, *, hash: bool = True) -> None:
        from safetensors import safe_open

        self.path = Path(path)
        with safe_open(self.path, framework="pt"):
            pass  # validation only; raises on a truncated or corrupt file
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            head = f.read(n)
        header = json.loads(head)
        header.pop("__metadata__", None)
        base = 8 + n
        items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
        self.entries = {k: Entry(tuple(v["shape"]), v["dtype"], base + v["data_offsets"][0],
                                 base + v["data_offsets"][1]) for k, v in items}
        self.size = self.path.stat().st_size
        self._lock = threading.Lock()
        self._digest = _known_digest(self.path) if hash else None
        self._sha = hashlib.sha256(struct.pack("<Q", n) + head) if hash and not self._digest else None
        self._pos = base  # everything before this has been hashed
        self._map: mmap.mmap | None = None

    def read(self, keys: Iterable[str], *, borrow: bool = False) -> dict[str, torch.Tensor]:
        """The named tensors, read in file order (so a full read hashes the whole file).

        ``borrow=True``: views of the file's pages, valid until ``release(keys)``; the caller
        must not write to them. Otherwise: copies, and the pages are released at once.
        """
        wanted = sorted(keys, key=lambda k: self.entries[k].start)
        out = {}
        with self._lock:
            view = self._view()
            for k in wanted:
                e = self.entries[k]
                if self._sha is not None and self._pos <= e.start <= self._pos + _SLACK:
                    self._sha.update(view[self._pos:e.end])  # the gap (if any) and the tensor
                    self._pos = e.end
                    self._finish_if_done()
                t = _tensor(view[e.start:e.end], e, self.path, k)
                out[k] = t if borrow else t.clone()
        if not borrow:
            self.release(wanted)
        return out

    def release(self, keys: Iterable[str]) -> None:
        """Drop the pages behind these tensors from this process (they stay in the page cache)."""
        spans = [(self.entries[k].start, self.entries[k].end) for k in keys]
        if spans and self._map is not None:
            _drop(self._map, min(s for s, _ in spans), max(e for _, e in spans))

    def sha256(self) -> str:
        """The file's sha256; reads (and hashes) only the bytes no in-order read has covered."""
        if self._digest is None and self._sha is None:  # opened with hash=False
            return sha256_of(self.path)
        with self._lock:
            if self._digest is None:
                view = self._view()
                for start in range(self._pos, self.size, _BLOCK):
                    end = min(start + _BLOCK, self.size)
                    self._sha.update(view[start:end])
                    _drop(self._map, start, end)
                self._pos = self.size
                self._finish_if_done()
            return self._digest

    def _view(self) -> memoryview:
        if self._map is None:
            with open(self.path, "rb") as f:
                # ACCESS_COPY: a private, writable mapping (torch wants a writable buffer); writes
                # would never reach the file, and zoo makes none
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            if hasattr(mmap, "MADV_SEQUENTIAL"):
                self._map.madvise(mmap.MADV_SEQUENTIAL)
        return memoryview(self._map)

    def _finish_if_done(self) -> None:
        if self._pos >= self.size:
            self._digest, self._sha = self._sha.hexdigest(), None
            hash_cache.remember_sha256(self.path, self._digest)


def _drop(m: mmap.mmap, start: int, end: int) -> None:
    if not hasattr(mmap, "MADV_DONTNEED"):
        return  # e.g. Windows: the OS reclaims mapped file pages on its own
    first = start - start % mmap.PAGESIZE
    if end > first:
        m.madvise(mmap.MADV_DONTNEED, first, end - first)


def _known_digest(path: Path) -> str | None:
    # The Hub cache names an LFS blob by its sha256 already: reuse it instead of hashing gigabytes.
    real = Path(path).resolve()
    if len(real.name) == 64 and all(c in "0123456789abcdef" for c in real.name) and "blobs" in real.parts:
        return real.name
    return hash_cache.known_sha256(real)


def sha256_of(path: Path) -> str:
    """sha256 of a small file (or a Hub blob, whose name is its sha256)."""
    known = _known_digest(path)
    if known:
        return known
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


# floating-point dtypes as safetensors spells them
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})

_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


def torch_dtype(name: str):
    """The torch dtype of a safetensors dtype name (``F32`` -> ``torch.float32``)."""
    import torch

    return getattr(torch, _DTYPES[name])


def dtype_name(t) -> str:
    """A tensor's dtype as safetensors spells it (``torch.float32`` -> ``F32``)."""
    name = str(t.dtype).removeprefix("torch.")
    for short, long in _DTYPES.items():
        if long == name:
            return short
    return str(t.dtype)


def _tensor(buf: memoryview, e: Entry, path: Path, key: str):
    """A tensor over ``buf`` (no copy)."""
    import torch

    dtype = getattr(torch, _DTYPES.get(e.dtype, ""), None)
    if dtype is None or sys.byteorder != "little":
        # not a dtype we map (or a big-endian machine): let safetensors decode this one
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return f.get_tensor(key)
    if not len(buf):
        return torch.empty(e.shape, dtype=dtype)
    if e.start % dtype.itemsize:  # safetensors aligns tensors; an odd writer may not: copy
        buf = memoryview(bytearray(buf))
    return torch.frombuffer(buf, dtype=dtype).view(e.shape)
