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


def elect_and_average(trimmed: list[torch.Tensor]) -> torch.Tensor:
    """Steps 2 and 3: the elected sign of Σᵢ τ̂ᵢ per entry, then the mean of the agreeing non-zero τ̂ᵢ.

    An entry whose sum is exactly 0 gets the majority sign of the tensor's entries (the paper's code
    resolves zero signs the same way, over the whole model; here per tensor, which streaming allows).
    """
    stacked = torch.stack(trimmed)
    sign = torch.sign(stacked.sum(dim=0))
    majority = 1.0 if sign.sum() >= 0 else -1.0
    sign = torch.where(sign == 0, torch.full_like(sign, majority), sign)
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    return (stacked * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)


def check(options) -> None:
    if not 0.0 < options.density <= 1.0:
        raise zoo.BadInput(f"option density={options.density}: the fraction of each task vector kept must be "
                           "in (0, 1] (1 keeps everything)")


def prepare(members, base, options, ctx):
    """trim=model: each member's magnitude threshold over the whole model, in two streamed passes."""
    if options.trim != "model" or options.density >= 1.0:
        return None
    return trim.model_thresholds(members, base, options.density, skip=is_statistic, progress=ctx.progress)


def trimmed(vectors: list[torch.Tensor], density: float, thresholds: list[float] | None) -> list[torch.Tensor]:
    """Step 1: each τᵢ with all but its largest-magnitude entries zeroed (model-wide thresholds, if given)."""
    if thresholds is not None:
        return [trim.keep_at_least(tv, t) for tv, t in zip(vectors, thresholds)]
    return [zoo.keep_largest(tv, density) for tv in vectors]


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
    merged = elect_and_average(trimmed(zoo.task_vectors(tensors, base), density, stats))
    return base + scale * merged
