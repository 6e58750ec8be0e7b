"""The streaming core: apply a function to one tensor of every member (and the base) at a time.

:func:`map_tensors` reads the members chunk by chunk — a few chunks in flight, read (and hashed, see
``zoo.kit._infra.safetensors_reader``) by worker threads while the previous one is computed — and calls ``fn`` once per
floating-point tensor. ``zoo.kit.tensors.weights.weighted_sum`` (every soup) and every merge method
(``zoo.kit.merge``) run on it: there is one streaming implementation.

Where the results go: inside :func:`write_results_into` (``zoo combine --out`` runs every strategy inside it)
each finished tensor is written straight into its place in the output's safetensors files
(``zoo.kit._infra.safetensors_writer``) and dropped, so peak memory is the chunks in flight — independent of the model's
size and of the number of members — and the result is a :class:`~zoo.kit._infra.safetensors_writer.StoredState` that reads
tensors back on demand. Outside it (the Python API without ``out``), the result is a plain dict in memory.
The bytes written are the same either way.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, MutableMapping, Sequence

from zoo.kit.strategy.errors import BadInput, ZooError
from zoo.kit._infra.safetensors_reader import FLOAT_DTYPES

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from zoo.kit.members.member import Member

# a streamed merge reads about this many bytes at a time, all members together: few file openings, little memory
CHUNK_BYTES = 64 << 20

TensorFn = Callable[..., Any]  # fn(tensors, base_tensor, *, key) -> tensor: a merge method's order

# where finished tensors go: (folder, max_shard_size), or None for a dict in memory
_OUTPUT: contextvars.ContextVar[tuple[Path, int | str] | None] = contextvars.ContextVar("zoo_output", default=None)
_CALLS = itertools.count()
# the floating-point dtype of results (--dtype: "F32", "F16", "BF16"), or None: the members' if they agree
_DTYPE: contextvars.ContextVar[str | None] = contextvars.ContextVar("zoo_dtype", default=None)
DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def check_dtype(name: str | None) -> None:
    """Refuse a ``--dtype`` zoo does not write."""
    if name is not None and name not in DTYPES:
        raise BadInput(f"--dtype {name!r}: choose one of {', '.join(DTYPES)}")


@contextlib.contextmanager
def output_dtype(name: str | None) -> Iterator[None]:
    """Within this block, :func:`map_tensors` casts floating results to ``name`` (float32, float16 or
    bfloat16); None keeps the members' dtype where they agree (float32 where they do not)."""
    check_dtype(name)
    token = _DTYPE.set(DTYPES[name] if name else None)
    try:
        yield
    finally:
        _DTYPE.reset(token)


def result_dtypes(members: Sequence[Member], base: Member | None = None) -> dict[str, str]:
    """Each tensor's dtype in the result, from the headers: floating tensors in the ``--dtype`` asked for,
    else the members' where they all agree, else float32; other tensors as the base (or first member) has them."""
    asked = _DTYPE.get()
    ref = base if base is not None else members[0]
    out = {}
    for k in ref.keys():
        if ref.dtype(k) not in FLOAT_DTYPES:
            out[k] = ref.dtype(k)
        elif asked is not None:
            out[k] = asked
        else:
            theirs = {m.dtype(k) for m in members}
            out[k] = theirs.pop() if len(theirs) == 1 else "F32"
    return out


@contextlib.contextmanager
def write_results_into(folder: Path, *, max_shard_size: int | str) -> Iterator[None]:
    """Within this block, :func:`map_tensors` writes its results into files under ``folder`` (laid out as
    ``huggingface_hub.save_torch_state_dict`` lays out ``max_shard_size`` shards) instead of holding them.
    The caller owns ``folder`` and removes it afterwards; ``zoo.kit._infra.output_folder.write`` moves a result's
    files from there into the output folder."""
    token = _OUTPUT.set((Path(folder), max_shard_size))
    try:
        yield
    finally:
        _OUTPUT.reset(token)


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
                description: str = "merging", who: str = "the merge", hint: str = "check the options",
                device: Any = None) -> MutableMapping[str, torch.Tensor]:
    """``{key: fn(tensors, base_tensor, key=key)}`` over floating tensors, streamed (the order of a merge
    method, ``zoo.kit.merge``: ``def fn(tensors, base, *, key)``); integer buffers
    (``num_batches_tracked``) are copied from the base, or from the first member without one.

    ``tensors`` holds the key's tensor of every member, in member order, as float32 (float64 if any
    input is float64: half precision is never computed in its own dtype); ``base_tensor`` likewise,
    or None. They may be views of the members' files: read them, do not keep them. The result is
    cast to :func:`result_dtypes`' dtype: the ``--dtype`` asked for (:func:`output_dtype`), else the
    members' where they agree (members stored in different precisions give float32).

    Memory: one chunk of every member and the next one being read — each chunk is ``CHUNK_BYTES``
    split among the readers, so the total does not grow with the number of members (only a single
    tensor larger than its share is read whole, from every member) — plus the result, unless it is
    written as it is finished (inside :func:`write_results_into`; the result is then a mapping over the files).
    Worker threads read (and hash, see ``zoo.kit._infra.safetensors_reader``) the next chunks while ``fn`` computes;
    at most one read per member is in flight, so each file is read in order and hashed on the way.

    ``who`` names the computation in errors: a NaN/Inf result from finite inputs, an exception in
    ``fn`` (re-raised as a :class:`MergeFailed`, exit code 1, naming ``who`` and the tensor).

    ``device`` (a CUDA device; default: the CPU): the reading threads copy each chunk into pinned
    memory, the tensors go to the GPU without blocking, ``fn`` computes there while the next chunks
    are read, and each result comes back to be written. ``fn`` then gets (and returns) tensors on
    that device.
    """
    from zoo.kit._infra.safetensors_reader import torch_dtype

    readers = ([base] if base is not None else []) + list(members)
    dtypes = result_dtypes(members, base)
    target = _OUTPUT.get()
    writer = _writer(readers[0], dtypes, *target) if target is not None else None
    out: dict[str, torch.Tensor] = {}
    try:
        for k, first, tensors, b, originals in _walk(members, base, progress, description, device):
            if not first.is_floating_point():
                done = first if writer is not None else first.clone()  # written before its view is released
            else:
                result = _call(fn, k, tensors, b, who)
                done = _owned(_checked(result, first, k, who), originals).to("cpu", torch_dtype(dtypes[k]))
                if not _finite(done):
                    _blame(readers, k, who, hint)
            if writer is None:
                out[k] = done
            else:
                writer.put(k, done)  # into its place in the output file; nothing of it stays here
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return out if writer is None else writer.finish(readers[0].keys())


