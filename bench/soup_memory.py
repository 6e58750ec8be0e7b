"""Uniform soup of N large members: zoo against two common ways, wall time and peak RSS, in one run.

    python bench/soup_memory.py --arch vit_large_patch16_224 --members 8 --work /tmp/soup-bench

Members are one random init perturbed N ways (merging is data-independent), saved as timm
folders, and the same weights again as bare .safetensors files (given with --arch). Each method runs
in its own process; peak RSS is that process's ru_maxrss (os.wait4). Results: bench/RESULTS.md.
  zoo     : `zoo combine --strategy soup -m ... --out ...` (the command users run) with an empty
            ZOO_CACHE: it imports timm to check the architecture and computes every member's
            sha256 (for zoo.json) in the same pass as the merge
  zoo-new : the same, members never seen before (their hashes unknown) but timm's model names known
  zoo-again: the same command again: hashes and names known (zoo.cache), only the merge is left
  raw, raw-new, raw-again: the same three with the bare files and `--arch ARCH` (each member's class
            count is read from its classifier tensor's shape; the classifier's name is what timm
            needs importing for, and is remembered like the model names)
  stack   : load every member, torch.stack(...).mean(0) per tensor, save      (a)
  float64 : one member at a time into a float64 accumulator, save (timm's avg_checkpoints way) (b)
  read    : just read every file once (the floor for any method)
  ties, ties-tensor: `zoo combine --strategy ties --base BASE -m ...` (the unperturbed init as the base),
            the model-wide trim (two more streamed passes for its thresholds) and the per-tensor trim;
            the sha256 of each TIES output is printed (old and new code must write the same bytes)

    python bench/soup_memory.py --members 8 --only read,zoo-again,ties,ties-tensor   # a subset of the runs
    python bench/soup_memory.py --arch vit_base_patch16_224 --members 8 --no-raw --only zoo,zoo-again,ties,ties-tensor
        # TIES wall / soup wall in one run (the soup's hashes known, as TIES's are after it)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

STACK = """
import sys, torch
from safetensors.torch import load_file, save_file
paths, out = sys.argv[1:-1], sys.argv[-1]
sds = [load_file(p) for p in paths]
res = {}
for k in sds[0]:
    t = sds[0][k]
    res[k] = torch.stack([sd[k] for sd in sds]).mean(0) if t.is_floating_point() else t
save_file(res, out)
"""
FLOAT64 = """
import sys, torch
from safetensors.torch import load_file, save_file
paths, out = sys.argv[1:-1], sys.argv[-1]
acc = None
for p in paths:
    sd = load_file(p)
    if acc is None:
        acc = {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in sd.items()}
    else:
        for k, v in sd.items():
            if v.is_floating_point():
                acc[k].add_(v.to(torch.float64))
    del sd
save_file({k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in acc.items()}, out)
"""
SAME = """
import json, sys, torch
from safetensors.torch import load_file
a, b = (load_file(p + '/model.safetensors') for p in sys.argv[1:3])
assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
ca, cb = (json.load(open(p + '/config.json')) for p in sys.argv[1:3])
assert ca['num_classes'] == cb['num_classes'], (ca['num_classes'], cb['num_classes'])
"""
READ = """
import sys
for p in sys.argv[1:-1]:
    with open(p, 'rb') as f:
        while f.read(1 << 24):
            pass
