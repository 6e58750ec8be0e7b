"""Task arithmetic (Ilharco et al., ICLR 2023, "Editing Models with Task Arithmetic")."""

from __future__ import annotations

from typing import TYPE_CHECKING

import zoo

from .common import weighted

if TYPE_CHECKING:  # pragma: no cover
    import torch


def reach(options, members: int) -> float:
    """How far the weights move from the base: λ·Σwᵢ (BatchNorm's statistics move as far, up to the mean)."""
    return options.scale * (sum(options.weights) if options.weights else members)


@zoo.merge_method("task-arithmetic", "base + λ·Σ wᵢ·(θᵢ − base): add the members' task vectors (Ilharco et al. 2023)",
                  needs_base=True, statistics=reach)
def task_arithmetic(tensors: list[torch.Tensor], base: torch.Tensor, *,
                    scale: float = zoo.option(0.3, "λ: base + λ·Σ wᵢτᵢ (the paper picks it on held-out data "
                                              "from 0…1: sweep it with -o scale=0:1:0.1)"),
                    weights: list[float] | None = zoo.option(None, "wᵢ of each task vector (default 1 each)"),
                    ) -> torch.Tensor:
    return base + scale * weighted(zoo.task_vectors(tensors, base), weights)