def _writer(ref: Member, dtypes: dict[str, str], folder: Path, max_shard_size: int | str):
    from zoo.kit._infra.safetensors_writer import Layout, Spec, StreamWriter

    layout = Layout.plan([Spec(k, tuple(ref.shape(k)), dtypes[k]) for k in ref.keys()],
                         max_shard_size=max_shard_size)
    return StreamWriter(folder / f"result-{next(_CALLS)}", layout)


def scan_tensors(members: Sequence[Member], fn: TensorFn, *, base: Member | None = None,
                 progress: Any = None, description: str = "reading", who: str = "the merge",
                 device: Any = None) -> None:
    """Call ``fn(tensors, base_tensor, key=key)`` on every floating tensor, streamed as :func:`map_tensors`
    does, keeping nothing: the first pass of a method that needs a statistic of the whole model (TIES's
    model-wide magnitude threshold) before it merges tensor by tensor."""
    for k, first, tensors, b, _ in _walk(members, base, progress, description, device):
        if first.is_floating_point():
            _call(fn, k, tensors, b, who)


def _call(fn: Callable, k: str, tensors: list, b: Any, who: str) -> Any:
    try:
        return fn(tensors, b, key=k)
    except ZooError:
        raise
    except Exception as e:
        raise MergeFailed(f"{who} failed at tensor {k!r}: {type(e).__name__}: {e}") from e


def _walk(members: Sequence[Member], base: Member | None, progress: Any, description: str, device: Any = None):
    """Yield ``(key, first, tensors, base_tensor, originals)`` chunk by chunk: ``first`` is the base's tensor
    (or the first member's) as stored, ``tensors`` the members' in the compute dtype (on ``device``),
    ``originals`` every reader's stored tensor. The views are released once the chunk's keys have all been
    yielded."""
    import torch

    from zoo.kit._infra.prefetch import ahead

    readers = ([base] if base is not None else []) + list(members)
    ref = readers[0]
    task = progress.task(description, total=len(ref.keys())) if progress else None
    gpu = device is not None and torch.device(device).type == "cuda"

    def read(keys: list[str], r: Member):
        # borrowed views of the file (no copy), released below; finiteness is checked once, on the result
        part = r.read(keys, check_finite=False, borrow=True)
        if gpu:  # into pinned memory here, on the reading thread, so the copy to the GPU can be asynchronous
            part = {k: v.pin_memory() if v.is_floating_point() else v.clone() for k, v in part.items()}
            r.release(keys)
        return part

    groups = list(_chunks(ref, max(1, CHUNK_BYTES // len(readers))))
    reads = (partial(read, keys, r) for keys in groups for r in readers)
    # what is read ahead while a chunk is computed: at most CHUNK_BYTES (or one read), so a chunk of
    # large tensors read whole from every member is not read a second time over before it is merged
    costs = (sum(_nbytes(r, k) for k in keys) for keys in groups for r in readers)
    parts: list[dict] = []
    chunk = iter(groups)
    for part in ahead(reads, depth=min(8, len(readers)), workers=4, costs=costs, budget=CHUNK_BYTES):
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
            # float64 if any input is float64; float32 otherwise (half precision is never computed in itself)
            compute = torch.float64 if any(p[k].dtype == torch.float64 for p in parts) else torch.float32
            to = {"device": device, "non_blocking": True} if gpu else {}
            tensors = [p[k].to(**to).to(compute) for p in m_parts]
            b = b_part[k].to(**to).to(compute) if b_part is not None else None
            yield k, first, tensors, b, [p[k] for p in parts]
        parts = []
        for r in readers:
            r.release(keys)
        if task:
            task.advance(len(keys))
    if task:
        task.close()


def _nbytes(m: Member, key: str) -> int:
    from zoo.kit._infra.safetensors_writer import Spec

    return Spec(key, tuple(m.shape(key)), m.dtype(key)).nbytes


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
    from zoo.kit.members.member import all_finite

    return all_finite(t)


def _blame(readers: Sequence[Member], key: str, who: str, hint: str) -> None:
    """A NaN/Inf result: name the member whose tensor is broken, else say the computation made it."""
    for r in readers:
        r.read([key])  # raises naming the member and the tensor
    raise BadInput(f"{who} made tensor {key!r} NaN or Inf although every input is finite; {hint}")
