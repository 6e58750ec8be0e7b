"""What the family modules share: class names either way, timm's network on the meta device, and the
checks that every tensor is converted (a variant the rules do not know is refused, never converted
silently)."""

from __future__ import annotations

import re
from typing import Any, Iterable

from . import Conversion, NoConversion, Rule


def timm_labels(timm_config: dict[str, Any], n: int) -> list[str]:
    """The class names of a timm config (timm writes them at the top and in pretrained_cfg), else LABEL_i."""
    names = timm_config.get("label_names") or (timm_config.get("pretrained_cfg") or {}).get("label_names")
    if not names:
        return [f"LABEL_{i}" for i in range(n)]
    if len(names) != n:
        raise NoConversion(f"{len(names)} label names for {n} classes")
    return [str(x) for x in names]


def labels_or_placeholders(names: list[str] | None, count: int) -> list[str]:
    """``names`` when there is one per class, else transformers' placeholders LABEL_i."""
    if names and len(names) == count:
        return [str(n) for n in names]
    return [f"LABEL_{i}" for i in range(count)]


def hf_label_names(hf_config: dict[str, Any]) -> list[str] | None:
    """id2label as a list (its keys are strings in config.json, ints in a live config), or None."""
    id2label = {int(k): v for k, v in (hf_config.get("id2label") or {}).items()}
    return [id2label[i] for i in range(len(id2label))] if set(id2label) == set(range(len(id2label))) else None


def build_timm(architecture: str, num_classes: int, model_args: dict[str, Any]):
    """timm's network for a config, on the meta device (no memory, no init cost)."""
    import timm
    import torch

    kwargs = {k: v for k, v in model_args.items() if k != "num_classes"}
    with torch.device("meta"):
        return timm.create_model(architecture, pretrained=False, num_classes=num_classes, **kwargs)


def check_shapes(expected: dict[str, tuple[int, ...]], shapes: dict[str, tuple[int, ...]], what: str,
                 optional: Iterable[str] = ()) -> None:
    """The source has exactly the ``expected`` tensors and shapes (``optional`` ones may be absent)."""
    missing = sorted(set(expected) - set(shapes) - set(optional))
    extra = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if tuple(expected[k]) != tuple(shapes[k]))
    if missing or extra or wrong:
        raise NoConversion(f"the tensors are not those of {what}: missing {missing[:3]}, unexpected "
                           f"{extra[:3]}, other shapes {[(k, tuple(shapes[k]), tuple(expected[k])) for k in wrong[:3]]}")


def check_uses(rules: list[Rule], shapes: dict[str, tuple[int, ...]], what: str, family: str,
               ignore: re.Pattern | None = None) -> None:
    """Every rule's sources exist and every source tensor (but those ``ignore`` matches) is used."""
    used = {s for r in rules for s in r.sources}
    missing = sorted(used - set(shapes))
    unused = sorted(k for k in set(shapes) - used if ignore is None or not ignore.search(k))
    if missing or unused:
        raise NoConversion(f"{what}: tensors do not fit the {family} conversion "
                           f"(missing {missing[:4]}, not converted {unused[:4]})")


def count_indices(shapes, pattern: str) -> int:
    """How many consecutive indices ``pattern`` (a regex with one group) matches among the keys."""
    found = {int(m.group(1)) for k in shapes for m in [re.match(pattern, k)] if m}
    n = 0
    while n in found:
        n += 1
    return n


def check_model_args(timm_config: dict[str, Any], family: str, variants: dict, free: Iterable[str],
                     neutral: dict[str, tuple]) -> dict[str, Any]:
    """The ``model_args`` of a timm config of a covered variant (its name without the tag in ``variants``),
    each either ``free`` (read from the tensors' shapes) or one of its ``neutral`` values (the function the
    transformers twin computes); anything else raises NoConversion naming it."""
    arch = timm_config["architecture"]
    name = arch.split(".")[0]
    if name not in variants:
        raise NoConversion(f"timm's {arch} is not a {family} variant transformers can compute "
                           f"(covered: {', '.join(variants)})")
    args = dict(timm_config.get("model_args") or {})
    for key, value in args.items():
        if key in free:
            continue
        if key not in neutral:
            raise NoConversion(f"timm's {arch} with model_args {key}={value!r}: not covered by the conversion")
        if not any(value == ok for ok in neutral[key]):
            raise NoConversion(f"timm's {arch} with {key}={value!r} has no transformers twin")
    return args


def closest_variant(wanted: dict[str, Any], variants: dict[str, dict], common: dict[str, Any]
                    ) -> tuple[str, dict[str, Any]]:
    """The covered timm name that needs the fewest ``model_args`` to build ``wanted``, and those args (each
    variant's defaults: ``common`` updated by its own)."""
    best = None
    for name, own in variants.items():
        defaults = {**common, **own}
        diff = {k: v for k, v in wanted.items() if plain(defaults.get(k)) != plain(v)}
        if best is None or len(diff) < len(best[1]):
            best = (name, diff)
    return best


def plain(value):
    """A tuple as the list JSON gives back (``model_args`` compare and are written so)."""
    return list(value) if isinstance(value, (tuple, list)) else value


def timm_conversion(wanted: dict[str, Any], variants: dict[str, dict], common: dict[str, Any],
                    hf_config: dict[str, Any], num_classes: int, rules: list[Rule]) -> Conversion:
    """The conversion to timm: the closest covered variant with the ``model_args`` it needs for ``wanted``,
    the class count and the transformers config's class names (placeholders where it has none)."""
    architecture, model_args = closest_variant(wanted, variants, common)
    labels = labels_or_placeholders(hf_label_names(hf_config), num_classes)
    config = {"architecture": architecture, "num_classes": num_classes,
              "model_args": {k: plain(v) for k, v in model_args.items()},
              "pretrained_cfg": {"label_names": labels}}
    return Conversion(config=config, rules=rules)
