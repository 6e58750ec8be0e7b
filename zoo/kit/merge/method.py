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

``zoo.kit.tensors.stream.map_tensors`` streams the members (and base) chunk by chunk and calls the function
once per floating-point tensor; ``zoo.kit.tensors.weights`` has the arithmetic methods need (task vectors,
``keep_largest``, ``add``, ``scale``) and ``zoo.kit.merge.topk`` the model-wide top-k (``model_thresholds``).

BatchNorm's running statistics (``running_mean``, ``running_var``) are not weights: a variance moved along
task vectors (base + λ·Σ(varᵢ − var₀)) can turn negative. The decorator's ``statistics=`` says what becomes
of them, so a method gets the safe behaviour without knowing about them:

- ``"mean"`` (the default): the members' mean; the function is never called for them.
- a function ``reach(options, members) -> t`` (``members``: how many), for methods that move the weights from
  the base by a known amount (t = λ·Σwᵢ for task arithmetic, λ for TIES): the statistics move from the
  base's toward the members' mean as far, base + t·(mean − base) with t clamped to [0, 1] — a convex
  combination, so a variance stays positive, and λ = 0 gives the base exactly (the members' mean without
  a base).
- ``"merge"``: the function merges them like any other tensor, for methods whose result is a convex
  combination of the members anyway (SLERP, Fisher, RegMean) or that treat them themselves (``key``).

Two keyword-only parameter names are not options but filled in by zoo:

- ``key: str`` — the tensor's name (``blocks.0.conv.weight``), for methods that treat some tensors
  differently or seed randomness per tensor (DARE);
- ``stats`` — whatever the decorator's ``prepare(members, base, options, ctx)`` returned. ``prepare``
  runs once before the merge: it checks what the signature cannot (``raise zoo.BadInput``) and computes
  what the method needs beyond one tensor — a model-wide threshold in a first streamed pass
  (``map_tensors``), Fisher information on ``ctx.train_split(...)``. ``report(stats, options)``, if
  given, returns a JSON-able dict kept in zoo.json and shown in the card.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import TYPE_CHECKING, Any, Callable

from zoo.kit.strategy.errors import BadInput
from zoo.kit.tensors.stream import map_tensors
from zoo.kit.strategy import Combined, Strategy
from zoo.kit.tensors.weights import is_statistic

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from zoo.kit.members.member import Member

# ---- merge methods ------------------------------------------------------------------------------

#: keyword-only parameters zoo fills in itself (not options): the tensor's name, what ``prepare`` returned
RESERVED = ("key", "stats")


def statistics_toward(tensors: list[torch.Tensor], base: torch.Tensor | None, t: float) -> torch.Tensor:
    """base + t·(mean of the members − base), t clamped to [0, 1]; the members' mean without a base."""
    import torch

    mean = torch.stack(tensors).mean(dim=0)
    if base is None:
        return mean
    t = min(1.0, max(0.0, t))
    return base + t * (mean - base)


def merge_method(name: str, summary: str, *, needs_base: bool = False, min_members: int = 1,
                 max_members: int | None = None, needs: tuple[str, ...] = (), check: Callable | None = None,
                 prepare: Callable | None = None, report: Callable | None = None,
                 statistics: str | Callable[[Any, int], float] = "mean"):
    """Decorator: a function ``f(tensors, base, *, option: type = zoo.option(default, help), ...)``
    becomes a strategy named ``name`` (see the module docstring). Raises TypeError at once, naming
    the function and the parameter, for a signature it cannot turn into options.

    ``needs`` names the data it cannot run without (``"train"``, ``"eval"``, ``"ood"``) and ``check(options)``
    refuses option values the bounds cannot express (``raise zoo.BadInput``): both are checked before
    any member is loaded. ``prepare``, ``report`` and ``statistics`` (what becomes of BatchNorm's running
    statistics: ``"mean"``, the default, ``"merge"`` or ``reach(options, members)``): see the module docstring.
    """
    if not callable(statistics) and statistics not in ("mean", "merge"):
        raise TypeError(f"merge method {name!r}: statistics={statistics!r}; give \"mean\" (the default), "
                        "\"merge\", or a function reach(options, members) -> t")

    def decorate(fn: Callable) -> type:
        options_cls, per_member, wants = _options_from(fn)
        if "stats" in wants and prepare is None:
            raise TypeError(f"merge method {fn.__module__}.{fn.__qualname__}: it takes `stats` but the "
                            "decorator has no prepare= to compute them")
        return type(_class_name(name), (MergeMethod,), {
            "statistics": staticmethod(statistics) if callable(statistics) else statistics,
            "name": name, "summary": summary, "needs_base": needs_base, "min_members": min_members,
            "max_members": max_members, "needs": tuple(needs), "Options": options_cls, "function": staticmethod(fn),
            "per_member": per_member, "wants": wants,
            "prepare_fn": staticmethod(prepare) if prepare else None,
            "report_fn": staticmethod(report) if report else None,
            "check_fn": staticmethod(check) if check else None,
            "__module__": fn.__module__, "__doc__": fn.__doc__,
        })

    return decorate


