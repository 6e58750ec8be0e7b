"""Apply permutations to a state dict, and check that a spec's permutations leave the function unchanged.

A permutation ``perm`` of a group of n units means: unit i of the result is unit ``perm[i]`` of the
original, on every axis the group acts on. Applied to every tensor of the spec at once, the network
computes exactly what it computed before (up to float rounding in sums taken in another order).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import zoo
from zoo.plugins.rebasin.spec import Spec

if TYPE_CHECKING:  # pragma: no cover
    import torch

    Perms = Mapping[str, torch.Tensor]


def identity(spec: Spec) -> dict[str, torch.Tensor]:
    import torch

    return {g: torch.arange(n) for g, n in spec.groups.items()}


def random_perms(spec: Spec, seed: int) -> dict[str, torch.Tensor]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {g: torch.randperm(n, generator=gen) for g, n in spec.groups.items()}


def permute_tensor(spec: Spec, key: str, tensor: torch.Tensor, perms: Perms, *, skip_axis: int | None = None):
    """``tensor`` (the spec's ``key``) with every permutation of the spec applied, but the one on ``skip_axis``."""
    entry = spec.axes.get(key)
    if entry is None:
        return tensor
    view, axes = entry
    t = tensor.reshape(view)
    for ax, group in axes.items():
        if ax != skip_axis:
            t = t.index_select(ax, perms[group].to(t.device))
    return t.reshape(tensor.shape)


def apply(spec: Spec, state: Mapping[str, torch.Tensor], perms: Perms) -> dict[str, torch.Tensor]:
    """A new state dict: ``state`` with ``perms`` applied (tensors the spec does not name are shared, not copied)."""
    return {k: permute_tensor(spec, k, v, perms) if k in spec.axes else v for k, v in state.items()}


def inverse(perms: Perms) -> dict[str, torch.Tensor]:
    import torch

    return {g: torch.argsort(p) for g, p in perms.items()}


def _outputs(model, state, images) -> torch.Tensor:
    import torch

    model.load_state_dict(state)
    with torch.no_grad():
        return model(images).double()


def output_difference(model, before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor],
                      images: torch.Tensor) -> float:
    """How far ``model``'s outputs on ``images`` move from weights ``before`` to ``after``: the largest absolute
    difference, relative to the largest output. ``model`` is left holding ``after``."""
    base = _outputs(model, before, images)
    return float((_outputs(model, after, images) - base).abs().max()) / (float(base.abs().max()) or 1.0)


def check_function(spec: Spec, model, images: torch.Tensor, *, seed: int = 0, what: str = "the model",
                   rtol: float = 1e-4) -> float:
    """Permute every group of ``spec`` at random and compare ``model``'s outputs on ``images`` with the
    original's; returns the largest difference relative to the outputs' scale. A failure names the first
    group (and its layer) whose permutation alone changes the outputs: :class:`zoo.BadInput`."""
    model = model.eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        def error(perms) -> float:
            return output_difference(model, state, apply(spec, state, perms), images)

        worst = error(random_perms(spec, seed))
        if worst <= rtol:
            return worst
        for g, perm in random_perms(spec, seed).items():  # name the culprit: one group at a time
            one = {**identity(spec), g: perm}
            if error(one) > rtol:
                tensors = ", ".join(k for k, _ in spec.users(g)[:4])
                raise zoo.BadInput(f"{what}: permuting the {spec.groups[g]} units that start at {spec.where.get(g, g)} "
                                   f"(tensors {tensors}) changes the model's outputs; the permutation spec is wrong "
                                   "there, so nothing was aligned or written")
        raise zoo.BadInput(f"{what}: the permutation spec changes the model's outputs (by {worst:.2g} of their scale) "
                           "although no single group does; nothing was aligned or written")
    finally:
        model.load_state_dict(state)