"""


def make_members(arch: str, n: int, work: Path) -> list[Path]:
    import timm
    import torch
    from timm.models import save_for_hf

    folders = [work / f"m{i}" for i in range(n)]
    if all((f / "model.safetensors").is_file() for f in folders + [work / "base"]):
        return folders
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    save_for_hf(model, str(work / "base"), safe_serialization=True)  # the start every member moved from
    for i, f in enumerate(folders):
        g = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.is_floating_point():
                    v.copy_(base[k] + 0.01 * torch.randn(v.shape, generator=g))
        save_for_hf(model, str(f), safe_serialization=True)
        print(f"  wrote {f}", flush=True)
    return folders


def make_raw(folders: list[Path], work: Path) -> list[Path]:
    """The same weights as bare .safetensors files (copies, not links: their own inodes and hashes)."""
    (work / "raw").mkdir(exist_ok=True)
    raw = [work / "raw" / f"{f.name}.safetensors" for f in folders]
    for f, r in zip(folders, raw):
        src = f / "model.safetensors"
        if not r.is_file() or r.stat().st_size != src.stat().st_size or r.stat().st_mtime < src.stat().st_mtime:
            shutil.copyfile(src, r)
    return raw


def drop_caches(files: list[Path]) -> None:
    """Evict the members from the page cache where we may (posix_fadvise), so each method reads cold-ish."""
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{cmd[:4]} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024 / 1024  # GiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vit_large_patch16_224")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--work", type=Path, default=Path("/tmp/zoo-soup-bench"))
    ap.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--only", default="", help="comma-separated runs (default: all but ties, ties-tensor)")
    ap.add_argument("--no-raw", action="store_true", help="skip the bare-file copies (they double the disk)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.make_only:
        folders = make_members(args.arch, args.members, args.work)
        if not args.no_raw:
            make_raw(folders, args.work)
        return
    print(f"making {args.members} members of {args.arch} in {args.work}", flush=True)
    # members are made in a child process: ru_maxrss survives fork+exec on Linux, so this process
    # must stay small (no torch) or every measured child would inherit its peak
    subprocess.run([sys.executable, __file__, "--make-only", "--arch", args.arch, "--members", str(args.members),
                    "--work", str(args.work), *(["--no-raw"] if args.no_raw else [])], check=True)
    folders = [args.work / f"m{i}" for i in range(args.members)]
    files = [f / "model.safetensors" for f in folders]
    raw = [args.work / "raw" / f"{f.name}.safetensors" for f in folders]
    size = sum(p.stat().st_size for p in files) / 2**30
    py = sys.executable
    caches = {"zoo": args.work / "zoo-cache", "raw": args.work / "zoo-cache-raw"}  # each starts empty
    for c in caches.values():
        shutil.rmtree(c, ignore_errors=True)
    zoo_cmd = [py, "-m", "zoo", "--quiet", "combine", "-s", "soup", *sum((["-m", str(f)] for f in folders), []),
               "--device", "cpu", "--out", str(args.work / "out-zoo"), "--force"]
    raw_cmd = [py, "-m", "zoo", "--quiet", "combine", "-s", "soup", *sum((["-m", str(f)] for f in raw), []),
               "--arch", args.arch, "--device", "cpu", "--out", str(args.work / "out-raw"), "--force"]
    runs = {
        "read": [py, "-c", READ, *map(str, files), "-"],
        "zoo": zoo_cmd,
        "zoo-new": zoo_cmd,
        "zoo-again": zoo_cmd,
        "raw": raw_cmd,
        "raw-new": raw_cmd,
        "raw-again": raw_cmd,
        "stack": [py, "-c", STACK, *map(str, files), str(args.work / "out-stack.safetensors")],
        "float64": [py, "-c", FLOAT64, *map(str, files), str(args.work / "out-f64.safetensors")],
    }
    ties = [py, "-m", "zoo", "--quiet", "combine", "-s", "ties", "--base", str(args.work / "base"),
            *sum((["-m", str(f)] for f in folders), []), "--device", "cpu", "--out", str(args.work / "out-ties"),
            "--force"]
    runs["ties"] = ties
    runs["ties-tensor"] = [*ties, "-o", "trim=tensor"]
    only = [r for r in args.only.split(",") if r] or [r for r in runs if not r.startswith("ties")]
    unknown = sorted(set(only) - set(runs))
    if unknown:
        raise SystemExit(f"--only: unknown run(s) {unknown}; known: {', '.join(runs)}")
    runs = {name: cmd for name, cmd in runs.items() if name in only}
    if args.no_raw and any(r.startswith("raw") for r in runs):
        raise SystemExit("--no-raw: leave the raw runs out of --only")
    results = {}
    for name, cmd in runs.items():
        cache = caches["raw" if name.startswith("raw") else "zoo"]
        if name.endswith("-new"):
            shutil.rmtree(cache / "sha256")  # members never seen before; timm's names still known
        drop_caches(files + ([] if args.no_raw else raw) + [args.work / "base" / "model.safetensors"])
        results[name] = measure(cmd, {**os.environ, "ZOO_CACHE": str(cache)})
        if name.startswith("ties"):
            digest = subprocess.run(["sha256sum", str(args.work / "out-ties" / "model.safetensors")],
                                    capture_output=True, text=True).stdout.split()[0]
            print(f"  {name}: model.safetensors sha256 {digest}", flush=True)
            shutil.rmtree(args.work / "out-ties", ignore_errors=True)  # disk: one output at a time
        print(f"  {name:9s} wall {results[name][0]:7.1f} s   peak RSS {results[name][1]:6.2f} GiB", flush=True)
    if (args.work / "out-zoo").is_dir() and (args.work / "out-raw").is_dir():
        same = subprocess.run([py, "-c", SAME, str(args.work / "out-zoo"), str(args.work / "out-raw")],
                              capture_output=True, text=True)
        if same.returncode != 0:
            raise SystemExit(f"the soups of folders and of raw files differ: {same.stderr[-2000:]}")
    t0 = time.perf_counter()
    subprocess.run([py, "-m", "zoo", "--help"], check=True, stdout=subprocess.DEVNULL)
    startup = time.perf_counter() - t0
    print(f"\n{args.members} x {args.arch} ({size:.2f} GiB of members)")
    if "stack" in results and "float64" in results:
        sw, sr = results["stack"]
        fw, fr = results["float64"]
        print("| method | wall (s) | peak RSS (GiB) | wall / stack | wall / float64 | RSS / stack | RSS / float64 |")
        print("|---|---|---|---|---|---|---|")
        for name, (w, r) in results.items():
            print(f"| {name} | {w:.1f} | {r:.2f} | {w / sw:.2f} | {w / fw:.2f} | {r / sr:.2f} | {r / fr:.2f} |")
    else:  # a subset (--only): ratios to the first of these that ran
        ref = next(r for r in ("zoo-again", "zoo", "read", *results) if r in results)
        rw, rr = results[ref]
        print(f"| method | wall (s) | peak RSS (GiB) | wall / {ref} | RSS / {ref} |")
        print("|---|---|---|---|---|")
        for name, (w, r) in results.items():
            print(f"| {name} | {w:.1f} | {r:.2f} | {w / rw:.2f} | {r / rr:.2f} |")
    soup = next((r for r in ("zoo-again", "zoo") if r in results), None)
    if soup is not None and any(r.startswith("ties") for r in results):
        print(f"\nTIES wall / soup wall ({soup}, {results[soup][0]:.1f} s): " + ", ".join(
            f"{r} {results[r][0] / results[soup][0]:.2f}" for r in results if r.startswith("ties"))
            + "  (target: <= 1.5)")
    print("\ntargets: zoo and raw wall / stack <= 1.0; peak RSS / float64 <= 0.5")
    print("soups of folders and of raw files: same tensors, same config.json num_classes")
    print(f"`zoo --help` start-up: {startup:.2f} s")


if __name__ == "__main__":
    main()
