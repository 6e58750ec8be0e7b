"""TSV-M (Gargiulo et al., CVPR 2025, "Task Singular Vectors: Reducing Task Interference in Model Merging").

Per 2-D matrix: each task vector τᵢ = UᵢΣᵢVᵢᵀ keeps its top k = int(r·(1/N)) singular triplets (r = min of the
shape, N members); the kept factors are laid side by side in r slots (U = [U₁[:, :k] … U_N[:, :k] 0],
Σ and Vᵀ likewise, unused slots zero), U and Vᵀ are replaced by their polar factors (orthonormal), and
τ_m = U Σ Vᵀ. Every other tensor gets the mean of the τᵢ. θ = θ₀ + α·τ_m, α = ``scale`` = 1.

This is FusionBench's ``compute_and_sum_svd_mem_reduction`` (the authors' code), tensor for tensor: the
same k (``int(r * (1 / N))``, which is ⌊r/N⌋ but for float rounding), the same zero-padded layout (so the
polar factors are those of the same matrices), every 2-D tensor including embeddings and heads,
convolutions and 1-D tensors averaged. ``convs=true`` also treats convolution kernels [out, in, k…] as
[out, in·k…] matrices: zoo's departure, off by default. When N > r, k = 0: nothing of the matrix is kept
and it stays the base's (the reference code's behaviour); zoo names those matrices in the log and report.
BatchNorm's running statistics are averaged like any 1-D tensor and move by min(1, α), never beyond the mean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import zoo

if TYPE_CHECKING:  # pragma: no cover
    import torch


def matrix_shape(key: str, shape: tuple[int, ...], convs: bool) -> tuple[int, int] | None:
    """The 2-D shape a tensor is merged as, or None for the tensors that are averaged: 2-D tensors as they
    are; with ``convs``, a convolution kernel (a ``…weight`` of 3 to 5 dims: [out, in, k…]) as [out, in·k…]."""
    if len(shape) == 2:
        return shape[0], shape[1]
    if convs and 3 <= len(shape) <= 5 and key.endswith("weight"):
        rest = 1
        for d in shape[1:]:
            rest *= d
        return shape[0], rest
    return None


def mean(vectors: list[torch.Tensor]) -> torch.Tensor:
    """The mean of the task vectors, accumulated member by member (the reference code's order for TSV-M and
    Iso-CTS, so the same bits)."""
    out = vectors[0].clone()
    for i, v in enumerate(vectors[1:], start=2):
        out += (v - out) / i
    return out


def reach(key: str, scale: float) -> float:
    """α for a weight; for a BatchNorm running statistic, α clamped to [0, 1]: its mean moves from the base's
    toward the members' mean, never beyond (a variance extrapolated along task vectors can turn negative)."""
    return min(1.0, max(0.0, scale)) if zoo.is_statistic(key) else scale


def polar_parts(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """P and Qᵀ of A = P S Qᵀ (thin SVD): P Qᵀ is A's orthonormal polar factor, the nearest matrix with
    orthonormal columns (rows)."""
    import torch

    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p, qh


def polar(a: torch.Tensor) -> torch.Tensor:
    """A's orthonormal polar factor P Qᵀ."""
    p, qh = polar_parts(a)
    return p @ qh


def kept(rank: int, members: int) -> int:
    """k, the singular triplets each member keeps: int(r·(1/N)) as the reference code computes it."""
    return int(rank * (1 / members))


def tsv_matrix(vectors: list[torch.Tensor]) -> torch.Tensor:
    """τ_m of one 2-D matrix from the members' task vectors (same shape [m, n])."""
    import torch

    m, n = vectors[0].shape
    r = min(m, n)
    k = kept(r, len(vectors))
    if k == 0:  # nothing to keep: the matrix stays the base's
        return vectors[0].new_zeros(m, n)
    u_all, s_all, vh_all = vectors[0].new_zeros(m, r), vectors[0].new_zeros(r), vectors[0].new_zeros(r, n)
    for i, tv in enumerate(vectors):
        u, s, vh = torch.linalg.svd(tv, full_matrices=False)
        slot = slice(i * k, (i + 1) * k)
        u_all[:, slot], s_all[slot], vh_all[slot, :] = u[:, :k], s[:k], vh[:k, :]
    # P_U Q_Uᵀ Σ P_V Q_Vᵀ as one chained product, the reference code's order: the same bits as FusionBench's
    return torch.linalg.multi_dot((*polar_parts(u_all), torch.diag(s_all), *polar_parts(vh_all)))


class Dropped:
    """What ``prepare`` found: the matrices with k = 0 (N > r), which keep the base's values."""

    def __init__(self, keys: list[str]):
        self.keys = keys


def prepare(members, base, options, ctx) -> Dropped:
    n = len(members)
    keys = [k for k in base.keys() if (mat := matrix_shape(k, tuple(base.shape(k)), options.convs)) is not None
            and kept(min(mat), n) == 0]
    if keys:
        ctx.log(f"tsv: {len(keys)} matrix(es) too small for {n} members ({', '.join(keys[:5])}"
                f"{' …' if len(keys) > 5 else ''}): k = int(r/N) = 0 singular triplets each, so they keep the "
                "base's values (as the reference code)")
    return Dropped(keys)


@zoo.merge_method("tsv", "TSV-M: per matrix, each task vector's top ⌊r/N⌋ singular triplets side by side, "
                  "orthonormalised; other tensors averaged (Gargiulo et al. 2025)", needs_base=True,
                  prepare=prepare, statistics="merge",
                  report=lambda stats, options: {"base_kept": stats.keys} if stats.keys else {})
def tsv(tensors: list[torch.Tensor], base: torch.Tensor, *, key: str, stats: Dropped | None,
        scale: float = zoo.option(1.0, "α: base + α·(the merged task vector)"),
        convs: bool = zoo.option(False, "also merge convolution kernels (out × in × k × k) as out × (in·k·k) matrices "
                                 "(a departure: the papers' code averages them)")) -> torch.Tensor:
    vectors = zoo.task_vectors(tensors, base)
    mat = matrix_shape(key, tuple(base.shape), convs)
    if mat is None:
        merged = mean(vectors)
    else:
        merged = tsv_matrix([v.reshape(mat) for v in vectors]).reshape(base.shape)
    return merged * reach(key, scale) + base
