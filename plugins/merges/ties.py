"""TIES-merging (Yadav et al., NeurIPS 2023, "Resolving Interference When Merging Models").

(1) trim each task vector to its largest-magnitude entries — over the whole model (the paper, its code
and FusionBench: ``trim=model``, the default; ``zoo.model_thresholds``) or tensor by tensor (mergekit:
``trim=tensor``, mergekit's count max(1, ⌊density·n⌋)); (2) elect a sign per entry, that of Σᵢ τ̂ᵢ;
(3) disjoint mean: the mean of the τ̂ᵢ that are non-zero and agree with it. θ = base + λ·τ_m. BatchNorm's
running statistics move toward the members' mean by λ (the contract's ``statistics=``).
"""

from __future__ import annotations

from typing import Literal

import torch

import zoo


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
    """``torch.stack(zoo.task_vectors(tensors, base))``, written straight into the stack (one copy, not two)."""
    out = torch.empty((len(tensors), *base.shape), dtype=base.dtype, device=base.device)
    for i, t in enumerate(tensors):
        torch.sub(t, base, out=out[i])
    return out


def check(options) -> None:
    if not 0.0 < options.density <= 1.0:
        raise zoo.BadInput(f"option density={options.density}: the fraction of each task vector kept must be "
                           "in (0, 1] (1 keeps everything)")


def prepare(members, base, options, ctx):
    if options.trim == "model" and options.density < 1.0:
        return zoo.model_thresholds(members, base, options.density, progress=ctx.progress, description="ties: trim")


@zoo.merge_method("ties", "TIES-merging: trim task vectors, elect signs, average the agreeing entries "
                  "(Yadav et al. 2023)", needs_base=True, prepare=prepare, check=check,
                  statistics=lambda options, members: options.scale,
                  report=lambda stats, options: {"trim": options.trim} | (
                      {"thresholds": stats} if stats is not None else {}))
def ties(tensors: list[torch.Tensor], base: torch.Tensor, *, stats,
         density: float = zoo.option(0.2, "k: fraction of each task vector kept, by magnitude", min=0, max=1),
         scale: float = zoo.option(1.0, "λ: base + λ·(the merged task vector)"),
         trim: Literal["model", "tensor"] = zoo.option(
             "model", "where the top-k magnitudes are taken: model (round(density·d) of the whole flattened "
             "model's d entries, as the paper and FusionBench) or tensor (max(1, ⌊density·n⌋) of each tensor's n, "
             "as mergekit)")) -> torch.Tensor:
    stacked = stacked_task_vectors(tensors, base)
    for i, tv in enumerate(stacked):  # 1. trim
        if stats is not None:
            zoo.zero_below(tv, stats[i])
        elif density < 1.0:
            tv.copy_(zoo.keep_largest(tv, density))
    return elect_and_average(stacked).mul_(scale).add_(base)  # 2, 3, then base + λ·merged, in place
