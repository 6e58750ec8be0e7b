"""The model names the installed timm knows, and their classifiers' names, kept in zoo's cache folder
(per timm version) so that checking a member's architecture need not import timm.
"""

from __future__ import annotations

import json
from pathlib import Path

from zoo.kit._infra.cache import root, write_atomically


def _timm_models_file(what: str = "models.txt") -> Path | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return root() / f"timm-{version('timm')}-{what}"
    except PackageNotFoundError:
        return None


def known_timm_models() -> set[str]:
    """The model names timm listed when last imported (for the installed timm version), or none.

    Importing timm takes ~3 s (torchvision pulls in torch._dynamo); checking a member's
    architecture should not, when the answer is already known. Only positive answers are
    taken from here: a name not listed is looked up in timm itself.
    """
    path = _timm_models_file()
    try:
        return set(path.read_text().split()) if path else set()
    except OSError:
        return set()


def remember_timm_models(names: list[str]) -> None:
    path = _timm_models_file()
    if path is not None:
        try:
            write_atomically(path, "\n".join(sorted(names)))
        except OSError:
            pass  # best effort, as above


def known_timm_classifiers() -> dict[str, list[str]]:
    """Each architecture's classifier module names, as timm's pretrained cfg gave them (for the
    installed timm version): finding a bare weights file's class count then needs no timm import."""
    path = _timm_models_file("classifiers.json")
    try:
        data = json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, list) and all(isinstance(n, str) for n in v)}


def remember_timm_classifiers(arch: str, names: list[str]) -> None:
    path = _timm_models_file("classifiers.json")
    if path is not None:
        try:
            write_atomically(path, json.dumps({**known_timm_classifiers(), arch: list(names)}, indent=0, sort_keys=True))
        except OSError:
            pass  # best effort, as above
