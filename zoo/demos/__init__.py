"""The embedded demo zoos: real data, tiny timm models, built on first use into zoo's cache.

``ensure_built(NAME)`` returns the built folder of a builder (``digits``, ``mnist-shift``, ``transfer``,
``stitch``), building it first if needed. Each builder is a module here with a ``VERSION`` (bump it when
the recipe changes: the cache folder is named by it) and a ``build(root, progress=...)`` function.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from zoo.kit._infra import cache
from zoo.kit.strategy.errors import BadInput


def ensure_built(builder: str, *, progress: Any = None) -> Path:
    """The folder of a built zoo, building it first if needed (atomically, so a crash leaves nothing)."""
    builders = _builders()
    if builder not in builders:
        raise BadInput(f"unknown zoo builder {builder!r}; known: {', '.join(sorted(builders))}")
    version, build = builders[builder]
    root = cache.root() / "zoos" / f"{builder}-v{version}"
    if (root / "DONE").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # one builder at a time per zoo: a second process (another test worker, another shell) waits
    # for the first and then uses its build instead of training the same members again
    from filelock import FileLock

    with FileLock(str(root.parent / f".{builder}-v{version}.lock")):
        if (root / "DONE").is_file():
            return root
        tmp = Path(tempfile.mkdtemp(prefix=f".{builder}-build-", dir=root.parent))
        try:
            build(tmp, progress=progress)
            (tmp / "DONE").write_text("ok\n")
            tmp.rename(root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _builders() -> dict[str, tuple[int, Any]]:
    """builder name → (recipe version, build function). The cache folder is named NAME-vVERSION."""
    from zoo.demos import digits, shift, stitch, transfer

    return {"digits": (digits.VERSION, digits.build_digits), "mnist-shift": (shift.VERSION, shift.build),
            "transfer": (transfer.VERSION, transfer.build), "stitch": (stitch.VERSION, stitch.build)}
