"""A merge runs inside a memory limit smaller than one of its members.

The limit counts what the process really holds (tests/memlimit.py): its resident set, memory-mapped
member pages included, watched while it runs and reported by the process itself as it exits.

The members are ViT-L/16 (1.13 GiB of float32 each). Without the streaming writer the output alone
(1.13 GiB) would break the limit.

Two members and the output need 3.4 GiB of disk, more than a CI runner's temporary folder sometimes has
free (a run was refused by zoo's own disk check with 0.5 GiB left): the files go where there is room,
the temporary folder or else the RAM disk /dev/shm, and are removed as soon as the test is done.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import zoo
from memlimit import run_within

ARCH = "vit_large_patch16_224"
GIB = 2**30


def _member(folder: Path, seed: int, shapes: dict[str, torch.Size]) -> Path:
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
    folder.mkdir(parents=True)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"architecture": ARCH, "num_classes": 10}))
    return folder


def _room(tmp_path_factory, need: int) -> Path:
    """A fresh folder on the first of the temporary folder and /dev/shm with ``need`` bytes free."""
    for parent in (tmp_path_factory.getbasetemp(), Path("/dev/shm")):
        if parent.is_dir() and shutil.disk_usage(parent).free >= need:
            return Path(tempfile.mkdtemp(prefix="vit-l-", dir=parent))
    pytest.skip(f"needs {need / GIB:.1f} GiB free for two ViT-L members and their soup, in "
                f"{tmp_path_factory.getbasetemp()} or /dev/shm")


@pytest.fixture(scope="module")
def vit_l_room(tmp_path_factory):
    import timm

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in timm.create_model(ARCH, num_classes=10).state_dict().items()}
    size = sum(s.numel() * 4 for s in shapes.values())
    root = _room(tmp_path_factory, 3 * size + 256 * 2**20)
    try:
        members = [_member(root / f"m{i}", i, shapes) for i in range(2)]
        zoo.load_member(str(members[0]))  # timm's model list is cached now: the run below does not import timm
        yield root, members
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set from /proc (Linux)")
def test_soup_of_vit_l_runs_in_less_memory_than_one_member(tmp_path, vit_l_room):
    root, vit_l_members = vit_l_room
    size = (vit_l_members[0] / "model.safetensors").stat().st_size
    limit = GIB  # 1.00 GiB: less than one member (1.13 GiB), let alone the output
    assert limit < size
    out = root / "soup"
    code, peak, err = run_within(limit, ["combine", "-s", "soup", "-m", str(vit_l_members[0]),
                                         "-m", str(vit_l_members[1]), "--out", str(out)], tmp_path)
    assert code == 0 and peak <= limit, f"exit {code}, peak {peak / GIB:.2f} GiB (limit {limit / GIB:.2f}): {err}"
    # and the result is the soup, bit for bit: (a + b) / 2 in float32, as zoo.kit.tensors.weights sums
    with safe_open(str(out / "model.safetensors"), "pt") as f, \
            safe_open(str(vit_l_members[0] / "model.safetensors"), "pt") as a, \
            safe_open(str(vit_l_members[1] / "model.safetensors"), "pt") as b:
        assert set(f.keys()) == set(a.keys())
        for k in f.keys():
            expected = torch.mul(a.get_tensor(k), 0.5).add_(b.get_tensor(k), alpha=0.5)
            assert torch.equal(f.get_tensor(k), expected), k
