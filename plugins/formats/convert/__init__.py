"""Exact conversion between timm and transformers image classifiers, one module per family.

A conversion is a config for the other format plus a list of :class:`Rule` s, one per tensor of the
converted state dict: which source tensors it is made of and how (a rename, a split of timm's fused
``qkv``, a join, a reshape). Nothing is read here: the rules are applied a tensor at a time by whoever
streams the member (``plugins/formats/converted.py``), so a converted member keeps the engine's memory
bound. Each family module offers

* ``TIMM`` — a predicate on a timm architecture name (``vit_small_patch16_224`` → True);
* ``MODEL_TYPES`` — the transformers ``model_type`` s it converts (``("vit",)``);
* ``to_transformers(timm_config, shapes) -> Conversion`` and ``to_timm(hf_config, shapes) -> Conversion``,
  where ``shapes`` maps the source's tensor names to their shapes (from the safetensors header).

Conversions are exact: the two models give the same logits on the same input (tests/test_convert_*.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

#: the families, by module; each converts both ways
FAMILIES = ("vit", "resnet", "convnext", "swin")


class NoConversion(Exception):
    """The family has no conversion (or this member of it uses a variant the conversion does not cover)."""


@dataclass(frozen=True)
class Rule:
    """One tensor of the converted state dict: ``fn(*sources)``, or the one source as it is when ``fn`` is None."""

    target: str
    sources: tuple[str, ...]
    fn: Callable[..., Any] | None = None

    def apply(self, tensors: dict[str, Any]):
        args = [tensors[k] for k in self.sources]
        return args[0] if self.fn is None else self.fn(*args)


@dataclass
class Conversion:
    """The converted member's ``config.json`` (in the target format) and its tensors' rules, in order."""

    config: dict[str, Any]
    rules: list[Rule] = field(default_factory=list)


def _module(family: str):
    return importlib.import_module(f"{__name__}.{family}")


def family_of_timm(architecture: str) -> str | None:
    """The family of a timm architecture name, or None when no conversion covers it."""
    for family in FAMILIES:
        if _module(family).TIMM(architecture):
            return family
    return None


def family_of_transformers(model_type: str) -> str | None:
    """The family of a transformers ``model_type``, or None when no conversion covers it."""
    for family in FAMILIES:
        if model_type in _module(family).MODEL_TYPES:
            return family
    return None


def to_transformers(timm_config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> Conversion:
    family = family_of_timm(timm_config["architecture"])
    if family is None:
        raise NoConversion(f"timm's {timm_config['architecture']} has no conversion to transformers "
                           f"(families with one: {', '.join(FAMILIES)})")
    return _module(family).to_transformers(timm_config, shapes)


def to_timm(hf_config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> Conversion:
    family = family_of_transformers(str(hf_config.get("model_type")))
    if family is None:
        raise NoConversion(f"transformers' {hf_config.get('model_type')!r} has no conversion to timm "
                           f"(families with one: {', '.join(FAMILIES)})")
    return _module(family).to_timm(hf_config, shapes)
