"""Training checkpoints: written atomically, read back with ``weights_only=True``, RNG state included.

A resumed run must end with exactly the weights of a run never interrupted, so a checkpoint
holds the model, optimizer, scheduler, loss scaler and every random generator the loop draws
from (torch's, a data-order ``torch.Generator``, and numpy's global one, which timm's Mixup uses).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from zoo.kit.strategy.errors import BadInput


def numpy_state() -> dict:
    """numpy's global RNG state as tensors and numbers (what a weights_only checkpoint may hold)."""
    import numpy as np
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def set_numpy_state(state: dict) -> None:
    import numpy as np

    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["pos"],
                         state["has_gauss"], state["cached"]))


def save(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` through a temporary file: a crash mid-save leaves the previous one intact."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def training_state(epoch: int, model, opt, sched, scaler, gen, *, only: set[str] | None = None, **extra) -> dict:
    """What a training loop checkpoints after ``epoch``: the model, optimizer, scheduler, loss scaler, the
    data-order generator and torch's RNG, plus ``extra`` (history, settings, ...). ``only``: the model's
    entries to keep (the trained ones, when the rest is the start's and is re-made on resume: an adapter)."""
    import torch

    weights = model.state_dict()
    if only is not None:
        weights = {k: v for k, v in weights.items() if k in only}
    return {"epoch": epoch, "model": weights, "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(), **extra}


def restore_training(state: dict, model, opt, sched, scaler, gen, *, only: set[str] | None = None) -> int:
    """Put a :func:`training_state` back; returns the number of epochs it had finished. ``only``: it holds
    these entries of the model alone (the others are the start's, as the model already has them)."""
    import torch

    if only is None:
        model.load_state_dict(state["model"])
    else:
        if set(state["model"]) != only:
            raise BadInput("--resume: the checkpoint holds other trained weights than this run trains; resume "
                           "with the same settings")
        model.load_state_dict(state["model"], strict=False)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["epoch"])


def resume_state(path: Path, settings: dict[str, Any], resume: bool, *, what: str, key: str) -> dict | None:
    """The checkpoint at ``path`` to continue from, or None to start afresh.

    Refuses --resume with nothing to resume, a leftover checkpoint without --resume, and a checkpoint
    whose recorded ``settings`` (stored under ``key``) differ from this run's. ``what`` names the run
    in messages ("fine-tune", "distillation").
    """
    if not path.exists():
        if resume:
            raise BadInput(f"--resume: no interrupted {what} to resume ({path} does not exist)")
        return None
    if not resume:
        raise BadInput(f"an interrupted {what} for this --out is in {path.parent}; pass --resume to continue it, "
                       "or delete that folder to start over")
    state = load(path)
    saved = state.get(key, {})
    changed = [k for k, v in settings.items() if saved.get(k) != v]
    if changed:
        raise BadInput(f"--resume: the interrupted run used {changed[0]}={saved.get(changed[0])!r}, not "
                       f"{settings[changed[0]]!r}; resume with the same settings")
    return state


def load(path: Path) -> dict[str, Any]:
    """Our own checkpoint, still read with ``weights_only=True``; a damaged file is one clear error."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadInput(f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:120]}); it is damaged — "
                       f"delete {path.parent} to start over") from None
