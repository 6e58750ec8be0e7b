"""Member sources: ``resolve(spec)`` asks every source plugin in turn; named zoos live in ``zoos/*.toml``.

A named zoo is a TOML file::

    name = "my-zoo"
    task = "image-classification"
    description = "..."
    labels = ["cat", "dog"]
    members = ["hf-hub:org/a@v1", "./b"]      # paths are relative to the file
    [data]
    eval = "./val"                            # held-out split (class per sub-folder)
    train = "./train"
    [sources]                                 # optional: what each member was trained on
    "./b" = "./b-train"                       # (zoo select --ensemble measures domain difference)

A zoo may instead be *built* on first use by a builder (``[build] builder = "digits"``);
its members and data then live in zoo's cache, relative to the built folder.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.kit.strategy.errors import BadInput

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:  # pragma: no cover
    from zoo.kit.members.member import Member
    from zoo.host import Host

ZOOS_DIR = Path(__file__).parent / "zoos"


def resolve(spec: str, host: Host, *, arch: str | None = None, allow_pickle: bool = False) -> Member:
    """One member from its spec, through the first source plugin that claims it."""
    member = host.pm.hook.zoo_resolve_member(spec=spec, arch=arch, allow_pickle=allow_pickle)
    if member is None:
        raise BadInput(
            f"member {spec!r}: not a path that exists, and no member source knows it "
            "(use hf-hub:ORG/NAME[@REV] for the Hub, or a folder / .safetensors file on disk)"
        )
    return member


@dataclass
class Zoo:
    name: str
    members: list[str]
    data: dict[str, str] = field(default_factory=dict)
    labels: list[str] | None = None
    #: member spec -> the data it was trained on (for zoo select's domain term), when known
    sources: dict[str, str] = field(default_factory=dict)
    task: str = "image-classification"
    description: str = ""
    source: str = ""


def named_zoos() -> dict[str, Path]:
    return {p.stem: p for p in sorted(ZOOS_DIR.glob("*.toml"))}


def load_zoo(name_or_path: str, *, progress: Any = None) -> Zoo:
    """A named zoo (``registry/zoos/NAME.toml``) or a zoo file at a path, with paths made absolute."""
    path = Path(name_or_path)
    if not (path.suffix == ".toml" and path.is_file()):
        known = named_zoos()
        if name_or_path not in known:
            raise BadInput(f"unknown zoo {name_or_path!r}; named zoos: {', '.join(known) or 'none'} "
                           "(or give the path of a zoo .toml file)")
        path = known[name_or_path]
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise BadInput(f"zoo file {path}: {e}") from None
    if not raw.get("members"):
        raise BadInput(f"zoo file {path}: it lists no members")
    base = path.parent
    if "build" in raw:
        from zoo.demos import ensure_built

        base = ensure_built(raw["build"].get("builder", ""), progress=progress)

    def where(p: str) -> str:
        if ":" in p and not Path(p).exists() and not p.startswith(("./", "/", "local-dir:")):
            return p  # hf-hub:... or another source's spec
        return str((base / p).resolve())

    return Zoo(
        name=raw.get("name", path.stem),
        members=[where(m) for m in raw["members"]],
        data={k: str((base / v).resolve()) for k, v in raw.get("data", {}).items()},
        sources={where(k): str((base / v).resolve()) for k, v in raw.get("sources", {}).items()},
        labels=raw.get("labels"),
        task=raw.get("task", "image-classification"),
        description=raw.get("description", ""),
        source=str(path),
    )
