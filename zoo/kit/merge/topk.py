"""The top-k of task vectors by magnitude, over the whole model or tensor by tensor: the trim of TIES and DARE.

:func:`model_thresholds` finds each member's exact k-th largest |τᵢ| over the whole model (k = round(density·d),
d entries) without holding the model: a radix selection on float32 bit patterns (non-negative floats order
like their bits as integers). Pass 1 counts the upper 16 bits of every |τᵢ| (32 768 bins per member), which
names the bin holding the k-th largest; pass 2 looks again only at the entries in that bin and counts their
lower 16 bits, which gives the value itself. torch has neither a streaming quantile nor a k-th value of data
it cannot hold, hence this file. Pass 1 reads the upper halves of the float32 words as int16 (a view, the
sign bit masked off: 1.6–1.9× faster than ``abs()``, int64 and a shift); pass 2 counts every entry into
the bin's 65 536 values plus one bin below and one above (a clamp, no selection of the bin's entries);
both write into scratch tensors kept from tensor to tensor and split bincount among torch's threads
(together 30–45% less CPU time than a fresh tensor per step, bench/RESULTS.md).

The tensor-wise trim is ``zoo.kit.tensors.weights.keep_largest`` (mergekit's count).
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from zoo.kit.members.member import Member

HI_BINS = 1 << 15  # |x| has a zero sign bit: the upper 16 bits of its float32 pattern are < 2^15
LO_BINS = 1 << 16


def model_count(density: float, n: int) -> int:
    """Entries a model-wide trim keeps of ``n``: round(density·n), at least one (the paper's code and FusionBench
    take the top density of the flattened model)."""
    return max(1, int(round(density * n)))


def zero_below(tv: torch.Tensor, threshold: float) -> torch.Tensor:
    """``tv`` with entries of magnitude below ``threshold`` (a float32 value) set to zero, in place."""
    import torch

    if tv.dtype != torch.float32:  # compared as float32, as the thresholds were counted
        return tv.masked_fill_(tv.abs().to(torch.float32) < threshold, 0.0)
    if threshold <= 0.0:  # nothing is below
        return tv
    # |x| < threshold ⟺ |x| ≤ the float32 just below it: hardshrink's test, in one pass (abs, compare and
    # fill are three, and two temporaries); the zeros it writes are +0, as masked_fill's
    below = torch.nextafter(torch.tensor(threshold, dtype=torch.float32), torch.tensor(0.0))
    return torch.hardshrink(tv, float(below), out=tv)


class _Buffers:
    """Scratch tensors reused from tensor to tensor: a fresh one per tensor and member costs its page faults,
    a third of a pass's CPU time on the benchmark's members (bench/RESULTS.md)."""

    def __init__(self):
        self._held: dict[str, torch.Tensor] = {}

    def get(self, name: str, n: int, dtype, device) -> torch.Tensor:
        """An uninitialised flat tensor of ``n`` entries."""
        import torch

        t = self._held.get(name)
        if t is None or t.numel() < n or t.dtype != dtype or t.device != device:
            self._held.pop(name, None)  # the old one is freed before the new one is allocated
            t = self._held[name] = torch.empty(n, dtype=dtype, device=device)
        return t[:n]

    def task_vector(self, t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.sub(t, b, out=self.get("tv", t.numel(), t.dtype, t.device).view(t.shape))

    def upper(self, tv: torch.Tensor) -> torch.Tensor:
        """The upper 16 bits of |tv|'s float32 patterns as int16, flat."""
        import torch

        words = _words(tv)
        if sys.byteorder == "little":  # the upper half of word i is int16 number 2i+1
            out = self.get("upper", words.numel(), torch.int16, words.device)
            return torch.bitwise_and(words.view(torch.int16)[1::2], 0x7FFF, out=out)
        return ((words >> 16) & 0x7FFF).to(torch.int16)  # pragma: no cover - no big-endian machine to test on

    def bin_index(self, tv: torch.Tensor, bin: int) -> torch.Tensor:
        """Per entry of ``tv``: 0 below upper-16-bit ``bin``, 1 + the lower 16 bits of |tv|'s pattern inside it,
        LO_BINS + 1 above (|tv|'s pattern less the bin's first, less one, clamped): counting them needs no
        selection of the bin's entries (no nonzero, no sync on a GPU)."""
        import torch

        words = _words(tv)
        index = torch.bitwise_and(words, 0x7FFFFFFF, out=self.get("index", words.numel(), torch.int32, words.device))
        return index.sub_((bin << 16) - 1).clamp_(0, LO_BINS + 1)


