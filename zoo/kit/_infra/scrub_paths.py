"""What zoo writes into an output names no place on the machine it was made on.

An output folder is meant to be pushed: its card and ``zoo.json`` must not carry the user's home
directory, temporary folders or zoo's cache. Every string zoo writes there goes through :func:`scrub`
(JSON-able values) or :func:`scrub_text` (the card):

- ``hf-hub:ORG/NAME@REV``, other specs that are not paths, and relative paths (the user's own words)
  stay as they are;
- a path in zoo's cache (the embedded zoos) is shown by its last part (``ft-long``);
- another absolute path, or one under ``~``, is shown relative to the current directory if it is inside
  it (``members/a``), else by its last part; ``local-dir:`` stays in front if it was there.

The sha256 of every member file stays in ``zoo.json``: a member is identified by its bytes, not by
where it was.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

_LOCAL = "local-dir:"
# an absolute path in free text: starts at "/" or "~/", not inside a URL or a word
_PATH_IN_TEXT = re.compile(r"(?<![\w:/.\-~])(~?/[^\s`'\"<>|()\[\]{},;*]+)")


def _roots() -> list[str]:
    """Prefixes that name this machine: home, temporary folders, zoo's cache."""
    from zoo.kit._infra import cache

    roots = {str(Path.home()), tempfile.gettempdir(), "/tmp", "/var/folders", str(cache.root())}
    return sorted({os.path.realpath(r) for r in roots} | roots, key=len, reverse=True)


def public_path(text: str) -> str:
    """``text`` as zoo publishes it (see the module docstring); unchanged if it is not a local path."""
    from zoo.kit._infra import cache

    prefix = _LOCAL if text.startswith(_LOCAL) else ""
    raw = text[len(prefix):]
    if not (raw.startswith(("/", "~")) or (len(raw) > 2 and raw[1] == ":" and raw[2] in "\\/")):
        return text  # relative (the user's own words), or a spec of another kind
    path = Path(os.path.abspath(os.path.expanduser(raw)))
    where = path.resolve()
    if where.is_relative_to(Path(cache.root()).resolve()):  # zoo's cache is no place a reader could know
        return prefix + path.name
    cwd = Path.cwd().resolve()
    if where != cwd and where.is_relative_to(cwd):
        return prefix + where.relative_to(cwd).as_posix()
    return prefix + (path.name or "/")


def _looks_local(token: str) -> bool:
    raw = os.path.expanduser(token)
    if os.path.exists(raw):
        return True
    return any(raw == r or raw.startswith(r.rstrip("/") + "/") for r in _roots())


def scrub_text(text: str) -> str:
    """Every path of this machine in ``text`` replaced by its public form."""
    return _PATH_IN_TEXT.sub(lambda m: public_path(m.group(1)) if _looks_local(m.group(1)) else m.group(1), text)


def published_json(value: Any) -> str:
    """``value`` as the JSON zoo writes into an output (``zoo.json``): non-JSON values as strings, scrubbed."""
    import json

    return json.dumps(scrub(json.loads(json.dumps(value, default=str))), indent=2)


def scrub(value: Any) -> Any:
    """A JSON-able value with every path of this machine in its strings replaced (dict keys too)."""
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):  # a value that is one path is published as one, whether it exists or not
        whole = value[len(_LOCAL):] if value.startswith(_LOCAL) else value
        return public_path(value) if _PATH_IN_TEXT.fullmatch(whole) else scrub_text(value)
    if isinstance(value, dict):
        return {scrub(k) if isinstance(k, str) else k: scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value
