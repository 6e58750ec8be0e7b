"""TIES-merging (Yadav et al., NeurIPS 2023, "Resolving Interference When Merging Models").

(1) trim each task vector to its largest-magnitude entries — over the whole model (the paper, its code
and FusionBench: ``trim=model``, the default) or tensor by tensor (mergekit: ``trim=tensor``);
(2) elect a sign per entry, that of Σᵢ τ̂ᵢ; (3) disjoint mean: the mean of the τ̂ᵢ that are non-zero
and agree with it. θ = base + λ·τ_m.
"""

from __future__ import annotations

from typing import Literal

import torch

import zoo

from . import trim
from .common import is_statistic, statistics_toward


def elect_and_average(stacked: torch.Tensor) -> torch.Tensor:
    """Steps 2 and 3 on the trimmed task vectors stacked as ``[members, ...]``: the elected sign of Σᵢ τ̂ᵢ
    per entry, then the mean of the agreeing non-zero τ̂ᵢ. ``stacked`` is overwritten (memory: the stack,
    one tensor of signs and boolean masks, instead of four stacks).

    An entry whose sum is exactly 0 gets the majority sign of the tensor's entries (the paper's code
    resolves zero signs the same way, over the whole model; here per tensor, which streaming allows).
    """
    sign = stacked.sum(dim=0).sign_()
    majority = 1.0 if sign.sum() >= 0 else -1.0
    sign.masked_fill_(sign == 0, majority)
    negative = sign < 0
    agree = torch.gt(stacked, 0)  # then, row by row: the same sign as elected, and not zero
    for i in range(len(stacked)):
        torch.where(negative, stacked[i] < 0, agree[i], out=agree[i])
    count = agree.sum(dim=0, dtype=torch.int32).clamp_(min=1)
    return stacked.mul_(agree).sum(dim=0).div_(count)


def stacked_task_vectors(tensors: list[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
    """``torch.stack(zoo.task_vectors(tensors, base))``, written straight into the stack."""
    out = torch.empty((len(tensors), *base.shape), dtype=base.dtype, device=base.device)
    for i, t in enumerate(tensors):
        torch.sub(t, base, out=out[i])
    return out


def check(options) -> None:
    if not 0.0 < options.density <= 1.0:
        raise zoo.BadInput(f"option density={options.density}: the fraction of each task vector kept must be "
                           "in (0, 1] (1 keeps everything)")


def prepare(members, base, options, ctx):
    """trim=model: each member's magnitude threshold over the whole model, in two streamed passes."""
    if options.trim != "model" or options.density >= 1.0:
        return None
    return trim.model_thresholds(members, base, options.density, skip=is_statistic, progress=ctx.progress)


def trim_rows(stacked: torch.Tensor, density: float, thresholds: list[float] | None) -> torch.Tensor:
    """Step 1, in place: each τᵢ with all but its largest-magnitude entries zeroed (model-wide thresholds,
    if given; else the top ``density`` of each tensor)."""
    for i, row in enumerate(stacked):
        if thresholds is not None:
            trim.zero_below(row, thresholds[i])
        elif density < 1.0:
            row.copy_(zoo.keep_largest(row, density))
    return stacked


@zoo.merge_method("ties", "TIES-merging: trim task vectors, elect signs, average the agreeing entries "
                  "(Yadav et al. 2023)", needs_base=True, prepare=prepare, check=check,
                  report=lambda stats, options: {"trim": options.trim} | (
                      {"thresholds": stats} if stats is not None else {}))
def ties(tensors: list[torch.Tensor], base: torch.Tensor, *, key: str, stats,
         density: float = zoo.option(0.2, "k: fraction of each task vector kept, by magnitude", min=0, max=1),
         scale: float = zoo.option(1.0, "λ: base + λ·(the merged task vector)"),
         trim: Literal["model", "tensor"] = zoo.option(
             "model", "where the top-k magnitudes are taken: model (over the whole flattened model, as the paper "
             "and FusionBench) or tensor (each tensor on its own, as mergekit)")) -> torch.Tensor:
    if is_statistic(key):
        return statistics_toward(tensors, base, scale)
    merged = elect_and_average(trim_rows(stacked_task_vectors(tensors, base), density, stats))
    return merged.mul_(scale).add_(base)  # base + λ·merged, in place