class _Counter:
    """``torch.bincount``, on the CPU split among torch's threads (a context: the threads end with it). torch's
    CPU bincount is a single-threaded loop, the one step of the passes that does not use every core."""

    def __init__(self, device):
        import torch

        self.threads = torch.get_num_threads()
        cpu = device is None or torch.device(device).type == "cpu"
        self.pool = ThreadPoolExecutor(self.threads, "zoo-bincount") if cpu and self.threads > 1 else None

    def __call__(self, x: torch.Tensor, minlength: int) -> torch.Tensor:
        import torch

        if self.pool is None or x.numel() < (1 << 20):
            return torch.bincount(x, minlength=minlength)
        parts = list(self.pool.map(lambda part: torch.bincount(part, minlength=minlength), x.chunk(self.threads)))
        return sum(parts[1:], parts[0])  # integer counts: the same in any order

    def __enter__(self) -> _Counter:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _words(tv: torch.Tensor) -> torch.Tensor:
    """``tv``'s float32 bit patterns as int32, flat (a view when tv is float32 and contiguous)."""
    import torch

    return tv.to(torch.float32).reshape(-1).view(torch.int32)


def model_thresholds(members: Sequence[Member], base: Member, density: float, *,
                     skip: Callable[[str], bool] | None = None, progress=None,
                     transform: Callable | None = None, description: str = "top-k", device=None) -> list[float]:
    """For each member, the magnitude of the k-th largest entry of its task vector over the whole model,
    k = :func:`model_count` (density, d); keeping |τᵢ| ≥ it (:func:`zero_below`) keeps the top k (and any
    entry tied with the k-th). Tensors named by ``skip`` (default: BatchNorm's running statistics,
    ``zoo.kit.tensors.weights.is_statistic``) are left out. ``transform(key, i, τᵢ)``, if given, changes each task vector
    first (DARE's drop). Two streamed passes (``scan_tensors``); memory: two histograms per member."""
    import torch

    from zoo.kit.tensors.weights import is_statistic
    from zoo.kit.tensors.stream import scan_tensors

    skip = is_statistic if skip is None else skip
    n = len(members)

    buffers = _Buffers()

    def vectors(key, tensors, b):
        # one member's task vector at a time: the counts are the same, the memory one tensor, not n
        for i, t in enumerate(tensors):
            yield transform(key, i, t - b) if transform else buffers.task_vector(t, b)

    with _Counter(device) as count:
        hi = torch.zeros(n, HI_BINS, dtype=torch.int64, device=device)

        def count_hi(tensors, b, *, key):
            if skip(key):
                return
            for i, tv in enumerate(vectors(key, tensors, b)):
                hi[i] += count(buffers.upper(tv), HI_BINS)

        scan_tensors(members, count_hi, base=base, progress=progress, description=f"{description} (1/2)",
                     device=device)
        k = model_count(density, int(hi[0].sum()))
        # the bin of the k-th largest: the highest bin b with (entries in bins ≥ b) ≥ k
        at_or_above = hi.flip(1).cumsum(1).flip(1)  # [i, b] = entries of member i in bins ≥ b
        bins = [int((at_or_above[i] >= k).nonzero().max()) for i in range(n)]
        above = [int(at_or_above[i, b + 1]) if b + 1 < HI_BINS else 0 for i, b in enumerate(bins)]
        lo = torch.zeros(n, LO_BINS, dtype=torch.int64, device=device)

        def count_lo(tensors, b, *, key):
            if skip(key):
                return
            for i, tv in enumerate(vectors(key, tensors, b)):
                lo[i] += count(buffers.bin_index(tv, bins[i]), LO_BINS + 2)[1:-1]

        scan_tensors(members, count_lo, base=base, progress=progress, description=f"{description} (2/2)",
                     device=device)
        thresholds = []
        for i in range(n):
            need = k - above[i]  # the need-th largest inside the bin
            from_top = lo[i].flip(0).cumsum(0)
            low = LO_BINS - 1 - int((from_top >= need).nonzero().min())
            pattern = torch.tensor([(bins[i] << 16) | low], dtype=torch.int64).to(torch.int32)
            thresholds.append(float(pattern.view(torch.float32)))
        return thresholds

