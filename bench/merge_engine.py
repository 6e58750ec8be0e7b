"""The merge engine at scale: zoo against mergekit-pytorch on the same files, and peak memory against
model size, number of members and a limit smaller than the output.

    python bench/merge_engine.py --mergekit /path/to/venv/bin/mergekit-pytorch --work /tmp/zoo-engine

mergekit-pytorch (mergekit's merge of flat .safetensors files) lives in its own environment
(`python -m venv mk && mk/bin/pip install mergekit`); zoo runs from this one. Every run is its own
process, with the page cache dropped before it (/proc/sys/vm/drop_caches as root, else posix_fadvise on
the member files). Peak RSS: the process's ru_maxrss (os.wait4; this script imports no torch, so no peak
is inherited), or, under a limit, the watchdog of tests/memlimit.py.

Sections (--only A,B,C,D):
  A  8 x ViT-L (1.13 GiB each; zoo starts with an empty cache: it imports timm once to check the
     architecture and hashes every member for zoo.json in the same pass as the merge): uniform soup and TIES (base = the members' start), zoo (folders, and the
     same weights as raw .safetensors with --arch) against mergekit-pytorch `linear` and `ties`. zoo's TIES
     runs both trims: model-wide (its default, the paper's) and per tensor (`-o trim=tensor`, what mergekit
     does); mergekit's ties gets density 0.2 and weight 1 per model, zoo's the same.
  B  peak RSS against model size: soup of 4 members of ViT-B, ViT-L, ViT-H
  C  peak RSS against the number of members: ViT-L soup of 2, 4, 8
  D  a soup of 2 ViT-H members (2.4 GiB each, and the output) under a 1.2 GiB limit
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from soup_memory import drop_caches, make_members, make_raw, measure  # noqa: E402

GIB = 2**30


def drop(files: list[Path]) -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:
        drop_caches(files)


def members(arch: str, n: int, work: Path, raw: bool = False) -> tuple[list[Path], list[Path]]:
    """``n`` members of ``arch`` under ``work/arch`` (made in a child process: this one stays small)."""
    import subprocess

    where = work / arch
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(Path(__file__).parent / "soup_memory.py"), "--make-only", "--arch", arch,
                    "--members", str(n), "--work", str(where), *([] if raw else ["--no-raw"])], check=True)
    folders = [where / f"m{i}" for i in range(n)]
    raws = [where / "raw" / f"m{i}.safetensors" for i in range(n)] if raw else []
    return folders, raws


def mergekit_config(method: str, files: list[Path], base: Path | None, path: Path) -> Path:
    lines = [f"merge_method: {method}", "dtype: float32", "models:"]
    for f in files:
        lines.append(f"  - model: {f}")
        lines.append("    parameters: {weight: 1.0" + (", density: 0.2}" if method == "ties" else "}"))
    if base is not None:
        lines.append(f"base_model: {base}")
    if method == "linear":
        lines.append("parameters: {normalize: true}")
    path.write_text("\n".join(lines) + "\n")
    return path


def zoo_cmd(strategy: str, specs: list[Path], out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "zoo", "--quiet", "combine", "-s", strategy,
            *sum((["-m", str(s)] for s in specs), []), "--device", "cpu", "--out", str(out), "--force", *extra]


def run(name: str, cmd: list[str], files: list[Path], out: Path, results: dict, env: dict | None = None) -> None:
    drop(files)
    wall, rss = measure(cmd, env)
    results[name] = (wall, rss)
    shutil.rmtree(out, ignore_errors=True)  # disk: one output at a time
    if out.with_suffix(".safetensors").exists():
        out.with_suffix(".safetensors").unlink()
    print(f"  {name:28s} wall {wall:7.1f} s   peak RSS {rss:6.2f} GiB", flush=True)


def table(results: dict, ref: str) -> None:
    rw, rr = results[ref]
    print(f"\n| run | wall (s) | peak RSS (GiB) | wall / {ref} | RSS / {ref} |\n|---|---|---|---|---|")
    for name, (w, r) in results.items():
        print(f"| {name} | {w:.1f} | {r:.2f} | {w / rw:.2f} | {r / rr:.2f} |")


def section_a(args, env) -> None:
    folders, raws = members("vit_large_patch16_224", 8, args.work, raw=True)
    base = folders[0].parent / "base"
    files = [f / "model.safetensors" for f in folders]
    arch = ["--arch", "vit_large_patch16_224"]
    out = args.work / "out"
    mk = [args.mergekit, "--quiet"]
    shutil.rmtree(env["ZOO_CACHE"], ignore_errors=True)  # zoo starts with an empty cache
    print("A: 8 x ViT-L, soup", flush=True)
    soup: dict = {}
    run("mergekit-pytorch linear", [*mk, str(mergekit_config("linear", files, None, args.work / "linear.yml")),
                                    str(out)], files + raws, out, soup)
    run("zoo soup, folders", zoo_cmd("soup", folders, out), files + raws, out, soup, env)
    run("zoo soup, raw files", zoo_cmd("soup", raws, out, *arch), files + raws, out, soup, env)
    table(soup, "mergekit-pytorch linear")
    if args.soup_only:
        return
    print("\nA: 8 x ViT-L, TIES (density 0.2)", flush=True)
    ties: dict = {}
    bfile = base / "model.safetensors"
    run("mergekit-pytorch ties", [*mk, str(mergekit_config("ties", files, bfile, args.work / "ties.yml")), str(out)],
        files + raws + [bfile], out, ties)
    run("zoo ties trim=tensor, folders", zoo_cmd("ties", folders, out, "--base", str(base), "-o", "trim=tensor"),
        files + raws + [bfile], out, ties, env)
    run("zoo ties trim=tensor, raw", zoo_cmd("ties", raws, out, *arch, "--base", str(bfile), "-o", "trim=tensor"),
        files + raws + [bfile], out, ties, env)
    run("zoo ties trim=model, folders", zoo_cmd("ties", folders, out, "--base", str(base)),
        files + raws + [bfile], out, ties, env)
    table(ties, "mergekit-pytorch ties")


def section_b(args, env) -> None:
    print("\nB: peak RSS against model size (soup of 4)", flush=True)
    res: dict = {}
    for arch in ("vit_base_patch16_224", "vit_large_patch16_224", "vit_huge_patch14_224"):
        folders, _ = members(arch, 4, args.work)
        size = (folders[0] / "model.safetensors").stat().st_size / GIB
        run(f"{arch} ({size:.2f} GiB each)", zoo_cmd("soup", folders, args.work / "out"),
            [f / "model.safetensors" for f in folders], args.work / "out", res, env)
    table(res, next(iter(res)))


def section_c(args, env) -> None:
    print("\nC: peak RSS against the number of members (ViT-L soup)", flush=True)
    folders, _ = members("vit_large_patch16_224", 8, args.work)
    res: dict = {}
    for n in (2, 4, 8):
        run(f"{n} members", zoo_cmd("soup", folders[:n], args.work / "out"),
            [f / "model.safetensors" for f in folders], args.work / "out", res, env)
    table(res, "2 members")


def section_d(args, env) -> None:
    from memlimit import run_within

    print("\nD: soup of 2 ViT-H under a 1.2 GiB limit", flush=True)
    folders, _ = members("vit_huge_patch14_224", 4, args.work)
    folders = folders[:2]
    out = args.work / "out-limit"
    limit = int(1.2 * GIB)
    drop([f / "model.safetensors" for f in folders])
    t0 = time.perf_counter()
    code, peak, err = run_within(limit, ["combine", "-s", "soup", *sum((["-m", str(f)] for f in folders), []),
                                         "--device", "cpu", "--out", str(out), "--force"], args.work, env)
    wall = time.perf_counter() - t0
    size = (out / "model.safetensors").stat().st_size / GIB if code == 0 else float("nan")
    print(f"  exit {code}, wall {wall:.1f} s, peak RSS {peak / GIB:.2f} GiB under a {limit / GIB:.2f} GiB limit; "
          f"output {size:.2f} GiB {err[-500:]}")
    shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mergekit", default=shutil.which("mergekit-pytorch") or "mergekit-pytorch")
    ap.add_argument("--work", type=Path, default=Path("/tmp/zoo-engine"))
    ap.add_argument("--only", default="A,B,C,D")
    ap.add_argument("--soup-only", action="store_true", help="section A without TIES (2 minutes, not 15)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ZOO_CACHE": str(args.work / "zoo-cache")}
    for s in args.only.split(","):
        {"A": section_a, "B": section_b, "C": section_c, "D": section_d}[s.strip()](args, env)


if __name__ == "__main__":
    main()
