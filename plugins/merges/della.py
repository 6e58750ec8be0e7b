"""DELLA (Deep et al. 2024, "DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based
Sampling"), as mergekit's ``della`` defines it.

Per tensor: (1) MagPrune: each entry of τᵢ survives with a probability that grows with its magnitude's rank
within its row (dim 1: a matrix's row, a kernel's input channels; a 1-D tensor is one row), linearly from
density − ε (smallest) to density + ε (largest); the survivors are scaled so that the tensor keeps τᵢ's L1
norm (mergekit's ``rescale``; the paper scales each survivor by 1/p instead). (2) Sign election on Σᵢ wᵢτ̃ᵢ
(ties go to +); (3) the weighted mean of the wᵢτ̃ᵢ that agree with it, Σ wᵢτ̃ᵢ / Σ wᵢ over the agreeing
entries; θ = θ₀ + λ·that. The draw is seeded per (seed, member, tensor name), as DARE's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import zoo

from .dare import generator

if TYPE_CHECKING:  # pragma: no cover
    import torch


def magprune(tv: torch.Tensor, density: float, epsilon: float, gen: torch.Generator,
             rescale: bool = True) -> torch.Tensor:
    """τ̃: τ's entries kept with p = density − ε + 2ε·(rank − 1)/(row length − 1), rank of the magnitude in its
    row (1 = smallest); a row of one entry keeps it with p = density. Rescaled to τ's L1 norm."""
    import torch

    if density >= 1.0:
        return tv
    rows = tv if tv.dim() >= 2 else tv.unsqueeze(0)
    length = rows.shape[1]
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1, stable=True), dim=1).to(tv.dtype)  # 0 = smallest
    spread = ranks / (length - 1) if length > 1 else torch.full_like(ranks, 0.5)
    p = (density - epsilon) + 2 * epsilon * spread
    kept = torch.where(torch.rand(rows.shape, generator=gen).to(tv.device) < p, rows, torch.zeros_like(rows))
    kept = kept.reshape(tv.shape)
    if rescale:
        before, after = tv.abs().sum(), kept.abs().sum()
        if before >= 1e-7 and after >= 1e-7:  # mergekit's guard: an (almost) empty tensor is left as it is
            kept = kept * (before / after)
    return kept


def elect_and_mean(vectors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Σ wᵢτ̃ᵢ / Σ wᵢ over the entries whose wᵢτ̃ᵢ has the sign of Σᵢ wᵢτ̃ᵢ (+ where that sum is 0)."""
    import torch

    scaled = torch.stack([w * v for w, v in zip(weights, vectors)])
    sign = torch.where(scaled.sum(dim=0) >= 0, 1.0, -1.0).to(scaled.dtype)
    agree = (scaled.sign() == sign).to(scaled.dtype)
    w = torch.tensor(weights, dtype=scaled.dtype, device=scaled.device).view(-1, *[1] * (scaled.dim() - 1))
    divisor = (w * agree).sum(dim=0)
    divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    return (scaled * agree).sum(dim=0) / divisor


def check(options) -> None:
    if not 0.0 < options.density <= 1.0:
        raise zoo.BadInput(f"option density={options.density}: the expected fraction of each task vector kept "
                           "must be in (0, 1]")
    if options.density < 1.0 and not (0.0 < options.density - options.epsilon
                                      and options.density + options.epsilon < 1.0):
        raise zoo.BadInput(f"options density={options.density}, epsilon={options.epsilon}: the keep probabilities "
                           "density ± epsilon must lie in (0, 1); lower epsilon")


@zoo.merge_method("della", "DELLA: drop task-vector entries with probabilities by magnitude rank, rescale, elect "
                  "signs, average the agreeing entries (Deep et al. 2024, as mergekit)", needs_base=True,
                  check=check, statistics=lambda options, members: options.scale)
def della(tensors: list[torch.Tensor], base: torch.Tensor, *, key: str,
          density: float = zoo.option(0.5, "expected fraction of each task vector kept (mergekit's default "
                                      "1.0 keeps everything)", min=0, max=1),
          epsilon: float = zoo.option(0.15, "ε: keep probabilities run from density − ε (smallest magnitude of "
                                      "a row) to density + ε (largest), mergekit's default", min=0, max=1),
          scale: float = zoo.option(1.0, "λ: base + λ·(the merged task vector), mergekit's lambda"),
          weights: list[float] | None = zoo.option(None, "wᵢ of each task vector (default 1 each)"),
          rescale: bool = zoo.option(True, "scale the survivors so each task vector keeps its L1 norm"),
          seed: int = zoo.option(0, "seed of the random drop")) -> torch.Tensor:
    vectors = [magprune(tv, density, epsilon, generator(seed, i, key), rescale)
               for i, tv in enumerate(zoo.task_vectors(tensors, base))]
    merged = elect_and_mean(vectors, weights if weights is not None else [1.0] * len(vectors))
    return base + scale * merged
