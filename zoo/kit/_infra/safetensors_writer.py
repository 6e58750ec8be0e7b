"""Write a safetensors model tensor by tensor, as each is finished, into files laid out in advance.

A merged model's tensors have the names, shapes and dtypes of the reference member's, so the whole
output — which shard holds which tensor, every header, every byte offset — is known before the first
tensor is computed. :class:`StreamWriter` writes the headers, reserves each file's full size on disk
(a full disk fails at once, naming the size needed), then writes every tensor into its place as soon as
it is finished (``os.pwrite``), so nothing of the output stays in memory.

The files are the very bytes ``huggingface_hub.save_torch_state_dict`` (which zoo used before, and still
uses for outputs held in memory) writes for the same state dict:

- which tensor goes into which shard is decided by huggingface_hub's own
  ``split_torch_state_dict_into_shards``, given tensors on the ``meta`` device (shapes and dtypes, no data);
- within a file, the order of the tensors (safetensors sorts by dtype, then name) is taken from
  safetensors itself, by serializing one-element stand-ins of the same names and dtypes;
- the rest is the documented format: 8 bytes of little-endian header length, the JSON header
  (compact, padded with spaces to a multiple of 8 bytes), then the tensors' bytes back to back.

tests/test_writer.py checks the bytes against ``save_torch_state_dict`` for mixed dtypes and shards.
:class:`StoredState` is what a streamed merge returns: a mapping over the finished files that reads
a tensor only when asked.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import weakref
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from zoo.kit.strategy.errors import BadInput, ZooError
from zoo.kit._infra.safetensors_reader import dtype_name as _st_dtype
from zoo.kit._infra.safetensors_reader import torch_dtype as _torch_dtype

if TYPE_CHECKING:  # pragma: no cover
    import torch

# huggingface_hub's names for the output files (constants.SAFETENSORS_WEIGHTS_FILE_PATTERN)
PATTERN = "model{suffix}.safetensors"
INDEX = PATTERN.format(suffix="") + ".index.json"  # how save_torch_state_dict names a sharded output's index
METADATA = {"format": "pt"}  # one key only: outputs must be byte-identical run to run

_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
             "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class Spec:
    """One output tensor before it exists: its name, shape and dtype (as safetensors spells it)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _ITEMSIZE[self.dtype]


@dataclass(frozen=True)
class Shard:
    filename: str
    header: bytes  # the 8-byte length and the padded JSON header
    spans: dict[str, tuple[int, int]]  # name -> absolute byte range in the file

    @property
    def size(self) -> int:
        return len(self.header) + sum(e - s for s, e in self.spans.values())


@dataclass(frozen=True)
class Layout:
    """Every output file, header and offset, computed from the tensors' specs alone."""

    specs: tuple[Spec, ...]
    shards: tuple[Shard, ...]
    index: dict[str, Any] | None  # the ``model.safetensors.index.json`` of a sharded output
    max_shard_size: int | str

    @property
    def size(self) -> int:
        return sum(s.size for s in self.shards)

    @classmethod
    def plan(cls, specs: Sequence[Spec], *, max_shard_size: int | str) -> Layout:
        import torch
        from huggingface_hub import split_torch_state_dict_into_shards

        specs = tuple(specs)
        meta = {s.name: torch.empty(s.shape, dtype=_torch_dtype(s.dtype), device="meta") for s in specs}
        split = split_torch_state_dict_into_shards(meta, filename_pattern=PATTERN, max_shard_size=max_shard_size)
        by_name = {s.name: s for s in specs}
        shards = tuple(_shard(filename, [by_name[n] for n in names])
                       for filename, names in split.filename_to_tensors.items())
        index = ({"metadata": {**split.metadata, **METADATA}, "weight_map": split.tensor_to_filename}
                 if split.is_sharded else None)
        return cls(specs=specs, shards=shards, index=index, max_shard_size=max_shard_size)


