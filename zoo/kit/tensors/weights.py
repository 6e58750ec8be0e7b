"""State-dict arithmetic that strategies share.

Everything streams chunk by chunk (``zoo.kit.tensors.stream.map_tensors``): a weighted sum of N members
holds the result plus a few chunks in flight, whatever N is. Floating-point tensors are accumulated in
float32 (float64 for float64 members; half-precision members are never summed in their
own dtype) and cast back to their own dtype; integer buffers (``num_batches_tracked``)
are copied from the first member, never averaged.

Why float32 and not float64: the rounding error of a float32 sum of N terms is about
N·6e-8 of the weights' scale (5e-7 for 8 members) — far below anything that moves a
metric — while converting every member to float64 costs ~4x the CPU time of the whole
merge (bench/RESULTS.md). Sums are elementwise and in a fixed order, so they are
deterministic: the same members give the same bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from zoo.kit.strategy.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from zoo.kit.members.member import Member


def weighted_sum(members: Sequence[Member], coeffs: Sequence[float], *, progress: Any = None,
                 description: str = "merging", device: Any = None) -> dict[str, torch.Tensor]:
    """Σ cᵢ θᵢ over floating tensors, streamed (``zoo.kit.tensors.stream.map_tensors``, on ``device`` if given);
    integer tensors from the first member. The terms are added in member order, in float32 (float64 for
    float64 members)."""
    import torch

    from zoo.kit.tensors.stream import map_tensors

    if len(coeffs) != len(members):
        raise ValueError("one coefficient per member")

    def total(tensors, base, *, key):
        acc = torch.mul(tensors[0], coeffs[0])
        for t, c in zip(tensors[1:], coeffs[1:]):
            acc.add_(t, alpha=c)
        return acc

    return map_tensors(members, total, progress=progress, description=description, who="the weighted sum",
                       hint="check the coefficients", device=device)


def uniform_average(members: Sequence[Member], **kw) -> dict[str, torch.Tensor]:
    return weighted_sum(members, [1.0 / len(members)] * len(members), **kw)


def lerp(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
    """(1−t)·a + t·b over floating tensors (computed in float64); integer tensors from the nearer end
    (``a`` on a tie). t=0 returns ``a``'s tensors and t=1 ``b``'s, bit for bit.
    """
    return fisher_lerp(a, b, {}, {}, t)


def fisher_lerp(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], fa: dict[str, torch.Tensor],
                fb: dict[str, torch.Tensor], t: float, *, floor: float = 1e-8) -> dict[str, torch.Tensor]:
    """Fisher-weighted interpolation: (c₀·a + c₁·b)/(c₀ + c₁), c₀ = (1−t)·max(F_a, floor), c₁ = t·max(F_b, floor).

    Tensors without a Fisher (buffers such as BatchNorm statistics) are interpolated plainly;
    equal Fishers give plain interpolation. Integer tensors (``num_batches_tracked``) come from
    the nearer end; t=0 and t=1 return ``a``'s and ``b``'s tensors bit for bit.
    """
    import torch

    if not 0.0 <= t <= 1.0:
        raise ValueError(f"interpolation weight {t} is outside [0, 1]")
    out = {}
    for k, ta in a.items():
        if not ta.is_floating_point():
            out[k] = (b[k] if t > 0.5 else ta).clone()
        elif t == 0.0:
            out[k] = ta.clone()
        elif t == 1.0:
            out[k] = b[k].clone()
        elif k in fa and k in fb:
            c0 = fa[k].to(torch.float64).clamp_min(floor) * (1.0 - t)
            c1 = fb[k].to(torch.float64).clamp_min(floor) * t
            out[k] = ((c0 * ta.to(torch.float64) + c1 * b[k].to(torch.float64)) / (c0 + c1)).to(ta.dtype)
        else:
            out[k] = (ta.to(torch.float64) * (1.0 - t) + b[k].to(torch.float64) * t).to(ta.dtype)
    return out


# ---- arithmetic for method authors ------------------------------------------------------------
# Each works on one tensor or on a whole state dict (floating tensors only; integer buffers pass through).

def _each(f: Callable, a: Any, *rest: Any) -> Any:
    if isinstance(a, dict):
        return {k: f(v, *(r[k] if isinstance(r, dict) else r for r in rest)) if v.is_floating_point() else v
                for k, v in a.items()}
    return f(a, *rest)


def task_vector(theta: Any, base: Any) -> Any:
    """θ − base: what fine-tuning added to the base (a tensor or a state dict)."""
    return _each(lambda t, b: t - b, theta, base)


def add(a: Any, b: Any) -> Any:
    """a + b (tensors or state dicts)."""
    return _each(lambda x, y: x + y, a, b)


def scale(a: Any, s: float) -> Any:
    """s·a (a tensor or a state dict)."""
    return _each(lambda x, y: x * y, a, s)


def task_vectors(tensors: Sequence[Any], base: Any) -> list:
    """[θᵢ − base for every member]: the per-tensor form of :func:`task_vector`."""
    if base is None:
        raise BadInput("task vectors need a base model: pass --base SPEC")
    return [task_vector(t, base) for t in tensors]


def keep_largest(t: torch.Tensor, density: float) -> torch.Tensor:
    """``t`` with all but its ``density`` fraction of largest-magnitude entries set to zero.

    k = max(1, ⌊density·numel⌋) entries are kept — mergekit's count (its ``sparsify.magnitude``:
    ``int(density * n)``, at least one), so TIES's ``trim=tensor`` keeps what mergekit keeps; none at
    density 0, all at 1. Entries tied with the k-th largest magnitude are all kept (a threshold, not an
    arbitrary tie-break, where mergekit's ``topk`` picks among them), so the result is deterministic.
    """
    import torch

    n = t.numel()
    k = n if density >= 1.0 else 0 if density <= 0.0 else max(1, int(density * n))
    if k >= n:
        return t.clone()
    if k <= 0:
        return torch.zeros_like(t)
    magnitude = t.abs()
    threshold = magnitude.flatten().kthvalue(n - k + 1).values
    return torch.where(magnitude >= threshold, t, torch.zeros_like(t))


def is_statistic(key: str) -> bool:
    """BatchNorm's running statistics (``….running_mean``, ``….running_var``): never moved along task vectors
    (see ``zoo.kit.merge``'s ``statistics=``)."""
    return key.endswith((".running_mean", ".running_var"))
