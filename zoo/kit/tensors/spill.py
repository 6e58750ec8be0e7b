"""Per-member statistics kept on disk and read back one tensor at a time.

Methods that weigh tensors by something computed from data (Fisher information, RegMean's Gram
matrices) need one statistic per member and tensor: held in memory, that is one more model per member.
``Spill`` writes each member's statistics to a safetensors file in a temporary folder as soon as they
are computed, and the merge function reads back only the tensor it is merging::

    spill = zoo.Spill()
    for i, member in enumerate(members):
        spill.put(i, diagonal_fisher(...))        # one member's statistics in memory at a time
    ...
    fishers = spill.get(key)                      # [F_i[key] for every member], or None
    spill.close()                                 # the folder is removed (MergeMethod does it for stats)

The folder is made in the system's temporary directory (``TMPDIR``), never next to the output.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch


class Spill:
    """Statistics of several members (``put(index, {key: tensor})``), read back per key (``get``)."""

    def __init__(self, prefix: str = "zoo-stats-"):
        self.folder = Path(tempfile.mkdtemp(prefix=prefix))
        self._files: dict[int, Any] = {}
        self._keys: dict[int, set[str]] = {}

    def put(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        path = self.folder / f"{index}.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
        self._keys[index] = set(tensors)
        self._files.pop(index, None)

    def _open(self, index: int):
        from safetensors import safe_open

        if index not in self._files:
            self._files[index] = safe_open(str(self.folder / f"{index}.safetensors"), framework="pt")
        return self._files[index]

    def get(self, key: str) -> list[torch.Tensor] | None:
        """``key``'s statistic of every member, in member order; None if a member has none for it."""
        indices = sorted(self._keys)
        if not indices or any(key not in self._keys[i] for i in indices):
            return None
        return [self._open(i).get_tensor(key) for i in indices]

    def close(self) -> None:
        self._files.clear()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
