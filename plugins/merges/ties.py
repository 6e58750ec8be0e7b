"""TIES-merging (Yadav et al., NeurIPS 2023, "Resolving Interference When Merging Models").

(1) trim each task vector to its largest-magnitude entries — over the whole model (the paper, its code
and FusionBench: ``trim=model``, the default; ``zoo.model_thresholds``) or tensor by tensor (mergekit:
``trim=tensor``, mergekit's count max(1, ⌊density·n⌋)); (2) elect a sign per entry, that of Σᵢ τ̂ᵢ;
(3) disjoint mean: the mean of the τ̂ᵢ that are non-zero and agree with it. θ = base + λ·τ_m. BatchNorm's
running statistics move toward the members' mean by λ (the contract's ``statistics=``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import zoo

if TYPE_CHECKING:  # pragma: no cover
    import torch


def elected_sign(stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2 on the task vectors stacked as ``[members, ...]``: (the elected sign of Σᵢ τ̂ᵢ per entry, a 0
    given the majority sign of the tensor's entries; Σᵢ τ̂ᵢ itself)."""
    total = stacked.sum(dim=0)
    sign = total.sign()
    majority = 1.0 if sign.sum() >= 0 else -1.0
    sign.add_(majority / 2).sign_()  # a 0 becomes the majority's sign, ±1 stay: two passes, no mask
    return sign, total


def elect_and_average(stacked: torch.Tensor) -> torch.Tensor:
    """Steps 2 and 3 on the trimmed task vectors stacked as ``[members, ...]``: the elected sign of Σᵢ τ̂ᵢ
    per entry, then the mean of the agreeing non-zero τ̂ᵢ. ``stacked`` is overwritten (memory: the stack and
    a few tensors of one member's size; every pass over the stack is in place).

    An entry whose sum is exactly 0 gets the majority sign of the tensor's entries (the paper's code
    resolves zero signs the same way, over the whole model; here per tensor, which streaming allows).

    The bytes are those of the plain form (Σᵢ τ̂ᵢ·[τ̂ᵢ agrees] / max(1, count), torch's sum over the stack):
    max(s·τ̂ᵢ, 0) is |τ̂ᵢ| where τ̂ᵢ agrees with the sign s and 0 elsewhere, and s·Σᵢ|τ̂ᵢ| is the signed sum
    exactly (rounding is symmetric in sign); an entry where none agrees is Σᵢ τ̂ᵢ itself, a zero of the
    same sign as the plain form's (every τ̂ᵢ there is ±0, or the sum would have a sign some τ̂ᵢ shares).
    """
    import torch

    sign, total = elected_sign(stacked)
    stacked.mul_(sign).clamp_(min=0)  # |τ̂ᵢ| where it agrees, 0 elsewhere
    merged = stacked.sum(dim=0).mul_(sign)
    count = stacked.sign_().sum(dim=0)  # exact in float32 up to 2^24 members
    none = count == 0
    merged.div_(count.clamp_(min=1))
    return torch.where(none, total, merged, out=merged)


class Stack:
    """One buffer the stacked task vectors of every tensor are written into, so a merge allocates it once:
    a fresh stack per tensor costs its page faults, about a third of the merge's arithmetic on CPU
    (bench/RESULTS.md). ``prepare`` returns one (with the model-wide thresholds, if any); the merge contract
    calls ``close()`` when the merge ends, which frees it."""

    def __init__(self, thresholds: list[float] | None = None):
        self.thresholds = thresholds
        self._buffer: torch.Tensor | None = None

    def empty(self, members: int, like: torch.Tensor) -> torch.Tensor:
        """An uninitialised ``[members, *like.shape]`` tensor of ``like``'s dtype and device, in the buffer."""
        import torch

        n = members * like.numel()
        b = self._buffer
        if b is None or b.numel() < n or b.dtype != like.dtype or b.device != like.device:
            self._buffer = None  # the old one is freed before the new one is allocated
            self._buffer = b = torch.empty(n, dtype=like.dtype, device=like.device)
        return b[:n].view(members, *like.shape)

    def task_vectors(self, tensors: list[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
        """``torch.stack(zoo.task_vectors(tensors, base))``, written straight into the buffer."""
        import torch

        out = self.empty(len(tensors), base)
        for i, t in enumerate(tensors):
            torch.sub(t, base, out=out[i])
        return out

    def close(self) -> None:
        self._buffer = None


def check(options) -> None:
    if not 0.0 < options.density <= 1.0:
        raise zoo.BadInput(f"option density={options.density}: the fraction of each task vector kept must be "
                           "in (0, 1] (1 keeps everything)")


def prepare(members, base, options, ctx) -> Stack:
    if options.trim == "model" and options.density < 1.0:
        return Stack(zoo.model_thresholds(members, base, options.density, progress=ctx.progress,
                                          description="ties: trim", device=ctx.device))
    return Stack()


@zoo.merge_method("ties", "TIES-merging: trim task vectors, elect signs, average the agreeing entries "
                  "(Yadav et al. 2023)", needs_base=True, prepare=prepare, check=check,
                  statistics=lambda options, members: options.scale,
                  report=lambda stats, options: {"trim": options.trim} | (
                      {"thresholds": stats.thresholds} if stats.thresholds is not None else {}))
def ties(tensors: list[torch.Tensor], base: torch.Tensor, *, stats: Stack | None,
         density: float = zoo.option(0.2, "k: fraction of each task vector kept, by magnitude", min=0, max=1),
         scale: float = zoo.option(1.0, "λ: base + λ·(the merged task vector)"),
         trim: Literal["model", "tensor"] = zoo.option(
             "model", "where the top-k magnitudes are taken: model (round(density·d) of the whole flattened "
             "model's d entries, as the paper and FusionBench) or tensor (max(1, ⌊density·n⌋) of each tensor's n, "
             "as mergekit)")) -> torch.Tensor:
    stats = Stack() if stats is None else stats  # called directly, without prepare
    stacked = stats.task_vectors(tensors, base)
    for i, tv in enumerate(stacked):  # 1. trim
        if stats.thresholds is not None:
            zoo.zero_below(tv, stats.thresholds[i])
        elif density < 1.0:
            tv.copy_(zoo.keep_largest(tv, density))
    return elect_and_average(stacked).mul_(scale).add_(base)  # 2, 3, then base + λ·merged, in place
