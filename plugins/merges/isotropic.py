"""Isotropic merging (Marczak et al., 2025, "No Task Left Behind: Isotropic Model Merging with Common and
Task-Specific Subspaces"): Iso-C and Iso-CTS.

- Iso-C, per 2-D matrix: Σᵢτᵢ = U S Vᵀ; every singular value is replaced by their mean: τ_m = mean(S)·U Vᵀ.
- Iso-CTS, per 2-D matrix: the common subspace is the top k_c of Σᵢτᵢ's left singular vectors,
  k_c = int(r·f) (f = ``common_fraction`` = 0.8) moved so that r − k_c is a multiple of N (r − k_c =
  round((r − int(r·f))/N)·N); each τᵢ with that subspace projected out, τᵢ − U_c(U_cᵀτᵢ), gives its top
  (r − k_c)/N triplets; those and the common ones side by side, U and Vᵀ replaced by their polar factors,
  every singular value by their mean.

Every other tensor gets the mean of the τᵢ; θ = θ₀ + α·τ_m, α = ``scale`` = 1. This is FusionBench's
``isotropic_merging/iso_utils.py`` (the authors' code), tensor for tensor: every 2-D tensor (embeddings and
heads too), convolutions and 1-D tensors averaged; ``convs=true`` (zoo's departure) merges convolution
kernels as [out, in·k…] matrices. One difference in the order of operations: the projection is
U_c(U_cᵀτᵢ), not (U_cU_cᵀ)τᵢ, which would hold an [m, m] matrix (a vocabulary embedding's would not fit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import zoo

from .tsv import matrix_shape, mean, polar

if TYPE_CHECKING:  # pragma: no cover
    import torch


def iso_c_matrix(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Iso-C's τ_m of one 2-D matrix: Σᵢτᵢ with its spectrum flattened to the mean singular value."""
    import torch

    u, s, vh = torch.linalg.svd(sum(vectors), full_matrices=False)
    return torch.linalg.multi_dot((u, torch.diag(s.mean().expand(s.shape[0])), vh))


def split(rank: int, members: int, fraction: float) -> tuple[int, int]:
    """(k_c, per): the common directions and each member's task-specific ones, k_c + N·per = r."""
    common = int(rank * fraction)
    specific = round((rank - common) / members) * members
    if specific > rank:  # rounding up past r (only for small fractions): one direction fewer per member
        specific -= members
    return rank - specific, specific // members


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
        ui, si, vhi = torch.linalg.svd(tv - u_c @ (u_c.T @ tv), full_matrices=False)
        slot = slice(i * per, (i + 1) * per)
        u_all[:, slot], s_all[slot], vh_all[slot, :] = ui[:, :per], si[:per], vhi[:per, :]
    tail = slice(r - common, r)  # the common directions after the task-specific ones
    u_all[:, tail], s_all[tail], vh_all[tail, :] = u_c, s[:common], vh[:common, :]
    return torch.linalg.multi_dot((polar(u_all), torch.diag(s_all.mean().expand(r)), polar(vh_all)))


def check(options) -> None:
    if not 0.0 <= options.common_fraction <= 1.0:
        raise zoo.BadInput(f"option common_fraction={options.common_fraction}: the share of each matrix's rank "
                           "given to the common subspace must be in [0, 1]")


def _merge(tensors, base, key, scale, convs, matrix_fn) -> torch.Tensor:
    vectors = zoo.task_vectors(tensors, base)
    mat = matrix_shape(key, tuple(base.shape), convs)
    merged = mean(vectors) if mat is None else matrix_fn([v.reshape(mat) for v in vectors]).reshape(base.shape)
    return base + merged * scale


CONVS_HELP = ("also merge convolution kernels (out × in × k × k) as out × (in·k·k) matrices (a departure: the "
              "papers' code averages them)")


@zoo.merge_method("iso-c", "Iso-C: per matrix, the sum of the task vectors with all its singular values set to "
                  "their mean; other tensors averaged (Marczak et al. 2025)", needs_base=True,
                  statistics=lambda options, members: options.scale)
def iso_c(tensors: list[torch.Tensor], base: torch.Tensor, *, key: str,
          scale: float = zoo.option(1.0, "α: base + α·(the merged task vector)"),
          convs: bool = zoo.option(False, CONVS_HELP)) -> torch.Tensor:
    return _merge(tensors, base, key, scale, convs, iso_c_matrix)


@zoo.merge_method("iso-cts", "Iso-CTS: per matrix, a common subspace of the summed task vectors plus each task's "
                  "own directions outside it, spectrum flattened; other tensors averaged (Marczak et al. 2025)",
                  needs_base=True, check=check, statistics=lambda options, members: options.scale)
def iso_cts(tensors: list[torch.Tensor], base: torch.Tensor, *, key: str,
            scale: float = zoo.option(1.0, "α: base + α·(the merged task vector)"),
            common_fraction: float = zoo.option(0.8, "f: the common subspace's share of each matrix's rank r, "
                                                "int(r·f) moved so the rest divides among the members",
                                                min=0, max=1),
            convs: bool = zoo.option(False, CONVS_HELP)) -> torch.Tensor:
    return _merge(tensors, base, key, scale, convs, lambda vs: iso_cts_matrix(vs, common_fraction))
