"""Members from disk: a folder in timm's Hub layout, or a weights file (with --arch)."""

from __future__ import annotations

from pathlib import Path

import zoo
from zoo.kit.members import from_file, from_folder

PREFIX = "local-dir:"


@zoo.hookimpl
def zoo_resolve_member(spec: str, arch: str | None, allow_pickle: bool):
    raw = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    path = Path(raw).expanduser()
    if not path.exists():
        if spec.startswith(PREFIX):

            raise zoo.BadInput(f"member {spec}: no such folder {path}")
        return None
    name = path.resolve().name if path.is_dir() else path.stem
    if path.is_dir():
        return from_folder(path.resolve(), spec=spec, name=name, allow_pickle=allow_pickle)
    return from_file(path.resolve(), spec=spec, name=name, arch=arch, allow_pickle=allow_pickle)
