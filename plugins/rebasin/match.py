"""Weight matching (Ainsworth et al., Git Re-Basin, 2023): the permutations that bring B's units closest to A's.

For each permutation group π in turn (a random order per sweep, seeded), every other permutation held
fixed, the best π maximises Σ over the tensors it acts on of ⟨W_A, π(W_B)⟩, a linear assignment
problem: C = Σ W_A (group axis first, flattened) · W_B' (same, with the other permutations applied)ᵀ over
the parameters the group acts on (BatchNorm's running statistics are permuted, not matched),
solved with ``scipy.optimize.linear_sum_assignment(C, maximize=True)``. Sweeps repeat until one brings no
gain above 1e-12 (at most ``max_sweeps``).

zoo's one departure (``first_sweep="graph"``, the default): the first sweep visits the groups in the order
the graph reaches them, input to output, so each group is solved once the groups feeding it are; the later
sweeps are in random order as in the paper. From the identity in random order, a hidden layer visited before
the stream that feeds it lines up with the wrong stream, and the two then hold each other in place: on a
ConvNeXt matched against a permuted copy of itself, 10 of 16 groups stayed wrong that way, none with the
graph-ordered first sweep. ``first_sweep="random"`` is the paper's order.

Matching holds both models' tensors and one tensor's working copies at a time (measured in
bench/RESULTS.md).

Attention heads and the dimensions inside them depend on each other (a head is only recognisable once its
dimensions line up, and the reverse): a heads group is solved with, for each pair of heads, the best
alignment of their dimensions (one small assignment per pair) as the pair's score; the dimensions are then
solved as any other group.

Several members: match each to the first with :func:`weight_matching`, or :func:`merge_many` (Git Re-Basin's
MergeMany: each member in turn matched to the mean of the others, already permuted, until no permutation
changes).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Mapping, Sequence

from zoo.plugins.rebasin import permute
from zoo.plugins.rebasin.spec import Spec

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

GAIN = 1e-12


@dataclasses.dataclass
class Matched:
    perms: dict[str, torch.Tensor]
    sweeps: int
    #: Σ ⟨W_A, π(W_B)⟩ before and after matching, over the parameters the spec permutes (None: not measured,
    #: as for MergeMany, whose target moves)
    inner_before: float | None = None
    inner_after: float | None = None
    #: activation matching: the mean correlation of paired units' activations, as they stand and as matched
    correlation_before: float | None = None
    correlation_after: float | None = None


def _flat(t: torch.Tensor, view, ax: int) -> torch.Tensor:
    return t.reshape(view).movedim(ax, 0).reshape(view[ax], -1).float()


def inner(spec: Spec, a, b) -> float:
    """Σ ⟨A, B⟩ over the parameters ``spec`` permutes."""
    return float(sum((a[k].double() * b[k].double()).sum() for k in spec.axes if k not in spec.buffers))


def _cost(spec: Spec, g: str, a, b, perms, users) -> torch.Tensor:
    """C for group ``g``: float32 products (as the weights are), summed over tensors in float64. Nothing of A
    is kept between visits: matching holds the two models and one tensor's working copies."""
    import torch

    n = spec.groups[g]
    cost = torch.zeros(n, n, dtype=torch.float64)
    for k, ax in users:
        view = spec.axes[k][0]
        wb = permute.permute_tensor(spec, k, b[k], perms, skip_axis=ax)
        cost += (_flat(a[k], view, ax) @ _flat(wb, view, ax).T).double()
    return cost


def _heads_cost(spec: Spec, g: str, a, b, perms, users) -> np.ndarray:
    """Score of each (head of A, head of B): Σ ⟨·,·⟩ under the best alignment of the two heads' dimensions."""
    import torch

    inner = spec.nested[g]
    n, d = spec.groups[g], spec.groups[inner]
    pair = torch.zeros(n, n, d, d, dtype=torch.float64)
    for k, ax in users:
        view, axes = spec.axes[k]
        ax_d = next(x for x, name in axes.items() if name == inner)
        wa = a[k].reshape(view).movedim((ax, ax_d), (0, 1)).reshape(n, d, -1).float()
        wb = permute.permute_tensor(spec, k, b[k], {**perms, inner: torch.arange(d)}, skip_axis=ax)
        wb = wb.reshape(view).movedim((ax, ax_d), (0, 1)).reshape(n, d, -1).float()
        pair += torch.einsum("ipx,jqx->ijpq", wa, wb).double()
    return head_scores(pair.numpy())


