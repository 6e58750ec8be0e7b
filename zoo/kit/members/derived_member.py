"""A member whose tensors are computed from another's, a few at a time: a format conversion (timm's fused
``qkv`` split into transformers' query, key and value), and whatever else is a function of stored tensors.

``derived(source, rules, config=..., format=...)`` is a :class:`Member` like any other to the merge engine:
its header (names, shapes, dtypes) is planned on the meta device without reading a weight, and ``read``
reads only the source tensors the asked ones are made of. Its provenance is its source's: the same
files were read.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Any, Iterable, Sequence

from zoo.kit.members.member import Member
from zoo.kit._infra.safetensors_reader import dtype_name, torch_dtype

#: one tensor of a derived member: (its name, the source tensors it is made of, fn(*sources) or None for
#: the one source as it is)
Rule = tuple[str, Sequence[str], Any]


@dataclasses.dataclass
class DerivedMember(Member):
    """See the module docstring; made by :func:`derived`."""

    source: Member | None = dataclasses.field(default=None, repr=False)
    rules: dict[str, tuple[tuple[str, ...], Any]] = dataclasses.field(default_factory=dict, repr=False)
    #: what the result is (recorded in its provenance): e.g. ``{"converted_to": "transformers"}``
    note: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @cached_property
    def _header(self) -> dict[str, tuple[Any, tuple[int, ...], str]]:
        import torch

        src = self.source
        meta = {k: torch.empty(src.shape(k), dtype=torch_dtype(src.dtype(k)), device="meta") for k in src.keys()}
        out = {}
        for key, (sources, fn) in self.rules.items():
            if key in self._hidden:
                continue
            t = _apply(fn, [meta[s] for s in sources])
            out[key] = (None, tuple(t.shape), dtype_name(t))
        return out

    def read(self, keys: Iterable[str], *, check_finite: bool = True, borrow: bool = False):
        keys = list(keys)
        needed = list(dict.fromkeys(s for k in keys for s in self.rules[k][0]))
        got = self.source.read(needed, check_finite=check_finite)
        uses: dict[str, int] = {}
        for k in keys:
            for s in self.rules[k][0]:
                uses[s] = uses.get(s, 0) + 1
        out = {}
        for k in keys:
            sources, fn = self.rules[k]
            t = _apply(fn, [got[s] for s in sources])
            # the caller owns what it reads: a source renamed here and also used by another asked tensor is copied
            out[k] = t.clone() if fn is None and uses[sources[0]] > 1 else t
        return out

    def release(self, keys: Iterable[str]) -> None:
        pass  # its tensors are its own: read() does not borrow

    def nbytes(self) -> int:
        return self.source.nbytes()

    def provenance(self) -> dict[str, Any]:
        out = self.source.provenance()
        out.update(self.note)
        return out


@dataclasses.dataclass
class JoinedMember(Member):
    """Several members' tensors under one roof, each key ``TAG/KEY`` (e.g. ``base/…`` and ``adapter/…``): the
    source of a derived member whose tensors combine them (an adapter applied to its base). Its name,
    files and provenance are those of ``parts[main]``."""

    parts: dict[str, Member] = dataclasses.field(default_factory=dict, repr=False)
    main: str = ""

    @cached_property
    def _header(self) -> dict[str, tuple[Any, tuple[int, ...], str]]:
        return {f"{tag}/{k}": (None, m.shape(k), m.dtype(k)) for tag, m in self.parts.items() for k in m.keys()}

    def read(self, keys: Iterable[str], *, check_finite: bool = True, borrow: bool = False):
        wanted: dict[str, list[str]] = {}
        for key in keys:
            tag, _, k = key.partition("/")
            wanted.setdefault(tag, []).append(k)
        out = {}
        for tag, ks in wanted.items():
            out.update({f"{tag}/{k}": t for k, t in self.parts[tag].read(ks, check_finite=check_finite).items()})
        return out

    def release(self, keys: Iterable[str]) -> None:
        pass

    def nbytes(self) -> int:
        return sum(m.nbytes() for m in self.parts.values())

    def provenance(self) -> dict[str, Any]:
        return self.parts[self.main].provenance()


def joined(parts: dict[str, Member], *, main: str) -> JoinedMember:
    """``parts`` as one member whose keys are ``TAG/KEY``; it stands for ``parts[main]`` (name, files, provenance)."""
    m = parts[main]
    return JoinedMember(name=m.name, spec=m.spec, config=m.config, weight_files=list(m.weight_files), root=m.root,
                        repo_id=m.repo_id, revision=m.revision, format=m.format, parts=dict(parts), main=main)


def _apply(fn, tensors):
    return tensors[0] if fn is None else fn(*tensors)


def derived(source: Member, rules: Iterable[Rule], *, config: dict[str, Any], format: Any = None,
            preprocessing: dict[str, Any] | None = None, note: dict[str, Any] | None = None) -> DerivedMember:
    """A member of ``rules`` over ``source``'s tensors, with ``config`` in ``format``'s layout (default timm's).
    ``preprocessing``: the source's, kept when the new format's own reading would differ (a conversion
    computes the same function, images included)."""
    table = {}
    for target, sources, fn in rules:
        if target in table:
            raise ValueError(f"derived member: tensor {target!r} has two rules")
        table[target] = (tuple(sources), fn)
    return DerivedMember(name=source.name, spec=source.spec, config=config, weight_files=list(source.weight_files),
                         root=source.root, repo_id=source.repo_id, revision=source.revision, format=format,
                         source=source, rules=table, note=dict(note or {}), preprocessing=preprocessing)
