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
import os
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


def _member(folder: Path, seed: int, shapes: dict[str, torch.Size], arch: str = ARCH) -> Path:
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
    folder.mkdir(parents=True)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"architecture": arch, "num_classes": 10}))
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



@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set from /proc (Linux)")
def test_an_svd_merge_holds_no_more_than_the_soup_of_the_same_members(tmp_path):
    """Iso-C factors every 2-D matrix of ViT-S (up to 1536 × 384) on the streaming engine, a tensor at a time
    (TSV-M and Iso-CTS are merge methods of the same engine): its peak resident memory is the soup's of the same
    members plus less than half of one member — it never holds a member, let alone both. (ViT-S, not ViT-L as
    above: ViT-L's SVDs take minutes on two cores.)"""
    import timm

    arch = "vit_small_patch16_224"
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in timm.create_model(arch, num_classes=10).state_dict().items()}
    members = [_member(tmp_path / f"m{i}", i, shapes, arch) for i in range(2)]
    size = (members[0] / "model.safetensors").stat().st_size
    zoo.load_member(str(members[0]))  # timm's model list is cached now, for both runs alike
    code, soup_peak, err = run_within(8 * GIB, ["combine", "-s", "soup", "-m", str(members[0]), "-m", str(members[1]),
                                                 "--out", str(tmp_path / "soup")], tmp_path)
    assert code == 0, err
    limit = soup_peak + size // 2
    out = tmp_path / "iso"
    # one OpenMP thread: on a busy runner torch's threads wait for a core in every SVD (minutes instead of seconds)
    code, peak, err = run_within(limit, ["combine", "-s", "iso-c", "--base", str(members[0]), "-m", str(members[1]),
                                         "--out", str(out)], tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert code == 0 and peak <= limit, \
        f"exit {code}, peak {peak / GIB:.3f} GiB against the soup's {soup_peak / GIB:.3f} GiB + {size / 2 / GIB:.3f}: {err}"
    # and it merged: with one task vector τ = U S Vᵀ, Iso-C gives mean(S)·U Vᵀ
    key = "blocks.0.mlp.fc1.weight"
    with safe_open(str(out / "model.safetensors"), "pt") as f, \
            safe_open(str(members[0] / "model.safetensors"), "pt") as b, \
            safe_open(str(members[1] / "model.safetensors"), "pt") as m:
        tau, merged = m.get_tensor(key) - b.get_tensor(key), f.get_tensor(key) - b.get_tensor(key)
    u, s, vh = torch.linalg.svd(tau.double(), full_matrices=False)
    assert torch.allclose(merged.double(), s.mean() * u @ vh, atol=1e-5)
