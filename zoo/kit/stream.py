"""The streaming core: apply a function to one tensor of every member (and the base) at a time.

:func:`map_tensors` reads the members chunk by chunk — a few chunks in flight, read (and hashed, see
``zoo.kit.reader``) by worker threads while the previous one is computed — calls ``fn`` once per
floating-point tensor and assembles the result. Peak memory: the output model plus the chunks in
flight, whatever the number of members. ``zoo.kit.weights.weighted_sum`` (every soup) and every merge
method (``zoo.kit.merge``) run on it: there is one streaming implementation.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from zoo.kit.errors import BadInput, ZooError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from zoo.kit.member import Member

# a streamed merge reads about this many bytes at a time, all members together: few file openings, little memory
CHUNK_BYTES = 64 << 20

TensorFn = Callable[[str, list, Any], Any]  # fn(key, tensors, base_tensor) -> tensor


class MergeFailed(ZooError):
    """A merge function raised or returned something unusable: a bug in the method, not in the input."""


def _chunks(ref: Member, budget: int) -> Iterator[list[str]]:
    """``ref``'s keys in file order, grouped into about ``budget`` bytes (as float32) per group."""
    chunk, size = [], 0
    for k in ref.keys():
        nbytes = math.prod(ref.shape(k)) * 4
        if chunk and size + nbytes > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(k)
        size += nbytes
    if chunk:
        yield chunk


def map_tensors(members: Sequence[Member], fn: TensorFn, *, base: Member | None = None, progress: Any = None,
                description: str = "merging", who: str = "the merge",
                hint: str = "check the options") -> dict[str, torch.Tensor]:
    """``{key: fn(key, tensors, base_tensor)}`` over floating tensors, streamed; integer buffers
    (``num_batches_tracked``) are copied from the base, or from the first member without one.

    ``tensors`` holds the key's tensor of every member, in member order, as float32 (float64 for
    float64 members: half precision is never computed in its own dtype); ``base_tensor`` likewise,
    or None. They may be views of the members' files: read them, do not keep them. The result is
    cast back to the members' dtype.

    Memory: the result, plus one chunk of every member and the next one being read — each chunk
    is ``CHUNK_BYTES`` split among the readers, so the total does not grow with the number of
    members (only a single tensor larger than its share is read whole, from every member).
    Worker threads read (and hash, see ``zoo.kit.reader``) the next chunks while ``fn`` computes;
    at most one read per member is in flight, so each file is read in order and hashed on the way.

    ``who`` names the computation in errors: a NaN/Inf result from finite inputs, an exception in
    ``fn`` (re-raised as a :class:`MergeFailed`, exit code 1, naming ``who`` and the tensor).
    """
    readers = ([base] if base is not None else []) + list(members)
    out: dict[str, torch.Tensor] = {}
    for k, first, tensors, b, originals in _walk(members, base, progress, description):
        if not first.is_floating_point():
            out[k] = first.clone()
            continue
        result = _call(fn, k, tensors, b, who)
        out[k] = _owned(_checked(result, first, k, who), originals).to(first.dtype)
        if not _finite(out[k]):
            _blame(readers, k, who, hint)
    return out


def scan_tensors(members: Sequence[Member], fn: Callable[[str, list, Any], None], *, base: Member | None = None,
                 progress: Any = None, description: str = "reading", who: str = "the merge") -> None:
    """Call ``fn(key, tensors, base_tensor)`` on every floating tensor, streamed as :func:`map_tensors`
    does, keeping nothing: the first pass of a method that needs a statistic of the whole model (TIES's
    model-wide magnitude threshold) before it merges tensor by tensor."""
    for k, first, tensors, b, _ in _walk(members, base, progress, description):
        if first.is_floating_point():
            _call(fn, k, tensors, b, who)


def _call(fn: Callable, k: str, tensors: list, b: Any, who: str) -> Any:
    try:
        return fn(k, tensors, b)
    except ZooError:
        raise
    except Exception as e:
        raise MergeFailed(f"{who} failed at tensor {k!r}: {type(e).__name__}: {e}") from e


def _walk(members: Sequence[Member], base: Member | None, progress: Any, description: str):
    """Yield ``(key, first, tensors, base_tensor, originals)`` chunk by chunk: ``first`` is the base's tensor
    (or the first member's) as stored, ``tensors`` the members' in the compute dtype, ``originals`` every
    reader's stored tensor. The views are released once the chunk's keys have all been yielded."""
    import torch

    from zoo.kit.prefetch import ahead

    readers = ([base] if base is not None else []) + list(members)
    ref = readers[0]
    task = progress.task(description, total=len(ref.keys())) if progress else None

    def read(keys: list[str], r: Member):
        # borrowed views of the file (no copy), released below; finiteness is checked once, on the result
        return r.read(keys, check_finite=False, borrow=True)

    groups = list(_chunks(ref, max(1, CHUNK_BYTES // len(readers))))
    reads = (partial(read, keys, r) for keys in groups for r in readers)
    parts: list[dict] = []
    chunk = iter(groups)
    for part in ahead(reads, depth=min(8, len(readers)), workers=4):
        parts.append(part)
        if len(parts) < len(readers):
            continue
        keys = next(chunk)
        b_part = parts[0] if base is not None else None
        m_parts = parts[1:] if base is not None else parts
        for k in keys:
            first = parts[0][k]  # the base's, or the first member's
            if not first.is_floating_point():
                yield k, first, None, None, None
                continue
            compute = torch.float64 if first.dtype == torch.float64 else torch.float32
            tensors = [p[k].to(compute) for p in m_parts]
            b = b_part[k].to(compute) if b_part is not None else None
            yield k, first, tensors, b, [p[k] for p in parts]
        parts = []
        for r in readers:
            r.release(keys)
        if task:
            task.advance(len(keys))
    if task:
        task.close()


def _checked(result: Any, like: torch.Tensor, key: str, who: str) -> torch.Tensor:
    import torch

    if not isinstance(result, torch.Tensor):
        raise MergeFailed(f"{who} returned {type(result).__name__} for tensor {key!r}; it must return a tensor")
    if tuple(result.shape) != tuple(like.shape):
        raise MergeFailed(f"{who} returned shape {list(result.shape)} for tensor {key!r} of shape "
                          f"{list(like.shape)}; it must return the tensor's own shape")
    return result


def _owned(result: torch.Tensor, inputs: list) -> torch.Tensor:
    # a result that is one of the borrowed inputs (e.g. `return tensors[0]`) would lose its pages on release
    ptrs = {t.untyped_storage().data_ptr() for t in inputs}
    return result.clone() if result.untyped_storage().data_ptr() in ptrs else result


def _finite(t: torch.Tensor) -> bool:
    from zoo.kit.member import all_finite

    return all_finite(t)


def _blame(readers: Sequence[Member], key: str, who: str, hint: str) -> None:
    """A NaN/Inf result: name the member whose tensor is broken, else say the computation made it."""
    for r in readers:
        r.read([key])  # raises naming the member and the tensor
    raise BadInput(f"{who} made tensor {key!r} NaN or Inf although every input is finite; {hint}")
