"""The member formats in use: the host's (``use``, called when zoo loads its plugins), found by name with
:func:`named_format` (``--format NAME``) and for a folder with :func:`claim`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.kit.members.format import MemberFormat
from zoo.kit.members.timm_format import TimmFormat
from zoo.kit.strategy.errors import BadInput


_FORMATS: list[MemberFormat] = []


def use(formats: list[MemberFormat]) -> None:
    """Make ``formats`` the ones zoo recognises (the host's, from the ``zoo_member_formats`` hook)."""
    names = [f.name for f in formats]
    for n in names:
        if not n or names.count(n) > 1:
            raise BadInput(f"member format {n!r} is offered twice or has no name; formats: {', '.join(names)}")
    _FORMATS[:] = formats


def formats() -> list[MemberFormat]:
    """The formats in use: the host's, or timm's alone when no host has loaded (the kit used on its own)."""
    if not _FORMATS:
        _FORMATS.append(TimmFormat())
    return list(_FORMATS)


def named_format(name: str) -> MemberFormat:
    """The format called ``name`` (``--format``)."""
    for f in formats():
        if f.name == name:
            return f
    raise BadInput(f"--format {name}: no such member format; formats: {', '.join(f.name for f in formats())}")


def claim(folder: Path, config: dict[str, Any], who: str) -> MemberFormat:
    """The one format that says ``folder`` is its own."""
    mine = [f for f in formats() if f.claims(folder, config)]
    if len(mine) == 1:
        return mine[0]
    known = ", ".join(f.name for f in formats())
    if not mine:
        raise BadInput(f"{who}: {folder / 'config.json'} is in no format zoo reads (formats: {known}); a timm "
                       "folder names an 'architecture', a transformers one a 'model_type' and 'architectures'")
    raise BadInput(f"{who}: formats {', '.join(f.name for f in mine)} all claim {folder}; "
                   "switch one of their plugins off (--no-plugin)")


def convert(member: Any, to: MemberFormat) -> Any:
    """``member`` in format ``to``: itself, or converted exactly by the format that can (``to`` or its own)."""
    if member.format.name == to.name:
        return member
    out = to.convert(member, to) or member.format.convert(member, to)
    if out is None:
        raise BadInput(f"member {member.name}: no format converts {member.format.name} to {to.name}; "
                       f"give members in one format (or choose it with --format)")
    return out
