"""Model breadcrumbs (Davari & Belilovsky 2023, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse
Masks"), as mergekit's ``breadcrumbs`` defines it.

Per tensor, each task vector τᵢ (n entries) keeps int(density·n) entries: those just below its int(γ·n)
largest magnitudes (the largest are outliers, the smallest left out are noise); where density + γ > 1, fewer
outliers are dropped (the int(density·n) smallest are kept). Then
θ = θ₀ + λ·Σᵢ wᵢτ̃ᵢ (mergekit: no consensus, no normalisation, λ = 1). BatchNorm's running statistics move
toward the members' mean as far as the weights move (λ·Σwᵢ, clamped to 1), as in task arithmetic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import zoo

from .arithmetic import reach

if TYPE_CHECKING:  # pragma: no cover
    import torch


def crumbs(tv: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """τ with its int(γ·n) largest and its n − int(density·n) − int(γ·n) smallest magnitudes zeroed.

    As mergekit 0.1.5 (older mergekit kept ``indices[bottom:-top]``, nothing when int(γ·n) = 0)."""
    import torch

    if density >= 1.0:
        return tv
    n = tv.numel()
    top, bottom = int(gamma * n), n - int(density * n) - int(gamma * n)
    if bottom < 0:  # density + γ > 1: fewer outliers, so that density·n entries survive
        top, bottom = top + bottom, 0
    order = torch.sort(tv.abs().flatten()).indices  # ascending magnitude; ties as torch.sort leaves them (mergekit)
    keep = torch.zeros(n, dtype=torch.bool, device=tv.device)
    keep[order[bottom:n - top]] = True
    return torch.where(keep.view(tv.shape), tv, torch.zeros_like(tv))


def check(options) -> None:
    if not 0.0 < options.density <= 1.0:
        raise zoo.BadInput(f"option density={options.density}: the fraction of each task vector kept must be in "
                           "(0, 1]")
    if not 0.0 <= options.gamma < 1.0:
        raise zoo.BadInput(f"option gamma={options.gamma}: the fraction of largest magnitudes dropped must be in "
                           "[0, 1)")


@zoo.merge_method("breadcrumbs", "Model breadcrumbs: drop each task vector's largest and smallest magnitudes per "
                  "tensor, add the rest (Davari & Belilovsky 2023, as mergekit)", needs_base=True, check=check,
                  statistics=reach)
def breadcrumbs(tensors: list[torch.Tensor], base: torch.Tensor, *,
                density: float = zoo.option(0.9, "fraction of each task vector's entries kept: the largest magnitudes "
                                            "below the outliers (mergekit's default 1.0 keeps everything)",
                                            min=0, max=1),
                gamma: float = zoo.option(0.01, "γ: fraction of the largest magnitudes dropped (mergekit's "
                                          "default)", min=0, max=1),
                scale: float = zoo.option(1.0, "λ: base + λ·Σ wᵢτ̃ᵢ (mergekit's lambda)"),
                weights: list[float] | None = zoo.option(None, "wᵢ of each task vector (default 1 each)"),
                ) -> torch.Tensor:
    import torch

    stacked = torch.stack([crumbs(tv, density, gamma) for tv in zoo.task_vectors(tensors, base)])
    if weights is not None:
        stacked *= torch.tensor(weights, dtype=stacked.dtype, device=stacked.device).view(-1, *[1] * base.dim())
    return base + scale * stacked.sum(dim=0)  # summed over the stack, mergekit's order: the same bits
