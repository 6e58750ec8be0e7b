"""Isotropic merging (Marczak et al., 2025, "No Task Left Behind: Isotropic Model Merging with Common and
Task-Specific Subspaces"): Iso-C and Iso-CTS.

- Iso-C, per 2-D matrix: Σᵢτᵢ = U S Vᵀ; every singular value is replaced by their mean: τ_m = mean(S)·U Vᵀ.
- Iso-CTS, per 2-D matrix: the common subspace is the top k_c of Σᵢτᵢ's left singular vectors,
  k_c = int(r·f) (f = ``common_fraction`` = 0.8) moved so that r − k_c is a multiple of N (r − k_c =
  round((r − int(r·f))/N)·N); each τᵢ with that subspace projected out, τᵢ − U_c(U_cᵀτᵢ), gives its top
  (r − k_c)/N triplets; those and the common ones side by side, U and Vᵀ replaced by their polar factors,
  every singular value by their mean.

Every other tensor gets the mean of the τᵢ; θ = θ₀ + α·τ_m, α = ``scale`` = 1 (min(1, α) for BatchNorm's
running statistics, as in TSV-M). This is FusionBench's
``isotropic_merging/iso_utils.py`` (the authors' code), tensor for tensor: every 2-D tensor (embeddings and
heads too), convolutions and 1-D tensors averaged; ``convs=true`` (zoo's departure) merges convolution
kernels as [out, in·k…] matrices. The operations are done in the reference code's order, so the bits agree
(bench/fusionbench_svd.py), except the projection of a matrix much taller than wide (``project``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import zoo

from .tsv import matrix_shape, mean, polar, reach

if TYPE_CHECKING:  # pragma: no cover
    import torch


def iso_c_matrix(total: torch.Tensor) -> torch.Tensor:
    """Iso-C's τ_m of one 2-D matrix from Σᵢτᵢ: its spectrum flattened to the mean singular value."""
    import torch

    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    return torch.linalg.multi_dot((u, torch.diag(s.mean().expand(s.shape[0])), vh))


def split(rank: int, members: int, fraction: float) -> tuple[int, int]:
    """(k_c, per): the common directions and each member's task-specific ones, k_c + N·per = r."""
    common = int(rank * fraction)
    specific = round((rank - common) / members) * members
    if specific > rank:  # rounding up past r (only for small fractions): one direction fewer per member
        specific -= members
    return rank - specific, specific // members


def project(u_c: torch.Tensor, tv: torch.Tensor) -> torch.Tensor:
    """U_cU_cᵀτ: as (U_cU_cᵀ)τ, the reference code's order (so the same bits), where the [m, m] projector is at
    most 4× the matrix (m ≤ 4n: every linear layer of a transformer); else as U_c(U_cᵀτ), which never holds
    it (a vocabulary embedding's would be gigabytes)."""
    m, n = tv.shape
    return (u_c @ u_c.T) @ tv if m <= 4 * n else u_c @ (u_c.T @ tv)


def iso_cts_matrix(vectors: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """Iso-CTS's τ_m of one 2-D matrix."""
    import torch

    m, n = vectors[0].shape
    r = min(m, n)
    common, per = split(r, len(vectors), fraction)
    u, s, vh = torch.linalg.svd(sum(vectors), full_matrices=False)
    u_c = u[:, :common]
    u_all, s_all, vh_all = vectors[0].new_zeros(m, r), vectors[0].new_zeros(r), vectors[0].new_zeros(r, n)
    for i, tv in enumerate(vectors):
        if per == 0:
            break
        ui, si, vhi = torch.linalg.svd(tv - project(u_c, tv), full_matrices=False)
        slot = slice(i * per, (i + 1) * per)
        u_all[:, slot], s_all[slot], vh_all[slot, :] = ui[:, :per], si[:per], vhi[:per, :]
    tail = slice(r - common, r)  # the common directions after the task-specific ones
    u_all[:, tail], s_all[tail], vh_all[tail, :] = u_c, s[:common], vh[:common, :]
    return torch.linalg.multi_dot((polar(u_all), torch.diag(s_all.mean().expand(r)), polar(vh_all)))


def check(options) -> None:
    if not 0.0 <= options.common_fraction <= 1.0:
        raise zoo.BadInput(f"option common_fraction={options.common_fraction}: the share of each matrix's rank "
                           "given to the common subspace must be in [0, 1]")




CONVS_HELP = ("also merge convolution kernels (out × in × k × k) as out × (in·k·k) matrices (a departure: the "
              "papers' code averages them)")


@zoo.merge_method("iso-c", "Iso-C: per matrix, the sum of the task vectors with all its singular values set to "
                  "their mean; other tensors averaged (Marczak et al. 2025)", needs_base=True,
                  statistics="merge")
def iso_c(tensors: list[torch.Tensor], base: torch.Tensor, *, key: str,
          scale: float = zoo.option(1.0, "α: base + α·(the merged task vector)"),
          convs: bool = zoo.option(False, CONVS_HELP)) -> torch.Tensor:
    vectors = zoo.task_vectors(tensors, base)
    merged = sum(vectors) / len(vectors)
    mat = matrix_shape(key, tuple(base.shape), convs)
    if mat is not None:  # Σᵢτᵢ formed as N·(mean), the reference code's order: the same bits
        merged = iso_c_matrix((merged * len(vectors)).reshape(mat)).reshape(base.shape)
    return base + merged * reach(key, scale)


@zoo.merge_method("iso-cts", "Iso-CTS: per matrix, a common subspace of the summed task vectors plus each task's "
                  "own directions outside it, spectrum flattened; other tensors averaged (Marczak et al. 2025)",
                  needs_base=True, check=check, statistics="merge")
def iso_cts(tensors: list[torch.Tensor], base: torch.Tensor, *, key: str,
            scale: float = zoo.option(1.0, "α: base + α·(the merged task vector)"),
            common_fraction: float = zoo.option(0.8, "f: the common subspace's share of each matrix's rank r, "
                                                "int(r·f) moved so the rest divides among the members",
                                                min=0, max=1),
            convs: bool = zoo.option(False, CONVS_HELP)) -> torch.Tensor:
    vectors = zoo.task_vectors(tensors, base)
    mat = matrix_shape(key, tuple(base.shape), convs)
    if mat is None:
        merged = mean(vectors)
    else:
        merged = iso_cts_matrix([v.reshape(mat) for v in vectors], common_fraction).reshape(base.shape)
    return base + merged * reach(key, scale)
