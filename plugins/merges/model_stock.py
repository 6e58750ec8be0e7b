"""Model Stock (Jang et al., ECCV 2024, "Model Stock: All We Need Is Just a Few Fine-Tuned Models").

Per tensor: cos θ = the mean over pairs i < j of cos(τᵢ, τⱼ); t = N·cos θ / (1 + (N−1)·cos θ);
θ = t·mean(θᵢ) + (1−t)·base. Identical fine-tunes (cos θ = 1) give t = 1: the fine-tune itself. BatchNorm's
running statistics take the t of their layer's weight (a first streamed pass computes every t).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import zoo

from .common import mean

if TYPE_CHECKING:  # pragma: no cover
    import torch

EPS = 1e-12


def interpolation_ratio(vectors: list[torch.Tensor]) -> float:
    """t of one tensor from its task vectors. cos θ is clamped to [0, 1]: the formula assumes fine-tunes
    that agree at least a little (for cos θ < 0, t leaves [0, 1] and reaches a pole at −1/(N−1)); an
    unchanged tensor (all τᵢ = 0) gives t = 0, the base, which is also every member."""
    n = len(vectors)
    flat = [v.flatten().double() for v in vectors]
    norms = [float(f.norm()) for f in flat]
    if max(norms) <= EPS:
        return 0.0
    cosines = [float(flat[i] @ flat[j]) / max(norms[i] * norms[j], EPS)
               for i, j in itertools.combinations(range(n), 2)]
    cos = min(1.0, max(0.0, sum(cosines) / len(cosines)))
    return n * cos / (1.0 + (n - 1) * cos)


def layer_of(key: str) -> str:
    return key.rsplit(".", 1)[0]


def prepare(members, base, options, ctx) -> dict[str, float]:
    """t of every tensor, in a first streamed pass: BatchNorm's running statistics take the t of their
    layer's weight (their own angle says nothing about the layer, and a layer whose statistics and weights
    sit at different points between base and average is a mismatched layer)."""
    ratios: dict[str, float] = {}

    def record(tensors, b, *, key):
        ratios[key] = interpolation_ratio(zoo.task_vectors(tensors, b))

    zoo.scan_tensors(members, record, base=base, progress=ctx.progress, description="model-stock: angles")
    return ratios


@zoo.merge_method("model-stock", "Model Stock: per layer, move from the base towards the members' average by a "
                  "ratio set by the angle between their task vectors (Jang et al. 2024)",
                  needs_base=True, min_members=2, prepare=prepare, statistics="merge",
                  report=lambda stats, options: {"ratios": stats})
def model_stock(tensors: list[torch.Tensor], base: torch.Tensor, *, key: str, stats) -> torch.Tensor:
    t = stats.get(f"{layer_of(key)}.weight", stats[key]) if zoo.is_statistic(key) else stats[key]
    return t * mean(tensors) + (1.0 - t) * base
