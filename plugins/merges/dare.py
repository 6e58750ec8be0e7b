"""DARE (Yu et al., ICML 2024, "Language Models are Super Mario"): drop and rescale task vectors.

Each entry of τᵢ is dropped with probability p and the survivors are scaled by 1/(1−p), so the expected
task vector is unchanged; the results are then merged by task arithmetic (``then=ta``: base + λ·Σ wᵢτ̃ᵢ)
or by TIES's sign election and disjoint mean (``then=ties``, as mergekit's ``dare_ties``; with
``density`` < 1 a TIES magnitude trim follows the drop, as FusionBench's DARE-TIES). The drop is seeded
per (seed, member position, tensor name), so the bytes do not depend on the streaming order or the chunking.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Literal

import zoo

from . import ties as _ties
from .common import weighted

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEFAULT_SCALE = {"ta": 0.3, "ties": 1.0}  # λ of task arithmetic and of TIES (docs/algorithms.md)


def generator(seed: int, member: int, key: str) -> torch.Generator:
    """The random stream of one (member, tensor): the same whatever order tensors are streamed in."""
    import torch

    digest = hashlib.sha256(f"{seed}:{member}:{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def drop_and_rescale(tv: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    import torch

    if p == 0.0:
        return tv
    keep = torch.rand(tv.shape, generator=gen) >= p
    return torch.where(keep.to(tv.device), tv / (1.0 - p), torch.zeros_like(tv))


def check(options) -> None:
    if not 0.0 <= options.drop < 1.0:
        raise zoo.BadInput(f"option drop={options.drop}: the drop probability p must be in [0, 1) "
                           "(survivors are scaled by 1/(1−p))")
    if not 0.0 < options.density <= 1.0:
        raise zoo.BadInput(f"option density={options.density}: must be in (0, 1]")
    if options.then == "ta" and options.density < 1.0:
        raise zoo.BadInput("option density is TIES's trim: use it with -o then=ties")


def prepare(members, base, options, ctx):
    """then=ties: TIES's stack buffer (``ties.Stack``), with density < 1 the thresholds of the TIES trim after
    the drop, over the whole model (of the dropped task vectors)."""
    if options.then == "ties" and options.density < 1.0:
        dropped = lambda key, i, tv: drop_and_rescale(tv, options.drop, generator(options.seed, i, key))  # noqa: E731
        return _ties.Stack(zoo.model_thresholds(members, base, options.density, progress=ctx.progress,
                                                transform=dropped, description="dare: trim", device=ctx.device))
    return _ties.Stack() if options.then == "ties" else None


def scale_of(options) -> float:
    return DEFAULT_SCALE[options.then] if options.scale is None else options.scale


def reach(options, members: int) -> float:
    """How far the weights move from the base: λ·Σwᵢ with then=ta, λ with then=ties."""
    if options.then == "ta":
        return scale_of(options) * (sum(options.weights) if options.weights else members)
    return scale_of(options)


@zoo.merge_method("dare", "DARE: drop task-vector entries at random and rescale, then task arithmetic or TIES "
                  "(Yu et al. 2024)", needs_base=True, prepare=prepare, check=check, statistics=reach)
def dare(tensors: list[torch.Tensor], base: torch.Tensor, *, key: str, stats,
         drop: float = zoo.option(0.9, "p: probability of dropping each task-vector entry", min=0, max=1),
         then: Literal["ta", "ties"] = zoo.option("ta", "how the dropped task vectors are merged: ta (task "
                                                   "arithmetic) or ties (sign election, disjoint mean)"),
         scale: float | None = zoo.option(None, "λ: base + λ·(merged); default that of `then`: 0.3 for ta, "
                                          "1.0 for ties"),
         weights: list[float] | None = zoo.option(None, "wᵢ of each task vector with then=ta (default 1 each)"),
         density: float = zoo.option(1.0, "with then=ties: fraction of each dropped task vector kept by "
                                     "magnitude over the whole model, round(density·d) of its d entries "
                                     "(1: no trim, as mergekit's dare_ties)", min=0, max=1),
         seed: int = zoo.option(0, "seed of the random drop")) -> torch.Tensor:
    import torch

    lam = DEFAULT_SCALE[then] if scale is None else scale
    vectors = [drop_and_rescale(tv, drop, generator(seed, i, key)) for i, tv in enumerate(zoo.task_vectors(tensors, base))]
    if then == "ta":
        return base + lam * weighted(vectors, weights)
    stats = _ties.Stack() if stats is None else stats  # called directly, without prepare
    stacked = torch.stack(vectors, out=stats.empty(len(vectors), base))
    for i, tv in enumerate(stacked if stats.thresholds is not None else ()):
        zoo.zero_below(tv, stats.thresholds[i])
    return base + lam * _ties.elect_and_average(stacked)
