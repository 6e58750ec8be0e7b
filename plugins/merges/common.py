"""What the task-vector merges share: sums of vectors."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch


def mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    import torch

    return torch.stack(tensors).mean(dim=0)


def weighted(vectors: list[torch.Tensor], weights: list[float] | None) -> torch.Tensor:
    """Σᵢ wᵢ·τᵢ (wᵢ = 1 without weights)."""
    import torch

    total = torch.zeros_like(vectors[0])
    for i, tv in enumerate(vectors):
        total += tv if weights is None else weights[i] * tv
    return total
