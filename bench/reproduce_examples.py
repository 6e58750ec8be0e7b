"""`zoo reproduce` of the README's soup, distill and stitch examples, on the demo zoos.

    python bench/reproduce_examples.py --work /tmp/zoo-reproduce-bench

Each example is run once as the README writes it (the demo zoo stands in for the README's members), then
`zoo reproduce OUT` is run twice: on this machine as it is, and with OMP_NUM_THREADS=1 (the original ran
with torch's default thread count), to show what a re-run elsewhere reports. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

EXAMPLES = {
    "soup": ["combine", "--strategy", "soup", "--zoo", "digits-demo"],
    "greedy soup": ["combine", "--strategy", "soup", "--zoo", "digits-demo", "-o", "mode=greedy"],
    "distill": ["combine", "--strategy", "distill", "--zoo", "digits-demo", "--epochs", "2"],
    "stitch": ["combine", "--strategy", "stitch", "--zoo", "stitch-effnet-demo", "--epochs", "1"],
}


def zoo(args: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "zoo", "-q", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    return time.perf_counter() - start, proc


def verdict(proc: subprocess.CompletedProcess) -> str:
    if proc.returncode not in (0, 1):
        return f"error {proc.returncode}: {proc.stderr.strip()[-300:]}"
    return " ".join(proc.stdout.split()).replace("|", "/")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--only", nargs="*", default=list(EXAMPLES))
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    print("| example | run (s) | `zoo reproduce` (s) | as it is | with OMP_NUM_THREADS=1 |")
    print("|---|---|---|---|---|")
    for name in a.only:
        out = a.work / name.replace(" ", "-")
        zoo(EXAMPLES[name] + ["--out", str(out) + "-warm"])  # builds the demo zoo once, off the clock
        t_run, proc = zoo(EXAMPLES[name] + ["--out", str(out)])
        assert proc.returncode == 0, proc.stderr
        t_rep, same = zoo(["reproduce", str(out)])
        _, one = zoo(["reproduce", str(out)], env={"OMP_NUM_THREADS": "1"})
        print(f"| {name} | {t_run:.1f} | {t_rep:.1f} | {verdict(same)} | {verdict(one)} |", flush=True)


if __name__ == "__main__":
    main()
