"""What the task-vector merges share: which tensors are statistics, and the task vectors themselves."""

from __future__ import annotations

import torch

import zoo


def is_statistic(key: str) -> bool:
    """BatchNorm's running statistics: averaged over the members, never extrapolated along task vectors
    (base + λ·Σ(varᵢ − var₀) can be negative, and a variance must not be)."""
    return key.endswith((".running_mean", ".running_var"))


def mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(tensors).mean(dim=0)


def weighted(vectors: list[torch.Tensor], weights: list[float] | None) -> torch.Tensor:
    """Σᵢ wᵢ·τᵢ (wᵢ = 1 without weights)."""
    total = torch.zeros_like(vectors[0])
    for i, tv in enumerate(vectors):
        total += tv if weights is None else weights[i] * tv
    return total


def task_vectors(tensors: list[torch.Tensor], base: torch.Tensor) -> list[torch.Tensor]:
    return zoo.task_vectors(tensors, base)
