"""Model-wide top-k magnitude thresholds of task vectors, found in two streamed passes.

TIES (and DARE followed by TIES) keep each task vector's k = round(density·d) largest-magnitude entries
over the whole model (d entries). Sorting the flattened model would hold every member's task vector;
instead this finds the exact k-th largest |τᵢ| by radix selection on float32 bit patterns (non-negative
floats order like their bits as integers): pass 1 counts the upper 16 bits of every |τᵢ| (32 768 bins
per member), which names the bin holding the k-th largest; pass 2 counts the lower 16 bits of the entries
in that bin, which gives the value itself. Memory: two histograms per member. torch has no streaming
quantile, so this is written here.
"""

from __future__ import annotations

from typing import Callable

import torch

import zoo

HI_BINS = 1 << 15  # |x| has a zero sign bit: the upper 16 bits of its float32 pattern are < 2^15
LO_BINS = 1 << 16


def _bits(tv: torch.Tensor) -> torch.Tensor:
    return tv.abs().to(torch.float32).flatten().contiguous().view(torch.int32).to(torch.int64)


def zero_below(tv: torch.Tensor, threshold: float) -> torch.Tensor:
    """``tv`` with entries of magnitude below ``threshold`` (a float32 value) set to zero, in place."""
    return tv.masked_fill_(tv.abs().to(torch.float32) < threshold, 0.0)


def model_thresholds(members, base, density: float, *, skip: Callable[[str], bool] = lambda key: False,
                     progress=None, transform: Callable | None = None) -> list[float]:
    """For each member, the magnitude of the k-th largest entry of its task vector over the whole model
    (tensors named by ``skip`` left out), k = round(density·d); keeping |τᵢ| ≥ it keeps the top k.
    ``transform(key, i, τᵢ)``, if given, changes each task vector first (DARE's drop)."""
    n = len(members)

    def vectors(key, tensors, b):
        # one member's task vector at a time: the counts are the same, the memory one tensor, not n
        for i, t in enumerate(tensors):
            tv = zoo.task_vectors([t], b)[0]
            yield transform(key, i, tv) if transform else tv

    hi = torch.zeros(n, HI_BINS, dtype=torch.int64)

    def count_hi(key, tensors, b):
        if skip(key):
            return
        for i, tv in enumerate(vectors(key, tensors, b)):
            hi[i] += torch.bincount(_bits(tv) >> 16, minlength=HI_BINS)

    zoo.scan_tensors(members, count_hi, base=base, progress=progress, description="ties: trim (1/2)")
    total = int(hi[0].sum())
    k = max(1, int(round(density * total)))
    # the bin of the k-th largest: the highest bin b with (entries in bins ≥ b) ≥ k
    at_or_above = hi.flip(1).cumsum(1).flip(1)  # [i, b] = entries of member i in bins ≥ b
    bins = [int((at_or_above[i] >= k).nonzero().max()) for i in range(n)]
    above = [int(at_or_above[i, b + 1]) if b + 1 < HI_BINS else 0 for i, b in enumerate(bins)]
    lo = torch.zeros(n, LO_BINS, dtype=torch.int64)

    def count_lo(key, tensors, b):
        if skip(key):
            return
        for i, tv in enumerate(vectors(key, tensors, b)):
            bits = _bits(tv)
            inside = bits[(bits >> 16) == bins[i]]
            if inside.numel():
                lo[i] += torch.bincount(inside & 0xFFFF, minlength=LO_BINS)

    zoo.scan_tensors(members, count_lo, base=base, progress=progress, description="ties: trim (2/2)")
    thresholds = []
    for i in range(n):
        need = k - above[i]  # the need-th largest inside the bin
        from_top = lo[i].flip(0).cumsum(0)
        low = LO_BINS - 1 - int((from_top >= need).nonzero().min())
        pattern = torch.tensor([(bins[i] << 16) | low], dtype=torch.int64).to(torch.int32)
        thresholds.append(float(pattern.view(torch.float32)))
    return thresholds
