"""Typed strategy options, declared once.

A strategy's ``Options`` is a dataclass whose fields are made with :func:`option`.
From it come ``--option key=value`` parsing, recipe files (``zoo.json``), the
help of ``zoo strategies show NAME`` and the docs — nothing is declared twice::

    @dataclass
    class Options:
        mode: Literal["uniform", "greedy"] = option("uniform", "how ingredients are chosen")
        epochs: int = option(5, "training epochs", min=0)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from zoo.kit.strategy.errors import BadInput

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None) -> Any:
    """A strategy option with its default, one line of help and optional bounds."""
    meta = {"help": help, "min": min, "max": max}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    name: str
    type: Any
    default: Any
    help: str
    min: float | None
    max: float | None

    @property
    def type_name(self) -> str:
        return _type_name(self.type)


def describe(options_cls: type) -> list[OptionInfo]:
    """Every option of an Options dataclass, with its type, default and help."""
    hints = typing.get_type_hints(options_cls)
    out = []
    for f in dataclasses.fields(options_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(OptionInfo(f.name, hints[f.name], default, f.metadata.get("help", ""),
                              f.metadata.get("min"), f.metadata.get("max")))
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None)) + " or none"
    if origin in (list, tuple):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _convert(raw: Any, tp: Any, key: str, flag: bool = False) -> Any:
    what = f"--{key.replace('_', '-')} {raw!r}" if flag else f"option {key}={raw!r}"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in {"none", "null", ""}):
            return None
        return _convert(raw, args[0], key, flag)
    if origin is Literal:
        choices = typing.get_args(tp)
        for c in choices:
            if raw == c or str(raw) == str(c):
                return c
        raise BadInput(f"{what}: choose one of {', '.join(map(str, choices))}")
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1]
        if isinstance(raw, str):
            raw = _parse_sequence(raw, key)
        return [_convert(v, item, key, flag) for v in raw]
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in _TRUE:
            return True
        if str(raw).lower() in _FALSE:
            return False
        raise BadInput(f"{what}: expected true or false")
    if tp in (int, float):
        if isinstance(raw, bool):
            raise BadInput(f"{what}: expected {tp.__name__}")
        try:
            value = tp(raw)
        except (TypeError, ValueError):
            raise BadInput(f"{what}: expected {'an integer' if tp is int else 'a number'}") from None
        if tp is int and isinstance(raw, float) and raw != value:
            raise BadInput(f"{what}: expected an integer")
        return value
    if tp is str:
        return str(raw)
    return raw


def _parse_sequence(raw: str, key: str) -> list[str]:
    """``a,b,c`` or a range ``start:stop:step`` (stop included, like a grid of alphas)."""
    if ":" in raw and "," not in raw:
        parts = raw.split(":")
        if len(parts) != 3:
            raise BadInput(f"option {key}={raw!r}: a range is start:stop:step, e.g. 0:1:0.1")
        try:
            start, stop, step = (float(p) for p in parts)
        except ValueError:
            raise BadInput(f"option {key}={raw!r}: a range is start:stop:step of numbers") from None
        if step <= 0:
            raise BadInput(f"option {key}={raw!r}: the step must be positive")
        n = int(round((stop - start) / step))
        return [repr(round(start + i * step, 10)) for i in range(n + 1)]
    return [p.strip() for p in raw.split(",") if p.strip()]


def parse(options_cls: type, given: dict[str, Any] | None = None, *, strategy: str = "", flags: bool = False) -> Any:
    """Build an Options instance from ``{key: value}`` (strings from the CLI, or typed values).

    Unknown keys, wrong types, values outside bounds: one :class:`BadInput` naming the key — as
    ``--the-flag`` when ``flags`` (options that are a command's flags, as ``zoo finetune``'s).
    """
    infos = {i.name: i for i in describe(options_cls)}
    values: dict[str, Any] = {}
    for key, raw in (given or {}).items():
        norm = key.replace("-", "_")
        if norm not in infos:
            raise BadInput(
                f"unknown option {key!r} for strategy {strategy!r}; known: {', '.join(infos) or 'none'}"
                f" (see `zoo strategies show {strategy}`)"
            )
        info = infos[norm]
        value = _convert(raw, info.type, norm, flags)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                what = f"--{norm.replace('_', '-')} {v}" if flags else f"option {norm}={v}"
                if info.min is not None and v < info.min:
                    raise BadInput(f"{what}: must be at least {info.min}")
                if info.max is not None and v > info.max:
                    raise BadInput(f"{what}: must be at most {info.max}")
        values[norm] = value
    return options_cls(**values)


def parse_pairs(pairs: list[str], flag: str = "--option", example: str = "mode=greedy") -> dict[str, str]:
    """``["k=v", ...]`` from ``--option`` (or another ``flag``) into a dict; a pair without ``=`` is bad input."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"{flag} {pair!r}: write it as key=value, e.g. {flag} {example}")
        out[key.strip()] = value.strip()
    return out


def to_dict(options: Any) -> dict[str, Any]:
    """The options as plain JSON-able values (for zoo.json and the model card)."""
    return dataclasses.asdict(options)


def compose(*parts: Any, defaults: dict[str, Any] | None = None, helps: dict[str, str] | None = None,
            bounds: dict[str, tuple[float | None, float | None]] | None = None) -> type:
    """An Options dataclass made of other strategies' (or recipes') options, so none is declared twice.

    Each part is an Options dataclass (all its fields) or ``(dataclass, ["field", ...])`` (those fields);
    ``defaults``, ``helps`` and ``bounds`` (``(min, max)``) change a field's default, help or bounds for the new
    strategy. Read a part back
    out of the composed options with :func:`part`::

        Options = compose(OwnOptions, WiseFT.Options, (Recipe, ["epochs", "lr"]), defaults={"epochs": 3})
        wise = part(options, WiseFT.Options)
    """
    defaults, helps, bounds = dict(defaults or {}), dict(helps or {}), dict(bounds or {})
    fields, seen = [], set()
    for item in parts:
        cls, names = item if isinstance(item, tuple) else (item, None)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if (names is not None and f.name not in names) or f.name in seen:
                continue
            seen.add(f.name)
            meta = dict(f.metadata)
            if f.name in helps:
                meta["help"] = helps.pop(f.name)
            if f.name in bounds:
                meta["min"], meta["max"] = bounds.pop(f.name)
            value = defaults.pop(f.name) if f.name in defaults else (
                f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
            fields.append((f.name, hints[f.name], option(value, meta.get("help", ""), min=meta.get("min"),
                                                          max=meta.get("max"))))
        missing = set(names or ()) - {f.name for f in dataclasses.fields(cls)}
        if missing:
            raise TypeError(f"compose: {cls.__qualname__} has no field {sorted(missing)[0]!r}")
    if defaults or helps or bounds:
        raise TypeError(f"compose: no field {sorted({**defaults, **helps, **bounds})[0]!r} to change")
    return dataclasses.make_dataclass("Options", fields)


def part(options: Any, cls: type, **changes: Any) -> Any:
    """The ``cls`` options held inside composed ``options`` (its fields that ``cls`` has), with ``changes``."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{n: getattr(options, n) for n in names if hasattr(options, n)}, **changes})
