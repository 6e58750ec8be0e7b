"""Write a result as a Hub repo that timm loads as it is — atomically.

Everything goes into a temporary folder beside ``--out`` and is renamed into place
at the end, so an interrupted or failed run never leaves something that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from zoo.kit.strategy.errors import BadInput
from zoo.kit.strategy import Combined

DEFAULT_MAX_SHARD = "20GB"  # timm's hf-hub loader reads one model.safetensors; shard only past this


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
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
        (tmp / "config.json").write_text(json.dumps(combined.config, indent=2))
        # what is written here is meant to be pushed: no path of this machine in it (zoo.kit._infra.scrub_paths)
        (tmp / "zoo.json").write_text(published_json(recipe))
        for filename, fig in combined.figures.items():
            fig.savefig(tmp / filename)
        card.content = scrub_text(card.content)
        card.save(tmp / "README.md")
    return out


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename a finished temporary folder to ``out``, replacing an old ``out`` only at the last moment."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