def _shard(filename: str, specs: list[Spec]) -> Shard:
    import torch
    from safetensors.torch import save

    # safetensors decides the order of a file's tensors (by dtype, then name): ask it, with stand-ins
    stand_ins = {s.name: torch.zeros(1, dtype=_torch_dtype(s.dtype)) for s in specs}
    probe = save(stand_ins, metadata=METADATA)
    n = int.from_bytes(probe[:8], "little")
    order = [k for k in json.loads(probe[8:8 + n]) if k != "__metadata__"]
    by_name = {s.name: s for s in specs}
    header: dict[str, Any] = {"__metadata__": METADATA}
    offset = 0
    for name in order:
        s = by_name[name]
        header[name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    start = 8 + len(text)
    spans = {k: (start + v["data_offsets"][0], start + v["data_offsets"][1])
             for k, v in header.items() if k != "__metadata__"}
    return Shard(filename, len(text).to_bytes(8, "little") + text, spans)


class StreamWriter:
    """Writes a :class:`Layout` into ``folder``: ``put(name, tensor)`` as each tensor is finished, then
    ``finish()`` for the :class:`StoredState` over the files. ``abort()`` (or a failure) removes them."""

    def __init__(self, folder: Path, layout: Layout) -> None:
        self.folder = Path(folder)
        self.layout = layout
        self._where = {name: (i, span) for i, sh in enumerate(layout.shards) for name, span in sh.spans.items()}
        self._specs = {s.name: s for s in layout.specs}
        self._left = set(self._where)
        self._fds: list[int] = []
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._reserve()
        except BaseException:
            self.abort()
            raise

    def _reserve(self) -> None:
        need = self.layout.size
        check_space(self.folder, need)
        for shard in self.layout.shards:
            fd = os.open(self.folder / shard.filename, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds.append(fd)
            try:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, shard.size)  # the blocks themselves, not only a size
                else:  # pragma: no cover - e.g. macOS: a sparse file of the right size
                    os.ftruncate(fd, shard.size)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise NotEnoughDisk(need, shutil.disk_usage(self.folder).free, self.folder) from None
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                os.ftruncate(fd, shard.size)  # a file system without fallocate
            _pwrite_all(fd, memoryview(shard.header), 0)

    def put(self, name: str, tensor: torch.Tensor) -> None:
        """Write one finished tensor into its place; it must have the planned shape and dtype."""
        if name not in self._where:
            raise ZooError(f"the output has no tensor {name!r} planned (or it was written twice)")
        spec = self._specs[name]
        if tuple(tensor.shape) != spec.shape or _st_dtype(tensor) != spec.dtype:
            raise ZooError(f"tensor {name!r} is {list(tensor.shape)} {_st_dtype(tensor)}, but the output "
                           f"planned {list(spec.shape)} {spec.dtype}")
        i, (start, end) = self._where[name]
        if end > start:
            import torch

            data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            _pwrite_all(self._fds[i], memoryview(data).cast("B"), start)
        self._left.discard(name)
        del self._where[name]

    def finish(self, order: Iterable[str] | None = None) -> StoredState:
        """Check every planned tensor was written, close the files, and return them as a mapping."""
        if self._left:
            missing = sorted(self._left)
            self.abort()
            raise ZooError(f"the output was not finished: {len(missing)} tensor(s) never written, "
                           f"e.g. {missing[0]!r}")
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        names = list(order) if order is not None else [s.name for s in self.layout.specs]
        return StoredState(self.folder, self.layout, names)

    def abort(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        for shard in self.layout.shards:
            (self.folder / shard.filename).unlink(missing_ok=True)


def check_space(folder: Path, need: int) -> None:
    """Refuse to start writing ``need`` bytes into ``folder`` when its disk has less free space."""
    free = shutil.disk_usage(folder).free
    if need > free:
        raise NotEnoughDisk(need, free, Path(folder))


class NotEnoughDisk(BadInput):
    def __init__(self, need: int, free: int, where: Path) -> None:
        # name the folder the user chose, not zoo's hidden staging or temporary folders inside it
        shown = next((p for p in Path(where).parents if not p.name.startswith(".")), Path(where).parent)
        super().__init__(f"not enough disk space for the output: it needs {_gib(need)}, {_gib(free)} is free "
                         f"on the disk of {shown}; free some space or write --out to another disk")


class StoredState(MutableMapping):
    """A finished streamed output: ``{name: tensor}`` read from its files on demand (each read is a copy
    the caller owns). Setting or deleting a key keeps the change in memory; :meth:`adopt` moves the untouched
    files into an output folder. The files are removed when the mapping is garbage-collected unless adopted."""

    def __init__(self, folder: Path, layout: Layout, names: Sequence[str]) -> None:
        from zoo.kit._infra.safetensors_reader import SafetensorsFile

        self.layout = layout
        self.paths = [Path(folder) / sh.filename for sh in layout.shards]
        self._files = {}
        for path in self.paths:
            f = SafetensorsFile(path, hash=False)
            for k in f.entries:
                self._files[k] = f
        self._order = list(names)
        self._changed: dict[str, Any] = {}
        self._deleted: set[str] = set()
        self._cleanup = weakref.finalize(self, _remove, list(self.paths))

    # ---- the mapping ----
    def __getitem__(self, key: str):
        if key in self._changed:
            return self._changed[key]
        if key in self._deleted or key not in self._files:
            raise KeyError(key)
        return self._files[key].read([key])[key]

    def __setitem__(self, key: str, value) -> None:
        if key not in self._files and key not in self._changed:
            self._order.append(key)
        self._changed[key] = value
        self._deleted.discard(key)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._changed.pop(key, None)
        self._deleted.add(key)
        self._order.remove(key)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._order))

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._changed or (key in self._files and key not in self._deleted)

    # ---- the files ----
    def float_dtypes(self) -> set[str]:
        """The dtypes of its floating-point tensors (as safetensors spells them)."""
        from zoo.kit._infra.safetensors_reader import FLOAT_DTYPES

        return {s.dtype for s in self.layout.specs if s.dtype in FLOAT_DTYPES}

    @property
    def untouched(self) -> bool:
        """True while the files are exactly the output: nothing set or deleted since the merge wrote them."""
        return not self._changed and not self._deleted

    def adopt(self, folder: Path, *, max_shard_size: int | str) -> bool:
        """Move the files (and the shard index) into ``folder`` if they are what ``save_torch_state_dict``
        would write there with ``max_shard_size``; False (nothing moved) otherwise."""
        if not self.untouched or not self._cleanup.alive:
            return False
        if max_shard_size != self.layout.max_shard_size and \
                Layout.plan(self.layout.specs, max_shard_size=max_shard_size).shards != self.layout.shards:
            return False
        for path in self.paths:
            os.replace(path, Path(folder) / path.name)
        if self.layout.index is not None:
            with open(Path(folder) / INDEX, "w") as f:
                json.dump(self.layout.index, f, indent=2)
        self._cleanup.detach()
        self._files = {}
        self._order = []
        return True

    def close(self) -> None:
        """Remove the files now (instead of when the mapping is collected)."""
        self._files = {}
        self._cleanup()


def _remove(paths: list[Path]) -> None:
    for p in paths:
        try:
            p.unlink()
        except OSError:
            pass


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"

