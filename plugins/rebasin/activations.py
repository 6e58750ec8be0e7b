"""Activation matching: B's units paired with A's by how their activations correlate on the same images
(Li et al., *Convergent Learning*, ICLR 2016; Git Re-Basin's activation matching, Ainsworth et al. 2023).

Both models run side by side, node by node, through the fx graph the permutation spec was read from
(``zoo.plugins.rebasin.graph.trace``), on the same training images (each preprocessed its member's own way).
Where a value of the graph carries a group's units on one axis (``Spec.sites``: every output of a layer, a
norm, an activation function, a residual sum, …; copies in another layout left out), each unit is a
variable over the samples of that value's other axes (images × positions or tokens), and zoo accumulates
the Pearson correlation between every unit of A and every unit of B. A group's score matrix is the sum of
its sites' correlation matrices, so a hidden layer is judged by its linear output, its normalised output
and its activation alike, and a residual stream by every sum and norm along it; pairs are found by
``scipy.optimize.linear_sum_assignment(C, maximize=True)``. B's activations do not depend on how its
units are ordered, so each group is solved once: no sweeps.

Attention (timm's fused qkv, read whole by the spec): the units are the q, k and v of each head's
dimensions, taken from ``qkv``'s output. For every pair of heads (a of A, b of B), the best pairing of
their dimensions (summed correlation over q, k and v) scores the pair; the heads are paired on those
scores, then the dimensions, which one permutation moves in every head alike, on the correlations summed
over the paired heads.

What is held: both models, one batch's live values of each forward, and per site the sums of a
correlation (two n-vectors of sums, two of squares, the n × n sum of products, float64).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import zoo
from zoo.plugins.rebasin import permute
from zoo.plugins.rebasin.match import Matched, head_scores
from zoo.plugins.rebasin.spec import Spec

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

#: a unit whose activations vary less than this (a dead ReLU) correlates with nothing
EPS = 1e-12


class Correlation:
    """Pearson correlations between the n units of A and the n units of B, accumulated over batches of samples."""

    def __init__(self, n: int) -> None:
        import torch

        self.n, self.count = n, 0
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
        self.sa, self.sb, self.qa, self.qb, self.ab = z(n), z(n), z(n), z(n), z(n, n)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """``a``, ``b``: (samples, n), sample i of ``a`` the same input position as sample i of ``b``."""
        a, b = a.detach().double(), b.detach().double()
        self.sa += a.sum(0).cpu()
        self.sb += b.sum(0).cpu()
        self.qa += (a * a).sum(0).cpu()
        self.qb += (b * b).sum(0).cpu()
        self.ab += (a.T @ b).cpu()
        self.count += a.shape[0]

    def matrix(self) -> torch.Tensor:
        """corr[i, j] between unit i of A and unit j of B (0 for a unit that does not vary)."""
        n = max(self.count, 1)
        ma, mb = self.sa / n, self.sb / n
        sa = (self.qa / n - ma * ma).clamp_min(0).sqrt()
        sb = (self.qb / n - mb * mb).clamp_min(0).sqrt()
        cov = self.ab / n - ma[:, None] * mb[None, :]
        denom = sa[:, None] * sb[None, :]
        return (cov / denom.clamp_min(EPS)).where(denom > EPS, 0.0)


def _units(value: torch.Tensor, axis: int) -> torch.Tensor:
    """(samples, units): the group's axis last, every other axis (batch, space, tokens) a sample."""
    return value.movedim(axis, -1).reshape(-1, value.shape[axis])