def head_scores(pair: np.ndarray) -> np.ndarray:
    """score[i, j] of head i of A and head j of B from ``pair`` [n, n, d, d] (the two heads' dimensions' pairwise
    scores): the total of the best alignment of their dimensions (weight and activation matching alike)."""
    import numpy as np

    from scipy.optimize import linear_sum_assignment

    n = pair.shape[0]
    score = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            r, c = linear_sum_assignment(pair[i, j], maximize=True)
            score[i, j] = pair[i, j][r, c].sum()
    return score


def weight_matching(spec: Spec, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], *, seed: int = 0,
                    max_sweeps: int = 100, init: Mapping[str, torch.Tensor] | None = None,
                    first_sweep: str = "graph") -> Matched:
    """The permutations π of ``spec``'s groups that maximise ⟨A, π(B)⟩ (both state dicts of one architecture)."""
    import numpy as np
    import torch

    from scipy.optimize import linear_sum_assignment

    perms = {g: p.clone() for g, p in (init or permute.identity(spec)).items()}
    users = {g: spec.users(g, weights_only=True) for g in spec.groups}
    rng = np.random.default_rng(seed)
    names = sorted(spec.groups, key=lambda g: int(g[1:]))  # P0, P1, …: the order the graph binds them
    before = inner(spec, a, permute.apply(spec, b, perms))
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        gained = False
        order = range(len(names)) if sweeps == 1 and first_sweep == "graph" else rng.permutation(len(names))
        for g in (names[i] for i in order):
            n = spec.groups[g]
            c = _heads_cost(spec, g, a, b, perms, users[g]) if g in spec.nested else \
                _cost(spec, g, a, b, perms, users[g]).numpy()
            rows, cols = linear_sum_assignment(c, maximize=True)
            old = float(c[np.arange(n), perms[g].numpy()].sum())
            new = float(c[rows, cols].sum())
            if new > old + GAIN:
                gained = True
                perms[g] = torch.as_tensor(cols, dtype=torch.long)
        if not gained:
            break
    after = inner(spec, a, permute.apply(spec, b, perms))
    return Matched(perms=perms, sweeps=sweeps, inner_before=before, inner_after=after)


def _mean(states: Sequence[Mapping[str, torch.Tensor]], keys) -> dict[str, torch.Tensor]:
    return {k: sum(s[k].double() for s in states) / len(states) for k in keys}


def merge_many(spec: Spec, states: Sequence[Mapping[str, torch.Tensor]], *, seed: int = 0, max_sweeps: int = 100,
               max_rounds: int = 20, first_sweep: str = "graph", progress=None) -> list[Matched]:
    """Git Re-Basin's MergeMany: one :class:`Matched` per state, bringing all of them into one frame. Each member,
    in a random order per round, is matched to the mean of the others (as permuted so far), starting from its
    current permutation; rounds repeat until none changes (at most ``max_rounds``)."""
    import numpy as np
    import torch

    perms = [permute.identity(spec) for _ in states]
    sweeps = [0] * len(states)
    rng = np.random.default_rng(seed)
    keys = list(spec.axes)
    task = progress.task("weight matching (MergeMany)", total=max_rounds) if progress else None
    for _ in range(max_rounds):
        changed = False
        current = [permute.apply(spec, {k: s[k] for k in keys}, p) for s, p in zip(states, perms)]
        for i in rng.permutation(len(states)):
            others = [current[j] for j in range(len(states)) if j != i]
            target = _mean(others, keys)
            m = weight_matching(spec, target, {k: states[i][k] for k in keys}, seed=seed + int(i),
                                max_sweeps=max_sweeps, init=perms[i], first_sweep=first_sweep)
            sweeps[i] += m.sweeps
            if any(not torch.equal(m.perms[g], perms[i][g]) for g in spec.groups):
                changed = True
                perms[i] = m.perms
                current[i] = permute.apply(spec, {k: states[i][k] for k in keys}, perms[i])
        if task:
            task.advance()
        if not changed:
            break
    if task:
        task.close()
    return [Matched(p, s) for p, s in zip(perms, sweeps)]
