"""The public groups' lazy exports: ``from zoo.kit.train import train`` imports only what it names.

Each group's ``__init__`` holds a ``NAMES`` table (name → the module that holds it) and nothing else, so
that importing a light name (an error class, ``option``) never imports torch for a heavy one.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` (PEP 562) of ``package``, which exports ``names``."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
