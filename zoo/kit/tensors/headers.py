"""Which tensors a model has, with their shapes and dtypes (its safetensors header), and the check that
members fit together: the same tensors and shapes, floating tensors in any precision, other tensors in one
dtype. Read from headers alone, so it runs before any weights are read or downloaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from zoo.kit.strategy.errors import IncompatibleMembers
from zoo.kit._infra.safetensors_reader import FLOAT_DTYPES

if TYPE_CHECKING:  # pragma: no cover
    from zoo.kit.members.member import Member

Header = dict  # {tensor name: (shape, dtype as safetensors spells it)}


def check_compatible(members: Sequence[Member], *, base: Member | None = None) -> None:
    """Same tensor names and shapes in every member (and the base), floating tensors in any precision and
    other tensors in one dtype; else one error naming both models, the tensor and what differs (the tensor
    set, the shape, or the dtype)."""
    first = base if base is not None else members[0]

    def label(m: Member) -> str:
        return f"the base {m.name}" if m is base else f"member {m.name}"

    ref = header_of(first)
    for other in members[1:] if base is None else members:
        both = f"members {first.name} and {other.name}" if base is None else f"{label(first)} and {label(other)}"
        compare_headers(ref, header_of(other), both=both, names=(first.name, other.name),
                        archs=(first.architecture, other.architecture))


def header_of(m: Member) -> Header:
    return {k: (tuple(m.shape(k)), m.dtype(k)) for k in m.keys()}


def compare_headers(ref: Header, other: Header, *, both: str, names: tuple[str, str],
                    archs: tuple[str, str] | None = None, after: str = "") -> None:
    """Raise :class:`IncompatibleMembers` naming the first difference between two models' tensors: one
    has a tensor the other lacks, a shape differs, or a dtype differs other than in floating-point precision."""
    missing = [k for k in ref if k not in other]
    extra = [k for k in other if k not in ref]
    if missing or extra:
        what = f"{names[0]} has {missing[0]!r} that {names[1]} lacks" if missing \
            else f"{names[1]} has {extra[0]!r} that {names[0]} lacks"
        arch = f" ({archs[0]} vs {archs[1]})" if archs else ""
        raise IncompatibleMembers(f"{both} have different tensors: {what}{arch}; soups need one architecture "
                                  f"and head{after}")
    for k, (shape, dtype) in other.items():
        if tuple(shape) != tuple(ref[k][0]):
            raise IncompatibleMembers(
                f"{both} differ at tensor {k!r} in shape: {list(ref[k][0])} vs {list(shape)}"
                f" — a different head or width; combine only members of one architecture and head{after}"
            )
        if dtype != ref[k][1] and not (dtype in FLOAT_DTYPES and ref[k][1] in FLOAT_DTYPES):
            # floating tensors in different precisions are merged in float32 (see map_tensors)
            raise IncompatibleMembers(
                f"{both} differ at tensor {k!r} in dtype: {ref[k][1]} vs {dtype}"
                f" — one stores it as a floating-point tensor, the other not; these checkpoints do not match{after}"
            )
