"""State-dict arithmetic that strategies share.

Everything streams chunk by chunk: a weighted sum of N members holds the result plus
a few chunks in flight, whatever N is. Floating-point tensors are accumulated in
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

from typing import TYPE_CHECKING, Any, Iterator, Sequence

from zoo.kit.errors import IncompatibleMembers

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from zoo.kit.member import Member

# read about this many bytes per member at a time: few file openings, little memory
CHUNK_BYTES = 64 << 20


def check_compatible(members: Sequence[Member]) -> None:
    """Same tensor names, shapes and dtypes in every member; else one error naming both and the tensor."""
    first = members[0]
    ref = {k: (first.shape(k), first.dtype(k)) for k in first.keys()}
    for other in members[1:]:
        keys = other.keys()
        missing = [k for k in ref if k not in set(keys)]
        extra = [k for k in keys if k not in ref]
        if missing or extra:
            what = f"{first.name} has {missing[0]!r} that {other.name} lacks" if missing \
                else f"{other.name} has {extra[0]!r} that {first.name} lacks"
            raise IncompatibleMembers(
                f"members {first.name} and {other.name} have different tensors: {what}"
                f" ({first.architecture} vs {other.architecture}); soups need one architecture and head"
            )
        for k in keys:
            theirs = (other.shape(k), other.dtype(k))
            if theirs != ref[k]:
                raise IncompatibleMembers(
                    f"members {first.name} and {other.name} differ at tensor {k!r}: "
                    f"shape {list(ref[k][0])} {ref[k][1]} vs {list(theirs[0])} {theirs[1]}"
                    " — a different head or width; combine only members of one architecture and head"
                )


def _chunks(member: Member) -> Iterator[list[str]]:
    import math

    chunk, size = [], 0
    for k in member.keys():
        nbytes = math.prod(member.shape(k)) * 4
        if chunk and size + nbytes > CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(k)
        size += nbytes
    if chunk:
        yield chunk


def weighted_sum(members: Sequence[Member], coeffs: Sequence[float], *, progress: Any = None,
                 description: str = "merging") -> dict[str, torch.Tensor]:
    """Σ cᵢ θᵢ over floating tensors, streamed; integer tensors from the first member.

    Two worker threads read (and hash, see ``zoo.kit.reader``) the next members' chunks while
    this one is added, so the disk, the hashing and the adding overlap. At most ``depth``
    chunks are in flight, never two of one member (its file is then read strictly in order,
    which is what lets the hash be computed on the way).
    """
    from functools import partial

    import torch

    from zoo.kit.prefetch import ahead

    if len(coeffs) != len(members):
        raise ValueError("one coefficient per member")
    out: dict[str, torch.Tensor] = {}
    first = members[0]
    task = progress.task(description, total=len(first.keys())) if progress else None

    def read(keys: list[str], i: int):
        # borrowed views of the file (no copy), released below; finiteness is checked once, on the sum
        return keys, i, members[i].read(keys, check_finite=False, borrow=True)

    reads = (partial(read, keys, i) for keys in _chunks(first) for i in range(len(members)))
    acc: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for keys, i, part in ahead(reads, depth=min(8, len(members)), workers=4):
        c = coeffs[i]
        for k in keys:
            t = part[k]
            if not t.is_floating_point():
                if i == 0:
                    acc[k] = t.clone()
            elif i == 0:
                dtypes[k] = t.dtype
                acc[k] = torch.mul(t.to(torch.float64 if t.dtype == torch.float64 else torch.float32), c)
            else:
                acc[k].add_(t, alpha=c)
        del part
        members[i].release(keys)
        if i == len(members) - 1:
            for k in keys:
                total = acc.pop(k)
                if total.is_floating_point():
                    _check_sum(members, k, total)
                    out[k] = total.to(dtypes.pop(k))
                else:
                    out[k] = total
            if task:
                task.advance(len(keys))
    if task:
        task.close()
    return out


def _check_sum(members: Sequence[Member], key: str, total) -> None:
    """NaN/Inf in any member makes the weighted sum non-finite; only then look for the culprit."""
    from zoo.kit.member import all_finite

    if all_finite(total):
        return
    for m in members:
        m.read([key])  # raises naming the member and the tensor
    raise IncompatibleMembers(f"the weighted sum of tensor {key!r} overflows; check the coefficients")


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
