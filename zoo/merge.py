"""Per-tensor merging: one streaming core, and merge methods written as pure functions of tensors.

A merge method is a function of one tensor's values in every member (and the base's)::

    @zoo.merge_method("ties", "TIES-merging: trim, elect sign, disjoint mean", needs_base=True)
    def ties(tensors, base, *, density: float = zoo.option(0.2, "fraction kept", min=0, max=1)):
        ...
        return merged

The decorator turns it into a ``zoo.Strategy``: its keyword-only parameters are the options
(the type from the annotation, default, help and bounds from :func:`zoo.option`; a plain
default works too, without help), ``zoo strategies show`` lists them and ``-o key=value``
sets them. An option annotated ``list[...]`` holds one value per member, in member order.

:func:`map_tensors` streams the members (and base) chunk by chunk, calls the function once
per floating-point tensor and assembles the result; ``zoo.weights.weighted_sum`` (every
soup) is built on it, so there is one streaming implementation.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from zoo.errors import BadInput, ZooError
from zoo.strategy import Combined, Strategy

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from zoo.member import Member

TensorFn = Callable[[str, list, Any], Any]  # fn(key, tensors, base_tensor) -> tensor


class MergeFailed(ZooError):
    """A merge function raised or returned something unusable: a bug in the method, not in the input."""


# ---- the streaming core -------------------------------------------------------------------

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
    Worker threads read (and hash, see ``zoo.reader``) the next chunks while ``fn`` computes;
    at most one read per member is in flight, so each file is read in order and hashed on the way.

    ``who`` names the computation in errors: a NaN/Inf result from finite inputs, an exception in
    ``fn`` (re-raised as a :class:`MergeFailed`, exit code 1, naming ``who`` and the tensor).
    """
    import torch

    from zoo import weights
    from zoo.prefetch import ahead

    readers = ([base] if base is not None else []) + list(members)
    ref = readers[0]
    task = progress.task(description, total=len(ref.keys())) if progress else None

    def read(keys: list[str], r: Member):
        # borrowed views of the file (no copy), released below; finiteness is checked once, on the result
        return r.read(keys, check_finite=False, borrow=True)

    groups = list(_chunks(ref, max(1, weights.CHUNK_BYTES // len(readers))))
    reads = (partial(read, keys, r) for keys in groups for r in readers)
    out: dict[str, torch.Tensor] = {}
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
                out[k] = first.clone()
                continue
            compute = torch.float64 if first.dtype == torch.float64 else torch.float32
            tensors = [p[k].to(compute) for p in m_parts]
            b = b_part[k].to(compute) if b_part is not None else None
            try:
                result = fn(k, tensors, b)
            except ZooError:
                raise
            except Exception as e:
                raise MergeFailed(f"{who} failed at tensor {k!r}: {type(e).__name__}: {e}") from e
            out[k] = _owned(_checked(result, first, k, who), [p[k] for p in parts]).to(first.dtype)
            if not _finite(out[k]):
                _blame(readers, k, who, hint)
        parts = []
        for r in readers:
            r.release(keys)
        if task:
            task.advance(len(keys))
    if task:
        task.close()
    return out


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
    from zoo.member import all_finite

    return all_finite(t)


def _blame(readers: Sequence[Member], key: str, who: str, hint: str) -> None:
    """A NaN/Inf result: name the member whose tensor is broken, else say the computation made it."""
    for r in readers:
        r.read([key])  # raises naming the member and the tensor
    raise BadInput(f"{who} made tensor {key!r} NaN or Inf although every input is finite; {hint}")


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

    k = round(density·numel) entries are kept; entries tied with the k-th largest magnitude are
    all kept (a threshold, not an arbitrary tie-break), so the result is deterministic.
    """
    import torch

    n = t.numel()
    k = int(round(density * n))
    if k >= n:
        return t.clone()
    if k <= 0:
        return torch.zeros_like(t)
    magnitude = t.abs()
    threshold = magnitude.flatten().kthvalue(n - k + 1).values
    return torch.where(magnitude >= threshold, t, torch.zeros_like(t))


# ---- merge methods ------------------------------------------------------------------------------

def merge_method(name: str, summary: str, *, needs_base: bool = False, min_members: int = 1):
    """Decorator: a function ``f(tensors, base, *, option: type = zoo.option(default, help), ...)``
    becomes a strategy named ``name`` (see the module docstring). Raises TypeError at once, naming
    the function and the parameter, for a signature it cannot turn into options."""

    def decorate(fn: Callable) -> type:
        options_cls, per_member = _options_from(fn)
        return type(_class_name(name), (MergeMethod,), {
            "name": name, "summary": summary, "needs_base": needs_base, "min_members": min_members,
            "Options": options_cls, "function": staticmethod(fn), "per_member": per_member,
            "__module__": fn.__module__, "__doc__": fn.__doc__,
        })

    return decorate


def _class_name(name: str) -> str:
    return "".join(p.capitalize() for p in name.replace("_", "-").split("-") if p) or "Merge"


def _options_from(fn: Callable) -> tuple[type, frozenset[str]]:
    """The Options dataclass of ``fn``'s keyword-only parameters, and the names of the per-member ones."""
    from zoo.options import option

    what = f"merge method {fn.__module__}.{fn.__qualname__}"
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != 2 or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        raise TypeError(f"{what}: the signature must be (tensors, base, *, option: type = default, ...); "
                        f"make every option keyword-only (after the *)")
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:
        raise TypeError(f"{what}: cannot resolve its annotations ({type(e).__name__}: {e})") from None
    fields, per_member = [], set()
    for p in params[2:]:
        if p.name not in hints:
            raise TypeError(f"{what}: option {p.name!r} has no type annotation; write e.g. "
                            f"`{p.name}: float = zoo.option(1.0, \"what it does\")`")
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"{what}: option {p.name!r} has no default; write e.g. "
                            f"`{p.name}: {getattr(hints[p.name], '__name__', hints[p.name])} = "
                            f"zoo.option(DEFAULT, \"what it does\")`")
        tp, default = hints[p.name], p.default
        if isinstance(default, dataclasses.Field):  # zoo.option(default, help, min=, max=)
            value = default.default if default.default is not dataclasses.MISSING else default.default_factory()
            help, lo, hi = (default.metadata.get(m) for m in ("help", "min", "max"))
        else:  # a plain default: no help, no bounds
            value, help, lo, hi = default, "", None, None
        if _is_list(tp):
            per_member.add(p.name)
            help = f"{help or ''} (one value per member, in member order)".strip()
        fields.append((p.name, tp, option(value, help or "", min=lo, max=hi)))
    return dataclasses.make_dataclass("Options", fields), frozenset(per_member)


def _is_list(tp: Any) -> bool:
    """``list[...]``, or ``list[...] | None``: a per-member option."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return any(typing.get_origin(a) in (list, tuple) for a in args)


class MergeMethod(Strategy):
    """The strategies :func:`merge_method` makes: check the members (and base), stream, call the function."""

    function: Callable
    per_member: frozenset = frozenset()

    def combine(self, members, options, ctx) -> Combined:
        from zoo import weights

        weights.check_compatible(members, base=ctx.base)
        values = dataclasses.asdict(options)
        for key in sorted(self.per_member):
            if values[key] is not None and len(values[key]) != len(members):
                raise BadInput(f"option {key} has {len(values[key])} value(s) but there are {len(members)} "
                               f"members; give one per member, in member order, e.g. -o {key}="
                               + ",".join(["0.5"] * len(members)))
        fn = self.function
        origin = f" ({ctx.origin})" if ctx.origin else ""
        who = f"merge method {self.name!r} of plugin {fn.__module__}{origin}"
        sd = map_tensors(members, lambda key, tensors, base: fn(tensors, base, **values), base=ctx.base,
                         progress=ctx.progress, description=self.name, who=who)
        report: dict[str, Any] = {"ingredients": [m.name for m in members]}
        if ctx.base is not None:
            report["base"] = ctx.base.name
        return Combined(state_dict=sd, report=report)
