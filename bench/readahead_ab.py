"""A/B of the merge engine's read-ahead budget: the same 8 x ViT-L soup with it (as zoo runs) and without it
(`ahead` given no budget, through a wrapper), alternating, page cache dropped before each run (root).

    python bench/readahead_ab.py --work /work/engine --rounds 2     # after bench/merge_engine.py --only A
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

NO_BUDGET = """
import runpy, sys
import zoo.kit._infra.prefetch as p
plain = p.ahead
def ahead(tasks, **kw):
    kw.pop("budget", None); kw.pop("costs", None)
    return plain(tasks, **kw)
p.ahead = ahead
sys.argv = ["zoo"] + sys.argv[1:]
runpy.run_module("zoo", run_name="__main__")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/zoo-engine"))
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    where = args.work / "vit_large_patch16_224"
    members = sum((["-m", str(where / f"m{i}")] for i in range(8)), [])
    env = {**os.environ, "ZOO_CACHE": str(args.work / "zoo-cache")}
    for _ in range(args.rounds):
        for name, head in (("budget", [sys.executable, "-m", "zoo"]), ("no budget", [sys.executable, "-c", NO_BUDGET])):
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
            t0 = time.perf_counter()
            proc = subprocess.Popen([*head, "--quiet", "combine", "-s", "soup", *members, "--device", "cpu",
                                     "--out", str(args.work / "out-ab"), "--force"], env=env)
            _, status, usage = os.wait4(proc.pid, 0)
            print(f"{name:10s} wall {time.perf_counter() - t0:6.1f} s   peak RSS {usage.ru_maxrss / 2**20:.2f} GiB"
                  f"   exit {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    main()
