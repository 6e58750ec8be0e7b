"""Task arithmetic (Ilharco et al., ICLR 2023, "Editing Models with Task Arithmetic")."""

from __future__ import annotations

import torch

import zoo

from .common import is_statistic, statistics_toward, weighted


@zoo.merge_method("task-arithmetic", "base + λ·Σ wᵢ·(θᵢ − base): add the members' task vectors (Ilharco et al. 2023)",
                  needs_base=True)
def task_arithmetic(tensors: list[torch.Tensor], base: torch.Tensor, *, key: str,
                    scale: float = zoo.option(0.3, "λ: base + λ·Σ wᵢτᵢ (the paper picks it on held-out data "
                                              "from 0…1: sweep it with -o scale=0:1:0.1)"),
                    weights: list[float] | None = zoo.option(None, "wᵢ of each task vector (default 1 each)"),
                    ) -> torch.Tensor:
    if is_statistic(key):
        return statistics_toward(tensors, base, scale * (sum(weights) if weights else len(tensors)))
    return base + scale * weighted(zoo.task_vectors(tensors, base), weights)
