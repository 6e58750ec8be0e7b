"""Write a result as a Hub repo that timm loads as it is — atomically.

Everything goes into a temporary folder beside ``--out`` and is renamed into place
at the end, so an interrupted or failed run never leaves something that looks finished.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from zoo.kit.strategy.errors import BadInput
from zoo.kit.strategy import Combined

DEFAULT_MAX_SHARD = "20GB"  # timm's hf-hub loader reads one model.safetensors; shard only past this


def check_shard_size(size: str | int | None) -> None:
    """Refuse a ``--max-shard-size`` that huggingface_hub cannot read, or that is not above zero (it would
    write one shard per tensor); call before any work. ``None``: the default."""
    from huggingface_hub.serialization._base import parse_size_to_int  # the parser save_torch_state_dict uses

    if size is None:
        return
    shown = f"--max-shard-size {size}"
    try:
        n = size if isinstance(size, int) else parse_size_to_int(str(size))
    except (ValueError, OverflowError):
        raise BadInput(f"{shown} is not a size: give a number and a unit, KB, MB, GB or TB "
                       f"(e.g. 5GB; default {DEFAULT_MAX_SHARD})") from None
    if n <= 0:
        raise BadInput(f"{shown}: a shard must be larger than 0 bytes (e.g. 5GB; default {DEFAULT_MAX_SHARD})")


def check_out(out: Path, force: bool) -> None:
    """Refuse an existing non-empty ``out`` unless ``force``; call before any work."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise BadInput(f"--out {out} exists and is not empty; choose another folder or pass --force to replace it")


@contextlib.contextmanager
def atomic_folder(out: Path, force: bool) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write into; renamed to ``out`` when the block ends well,
    removed when it fails (or is interrupted), so nothing half-written ever looks finished."""
    out = Path(out).resolve()
    check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def stage_folder(out: Path) -> Path:
    """Where a run writes ``out``'s files as it computes them (``zoo.kit.tensors.stream.write_results_into``): a hidden
    folder beside it named with this process's id. The stale ones of ``out`` are removed first."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    return out.parent / f".{out.name}.stage-{os.getpid()}"


# the hidden folders a run keeps beside ``out`` while it writes, each named with the writing process's id
_SCRATCH = re.compile(r"\.(?:stage|tmp|old)-(\d+)(?:-.*)?")


def remove_stale(out: Path) -> list[Path]:
    """Remove what runs killed before they finished left beside ``out`` (staging, temporary and old
    folders of a process that no longer runs); a folder whose process still runs is left alone.
    Returns the folders removed."""
    out = Path(out)
    removed = []
    for path in out.parent.glob(f".{glob.escape(out.name)}.*"):
        m = _SCRATCH.fullmatch(path.name[len(out.name) + 1:])
        if m and path.is_dir() and not _running(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    if os.name == "nt":  # pragma: no cover - os.kill(pid, 0) there would end the process: keep its folders
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def write(combined: Combined, out: Path, *, force: bool, recipe: dict[str, Any], card: Any,
          max_shard_size: str = DEFAULT_MAX_SHARD, dtype: str | None = None) -> Path:
    """Write ``combined`` as a timm repo in ``out`` (atomically); ``dtype`` (float32, float16, bfloat16):
    the floating tensors' dtype in the file."""
    from huggingface_hub import save_torch_state_dict

    import torch

    from zoo.kit._infra.scrub_paths import published_json, scrub_text
    from zoo.kit.tensors.stream import DTYPES
    from zoo.kit._infra.safetensors_writer import METADATA, StoredState, check_space

    out = Path(out).resolve()
    with atomic_folder(out, force) as tmp:
        sd = combined.state_dict
        cast = getattr(torch, dtype) if dtype else None
        # a streamed merge already wrote its files (zoo.kit.tensors.stream.write_results_into): move them,
        # they are the bytes
        in_dtype = cast is None or (isinstance(sd, StoredState) and sd.float_dtypes() <= {DTYPES[dtype]})
        if not (isinstance(sd, StoredState) and in_dtype and sd.adopt(tmp, max_shard_size=max_shard_size)):
            state = {k: (v.to(cast) if cast is not None and v.is_floating_point() else v).contiguous()
                     for k, v in sd.items()}
            check_space(tmp, sum(v.numel() * v.element_size() for v in state.values()))
            save_torch_state_dict(state, tmp, max_shard_size=max_shard_size,
                                  # one key only: safetensors writes a metadata map in no fixed order, and
                                  # outputs must be byte-identical run to run (the strategy is in zoo.json)
                                  metadata=METADATA)
        fmt = combined.like.format if combined.like is not None else None
        if fmt is None or fmt.name == "timm":
            (tmp / "config.json").write_text(json.dumps(timm_config(combined.config), indent=2))
        else:  # config.json and what the format's loaders read beside it
            fmt.write_config(tmp, combined.config, combined.like)
        # what is written here is meant to be pushed: no path of this machine in it (zoo.kit._infra.scrub_paths)
        (tmp / "zoo.json").write_text(published_json(recipe))
        for filename, fig in combined.figures.items():
            fig.savefig(tmp / filename)
        card.content = scrub_text(card.content)
        card.save(tmp / "README.md")
    return out


def timm_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as an output's config.json: the class count at its top level only.

    timm's ``save_for_hf`` also records ``num_classes`` in ``model_args``; transformers' ``TimmWrapper``
    passes ``model_args`` to ``timm.create_model`` beside a ``num_classes`` of its own, and fails with
    "got multiple values for keyword argument 'num_classes'". timm takes the count from the top-level
    ``num_classes`` (through ``pretrained_cfg``), so without the copy both load the output. Members that
    still carry it are read as before (``Member.create_model`` sets the count itself)."""
    args = config.get("model_args")
    if not isinstance(args, dict) or "num_classes" not in args:
        return config
    config = dict(config)
    config["model_args"] = {k: v for k, v in args.items() if k != "num_classes"}
    if not config["model_args"]:
        del config["model_args"]  # as timm writes a model without arguments of its own
    return config


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename a finished temporary folder to ``out``, replacing an old ``out`` only at the last moment."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
