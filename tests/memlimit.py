"""Run `zoo` in its own process under a limit on what it really holds in memory.

The limit counts the process's resident set: ``VmHWM``, the kernel's high-water mark of ``VmRSS``, which
counts the pages of memory-mapped member files too. It is watched while the process runs, and the process
is killed the moment it goes over; as it exits, the process writes its final ``VmHWM``, which must be under
the limit too. Not ``ru_maxrss``: Linux carries a parent's peak over into a forked child, so a test process
that has just written two ViT-L members would be blamed for its own memory. A cgroup would need privileges
a CI runner may not have; this needs none. (Used by tests/test_memory_bound.py and bench/merge_engine.py.)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

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


def run_within(limit: int, args: list[str], work: Path, env: dict | None = None) -> tuple[int, int, str]:
    """Run ``zoo ARGS`` in its own process, killed as soon as its resident memory exceeds ``limit`` bytes.
    Returns (exit code, peak resident bytes, stderr). ``work``: a folder for the peak's report file."""
    report = work / "peak"
    proc = subprocess.Popen([sys.executable, "-c", _ZOO_REPORTING_PEAK, str(report), "--quiet", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
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
