"""A merge runs inside a memory limit smaller than one of its members.

The limit counts what the process really holds: its resident set (``VmHWM``, the kernel's high-water
mark of ``VmRSS``, which counts the pages of memory-mapped member files too) is watched while it runs and
the process is killed the moment it goes over; as it exits, the process writes its final ``VmHWM``, which
must be under the limit too. (Not ``ru_maxrss``: Linux carries the parent's peak over into a forked child,
so a test process that has just written two ViT-L members would be blamed for its own memory.) A cgroup
would need privileges a CI runner may not have; this needs none.

The members are ViT-L/16 (1.13 GiB of float32 each). Without the streaming writer the output alone
(1.13 GiB) would break the limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import zoo

ARCH = "vit_large_patch16_224"
GIB = 2**30


def _member(folder: Path, seed: int, shapes: dict[str, torch.Size]) -> Path:
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
    folder.mkdir(parents=True)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"architecture": ARCH, "num_classes": 10}))
    return folder


@pytest.fixture(scope="module")
def vit_l_members(tmp_path_factory) -> list[Path]:
    import timm

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in timm.create_model(ARCH, num_classes=10).state_dict().items()}
    root = tmp_path_factory.mktemp("vit-l")
    members = [_member(root / f"m{i}", i, shapes) for i in range(2)]
    zoo.load_member(str(members[0]))  # timm's model list is cached now: the run below does not import timm
    return members


# `python -m zoo`, which writes its own final VmHWM (bytes) to the file named by argv[1] as it exits
_ZOO_REPORTING_PEAK = """
import atexit, runpy, sys
report = sys.argv.pop(1)
def peak():
    kb = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
    open(report, "w").write(str(int(kb) * 1024))
atexit.register(peak)
sys.argv[0] = "zoo"
runpy.run_module("zoo", run_name="__main__")
"""


def _hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_within(limit: int, args: list[str], work: Path) -> tuple[int, int, str]:
    """Run ``zoo ARGS`` in its own process, killed as soon as its resident memory exceeds ``limit`` bytes.
    Returns (exit code, peak resident bytes, stderr)."""
    report = work / "peak"
    proc = subprocess.Popen([sys.executable, "-c", _ZOO_REPORTING_PEAK, str(report), "--quiet", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, _hwm(proc.pid))
        except (OSError, ValueError):
            pass  # it is exiting
        if peak > limit:
            proc.kill()
            break
        time.sleep(0.005)
    err = proc.communicate()[1]
    if report.exists():
        peak = max(peak, int(report.read_text()))
    return proc.returncode, peak, err


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set from /proc (Linux)")
def test_soup_of_vit_l_runs_in_less_memory_than_one_member(tmp_path, vit_l_members):
    size = (vit_l_members[0] / "model.safetensors").stat().st_size
    limit = GIB  # 1.00 GiB: less than one member (1.13 GiB), let alone the output
    assert limit < size
    out = tmp_path / "soup"
    code, peak, err = run_within(limit, ["combine", "-s", "soup", "-m", str(vit_l_members[0]),
                                         "-m", str(vit_l_members[1]), "--out", str(out)], tmp_path)
    assert code == 0 and peak <= limit, f"exit {code}, peak {peak / GIB:.2f} GiB (limit {limit / GIB:.2f}): {err}"
    # and the result is the soup, bit for bit: (a + b) / 2 in float32, as zoo.kit.weights sums
    with safe_open(str(out / "model.safetensors"), "pt") as f, \
            safe_open(str(vit_l_members[0] / "model.safetensors"), "pt") as a, \
            safe_open(str(vit_l_members[1] / "model.safetensors"), "pt") as b:
        assert set(f.keys()) == set(a.keys())
        for k in f.keys():
            expected = torch.mul(a.get_tensor(k), 0.5).add_(b.get_tensor(k), alpha=0.5)
            assert torch.equal(f.get_tensor(k), expected), k