def _qkv(module, x: torch.Tensor) -> torch.Tensor:
    """(3, samples, heads·head_dim): the attention's q, k and v for input ``x`` (…, tokens, dim)."""
    out = module.qkv(x)
    return out.reshape(-1, 3, out.shape[-1] // 3).movedim(1, 0)


def record(spec: Spec, model_a, model_b, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
           what: str = "the model") -> tuple[dict[str, list[Correlation]], dict[str, list[list[Correlation]]]]:
    """Run ``model_a`` and ``model_b`` (eval mode, same architecture) node by node on ``batches`` of (images for
    A, the same images for B); returns each group's :class:`Correlation` per site, and each attention heads
    group's (q, k, v) correlations per attention call."""
    import torch

    from zoo.plugins.rebasin.graph import trace

    runs = [torch.fx.Interpreter(trace(m.eval(), what=what)) for m in (model_a, model_b)]
    nodes = [list(r.graph.nodes) for r in runs]
    if [n.name for n in nodes[0]] != [n.name for n in nodes[1]]:
        raise zoo.BadInput(f"{what}: the two models' graphs differ; activation matching needs one architecture")
    at: dict[str, list[tuple[str, int]]] = {}  # node name → (group, axis) of each site there
    for g, sites in spec.sites.items():
        for name, axis in sites:
            at.setdefault(name, []).append((g, axis))
    heads_at = {name: g for g, names in spec.attention.items() for name in names}
    known = {n.name for n in nodes[0]}
    lost = sorted(set(at) - known | set(heads_at) - known)
    if lost:
        raise zoo.BadInput(f"{what}: the permutation spec names values the model's graph does not have "
                           f"({', '.join(lost[:3])}); activation matching needs the graph the spec was read from")
    corr = {g: [Correlation(spec.groups[g]) for _ in sites] for g, sites in spec.sites.items()}
    slot = {(name, g, axis): i for g, sites in spec.sites.items() for i, (name, axis) in enumerate(sites)}
    heads = {g: [[Correlation(spec.groups[g] * spec.groups[spec.nested[g]]) for _ in range(3)] for _ in names]
             for g, names in spec.attention.items()}
    head_slot = {name: i for g, names in spec.attention.items() for i, name in enumerate(names)}
    with torch.no_grad():
        for xa, xb in batches:
            for run, x in zip(runs, (xa, xb)):
                run.env, run.args_iter = {}, iter([x])
            for na, nb in zip(*nodes):
                if na.op == "output":
                    break
                if na.name in heads_at:  # q, k, v from the attention's input, before it runs
                    g = heads_at[na.name]
                    qa, qb = (_qkv(r.submodules[str(n.target)], r.env[n.args[0]]) for r, n in zip(runs, (na, nb)))
                    for block, c in enumerate(heads[g][head_slot[na.name]]):
                        c.add(qa[block], qb[block])
                for run, n in zip(runs, (na, nb)):
                    run.env[n] = run.run_node(n)
                for g, axis in at.get(na.name, ()):
                    corr[g][slot[(na.name, g, axis)]].add(_units(runs[0].env[na], axis), _units(runs[1].env[nb], axis))
                for run, n in zip(runs, (na, nb)):  # free what no later node reads
                    for done in run.user_to_last_uses.get(n, []):
                        del run.env[done]
            for run in runs:
                run.env = {}
    return corr, heads


def _assign(c: np.ndarray) -> tuple[np.ndarray, float]:
    import numpy as np

    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(c, maximize=True)
    assert np.array_equal(rows, np.arange(len(rows)))
    return cols, float(c[rows, cols].sum())


def activation_matching(spec: Spec, model_a, model_b, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                        what: str = "the model") -> Matched:
    """The permutations of ``spec``'s groups that pair each unit of ``model_b`` with the unit of ``model_a`` whose
    activations on ``batches`` correlate best (one linear assignment per group). ``correlation_before`` /
    ``_after``: the mean correlation of paired units (per site, over every group's sites) as the units stand and
    as matched."""
    import numpy as np
    import torch

    names = [g for g in spec.groups if g not in spec.sites and g not in spec.attention
             and g not in {spec.nested[h] for h in spec.attention}]
    if names:
        g = names[0]
        raise zoo.BadInput(f"{what}: no activation of the model carries the {spec.groups[g]} units that start at "
                           f"{spec.where.get(g, g)}, so activation matching cannot pair them; use method=weights")
    corr, heads = record(spec, model_a, model_b, batches, what=what)
    perms = permute.identity(spec)
    before = after = 0.0
    sites = 0
    for g, cs in corr.items():
        c = sum(x.matrix() for x in cs).numpy()
        cols, total = _assign(c)
        perms[g] = torch.as_tensor(cols, dtype=torch.long)
        before, after, sites = before + float(np.trace(c)) / len(c), after + total / len(c), sites + len(cs)
    for g, calls in heads.items():
        inner = spec.nested[g]
        n, d = spec.groups[g], spec.groups[inner]
        pair = sum(x.matrix() for blocks in calls for x in blocks).reshape(n, d, n, d).permute(0, 2, 1, 3).numpy()
        hcols, _ = _assign(head_scores(pair))
        dims = sum(pair[i, hcols[i]] for i in range(n))
        dcols, total = _assign(dims)
        perms[g] = torch.as_tensor(hcols, dtype=torch.long)
        perms[inner] = torch.as_tensor(dcols, dtype=torch.long)
        blocks = 3 * len(calls)
        before += sum(np.trace(pair[i, i]) for i in range(n)) / (n * d)
        after += total / (n * d)
        sites += blocks
    return Matched(perms=perms, sweeps=1, correlation_before=before / max(sites, 1),
                   correlation_after=after / max(sites, 1))


def batches_of(split_a, split_b, images: int, batch_size: int, seed: int):
    """The same ``images`` training images, drawn at random (``seed``) from ``split_a`` and ``split_b`` (one data
    set, preprocessed the way each member expects), in batches of (A's, B's)."""
    import torch

    order = torch.randperm(len(split_a), generator=torch.Generator().manual_seed(seed))[:images]
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        yield split_a.images[idx], split_b.images[idx]
