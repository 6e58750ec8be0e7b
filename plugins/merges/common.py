"""What the task-vector merges share: which tensors are statistics and how they move, sums of vectors."""

from __future__ import annotations

import torch



def is_statistic(key: str) -> bool:
    """BatchNorm's running statistics: never extrapolated along task vectors (base + λ·Σ(varᵢ − var₀) can
    be negative, and a variance must not be); see :func:`statistics_toward`."""
    return key.endswith((".running_mean", ".running_var"))


def statistics_toward(tensors: list[torch.Tensor], base: torch.Tensor, t: float) -> torch.Tensor:
    """base + t·(mean of the members − base), t clamped to [0, 1]: the statistics move from the base's
    towards the members' average as far as the method moves the weights (t = λ·Σwᵢ for task arithmetic,
    λ for TIES), never beyond it — a convex combination, so a variance stays positive, and λ = 0 gives
    the base exactly, statistics included."""
    t = min(1.0, max(0.0, t))
    return base + t * (mean(tensors) - base)


def mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(tensors).mean(dim=0)


def weighted(vectors: list[torch.Tensor], weights: list[float] | None) -> torch.Tensor:
    """Σᵢ wᵢ·τᵢ (wᵢ = 1 without weights)."""
    total = torch.zeros_like(vectors[0])
    for i, tv in enumerate(vectors):
        total += tv if weights is None else weights[i] * tv
    return total