def _class_name(name: str) -> str:
    return "".join(p.capitalize() for p in name.replace("_", "-").split("-") if p) or "Merge"


def _options_from(fn: Callable) -> tuple[type, frozenset[str], frozenset[str]]:
    """The Options dataclass of ``fn``'s keyword-only parameters, the names of the per-member ones, and
    the reserved parameters (:data:`RESERVED`) it takes."""
    from zoo.kit.strategy.options import option

    what = f"merge method {fn.__module__}.{fn.__qualname__}"
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != 2 or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        raise TypeError(f"{what}: the signature must be (tensors, base, *, option: type = default, ...); "
                        f"make every option keyword-only (after the *)")
    wants = frozenset(p.name for p in params[2:] if p.name in RESERVED)
    # only the options' annotations are resolved: `tensors: list[torch.Tensor]` stays a string, so a merge
    # module can be listed (`zoo strategies`) without torch imported
    annotations = getattr(fn, "__annotations__", {})
    options_only = types.SimpleNamespace(__annotations__={
        p.name: annotations[p.name] for p in params[2:] if p.name not in RESERVED and p.name in annotations})
    try:
        hints = typing.get_type_hints(options_only, globalns=getattr(inspect.unwrap(fn), "__globals__", {}))
    except Exception as e:
        raise TypeError(f"{what}: cannot resolve its annotations ({type(e).__name__}: {e})") from None
    fields, per_member = [], set()
    for p in params[2:]:
        if p.name in RESERVED:
            continue
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
    return dataclasses.make_dataclass("Options", fields), frozenset(per_member), wants


def _is_list(tp: Any) -> bool:
    """``list[...]``, or ``list[...] | None``: a per-member option."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return any(typing.get_origin(a) in (list, tuple) for a in args)


class MergeMethod(Strategy):
    """The strategies :func:`merge_method` makes: check the members (and base), stream, call the function."""

    same_tensors = True
    function: Callable
    per_member: frozenset = frozenset()
    wants: frozenset = frozenset()
    prepare_fn: Callable | None = None
    report_fn: Callable | None = None
    check_fn: Callable | None = None
    statistics: Any = "mean"

    @classmethod
    def check(cls, options) -> None:
        if cls.check_fn is not None:
            cls.check_fn(options)

    def combine(self, members, options, ctx) -> Combined:
        from zoo.kit.tensors.headers import check_compatible

        check_compatible(members, base=ctx.base)
        values = dataclasses.asdict(options)
        for key in sorted(self.per_member):
            if values[key] is not None and len(values[key]) != len(members):
                raise BadInput(f"option {key} has {len(values[key])} value(s) but there are {len(members)} "
                               f"members; give one per member, in member order, e.g. -o {key}="
                               + ",".join(["0.5"] * len(members)))
        fn = self.function
        origin = f" ({ctx.origin})" if ctx.origin else ""
        who = f"merge method {self.name!r} of plugin {fn.__module__}{origin}"
        stats = self.prepare_fn(members, ctx.base, options, ctx) if self.prepare_fn else None
        extra = {"stats": stats} if "stats" in self.wants else {}
        reach = None if self.statistics == "merge" else (
            1.0 if self.statistics == "mean" else float(self.statistics(options, len(members))))
        mean_only = self.statistics == "mean"

        def call(tensors, base, *, key):
            if reach is not None and is_statistic(key):
                return statistics_toward(tensors, None if mean_only else base, reach)
            return fn(tensors, base, **({"key": key} if "key" in self.wants else {}), **extra, **values)

        try:
            sd = map_tensors(members, call, base=ctx.base, progress=ctx.progress, description=self.name, who=who,
                             device=ctx.device)
        finally:
            if hasattr(stats, "close"):
                stats.close()  # e.g. a zoo.Spill's folder
        report: dict[str, Any] = {"ingredients": [m.name for m in members]}
        if ctx.base is not None:
            report["base"] = ctx.base.name
        if self.report_fn is not None:
            report.update(self.report_fn(stats, options))
        return Combined(state_dict=sd, report=report)
