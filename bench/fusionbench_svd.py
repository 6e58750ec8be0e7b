"""TSV-M, Iso-C and Iso-CTS: `zoo combine -s tsv / iso-c / iso-cts` against FusionBench's own functions, tensor
for tensor, on real fine-tunes.

    /work/fbvenv/bin/python bench/fusionbench_svd.py --work /tmp/zoo-bench-fbsvd

The environment (FusionBench is never imported by zoo; it lives in this venv only)::

    python3 -m venv /work/fbvenv
    echo /work/basevenv/lib/python3.11/site-packages > /work/fbvenv/lib/python3.11/site-packages/zz_base.pth
    /work/fbvenv/bin/pip install --no-deps fusion-bench==0.2.33
    /work/fbvenv/bin/pip install omegaconf bidict hydra-core lightning datasets  # what its package imports
    /work/fbvenv/bin/pip install --no-deps -e .

(torch, timm and safetensors come from the base venv through the .pth.)

Member sets:

- ``digits``: the digits-demo zoo's base and its five fine-tunes (timm ``test_efficientnet``: one 2-D
  matrix, the classifier; convolutions and 1-D tensors are averaged by both tools);
- ``vit``: the stitch-demo zoo's ``vit-l`` (timm ``test_vit``, 6 blocks, width 64) as the base and three
  ``zoo finetune`` runs of it on the digits training split (1 epoch; learning rates 1e-3, 3e-4 and 1e-4),
  written under --work once and reused: 26 2-D matrices (qkv, proj, fc1, fc2, head).

FusionBench side: ``TSVM_utils.compute_and_sum_svd_mem_reduction`` (what its ``TaskSingularVectorMerging``
runs), ``iso_utils.iso_c`` and ``iso_utils.iso_cts`` (common_space_fraction 0.8) on the task vectors of
the floating tensors (``state_dict_sub``), then θ₀ + α·τ_m with its ``state_dict_mul`` / ``state_dict_add``
as its algorithm classes do (α = 1). Integer buffers (``num_batches_tracked``) are left out: zoo copies them
from the base. zoo side: ``python -m zoo combine`` in a child process (wall time and peak RSS from wait4).
Prints the Markdown for bench/RESULTS.md and writes results.json under --work.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

METHODS = ("tsv", "iso-c", "iso-cts")


def finetunes_of_vit(work: Path) -> tuple[Path, list[Path]]:
    from zoo.demos import ensure_built

    stitch, digits = ensure_built("stitch"), ensure_built("digits")
    base = stitch / "members" / "vit-l"
    members = []
    for lr in ("1e-3", "3e-4", "1e-4"):
        out = work / f"vit-ft-{lr}"
        if not (out / "model.safetensors").exists():
            subprocess.run([sys.executable, "-m", "zoo", "--quiet", "finetune", str(base), "--train-data",
                            str(digits / "data" / "train"), "--epochs", "1", "--lr", lr, "--out", str(out), "--force"],
                           check=True)
        members.append(out)
    return base, members


def member_sets(work: Path) -> dict[str, tuple[Path, list[Path]]]:
    from zoo.demos import ensure_built

    d = ensure_built("digits") / "members"
    return {"digits": (d / "base", [d / n for n in ("ft-lr3e-3", "ft-lr1e-3", "ft-seed4", "ft-long", "ft-ls0.1")]),
            "vit": finetunes_of_vit(work)}


def fusionbench(method: str, base: dict, thetas: list[dict]) -> tuple[dict, float]:
    """FusionBench's merge of the floating tensors, and its wall time (seconds)."""
    from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
    from fusion_bench.method.task_singular_vector.utils.TSVM_utils import compute_and_sum_svd_mem_reduction
    from fusion_bench.utils.state_dict_arithmetic import state_dict_add, state_dict_mul, state_dict_sub

    floats = {k: v for k, v in base.items() if v.is_floating_point()}
    start = time.perf_counter()
    tvs = [state_dict_sub({k: t[k] for k in floats}, floats) for t in thetas]
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():  # it prints a line per tensor
        if method == "tsv":
            merged = state_dict_add(state_dict_mul(compute_and_sum_svd_mem_reduction(tvs, accelerator="cpu"), 1.0),
                                    floats)
        elif method == "iso-c":
            merged = state_dict_add(floats, state_dict_mul(iso_c(tvs, accelerator="cpu"), 1.0))
        else:
            merged = state_dict_add(floats, state_dict_mul(iso_cts(tvs, 0.8, accelerator="cpu"), 1.0))
    return merged, time.perf_counter() - start


def zoo_combine(method: str, base: Path, members: list[Path], out: Path) -> tuple[float, int]:
    """`zoo combine` in a child process: (wall seconds, peak RSS in bytes)."""
    args = [sys.executable, "-m", "zoo", "--quiet", "combine", "-s", method, "--base", str(base)]
    args += sum((["-m", str(m)] for m in members), []) + ["--out", str(out), "--force"]
    start = time.perf_counter()
    proc = subprocess.Popen(args)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"zoo combine -s {method} failed")
    return wall, usage.ru_maxrss * 1024


def compare(theirs: dict, ours: dict, base: dict) -> dict:
    """The largest |zoo − FusionBench| over every floating tensor, where it is, and relative to the task vector."""
    worst, where, rel, matrices = 0.0, "", 0.0, 0
    for k, v in theirs.items():
        diff = float((ours[k].float() - v.float()).abs().max()) if v.numel() else 0.0
        matrices += v.dim() == 2
        if diff > worst:
            worst, where = diff, k
        moved = float((v.float() - base[k].float()).abs().max()) if v.numel() else 0.0
        if moved > 0:
            rel = max(rel, diff / moved)
    return {"max_abs_diff": worst, "at": where, "max_diff_over_max_task_vector": rel, "tensors": len(theirs),
            "matrices": matrices}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/zoo-bench-fbsvd"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    import fusion_bench

    rows = []
    for name, (base_dir, members) in member_sets(args.work).items():
        base = load_file(str(base_dir / "model.safetensors"))
        thetas = [load_file(str(m / "model.safetensors")) for m in members]
        size = sum((m / "model.safetensors").stat().st_size for m in [base_dir, *members])
        for method in METHODS:
            out = args.work / f"{name}-{method}"
            wall, rss = zoo_combine(method, base_dir, members, out)
            ours = load_file(str(out / "model.safetensors"))
            theirs, fb_wall = fusionbench(method, base, thetas)
            row = {"set": name, "method": method, "members": len(members), "input_bytes": size, "zoo_wall_s": wall,
                   "zoo_peak_rss": rss, "fusionbench_wall_s": fb_wall, **compare(theirs, ours, base)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (args.work / "results.json").write_text(json.dumps({"fusion_bench": fusion_bench.__version__ if hasattr(
        fusion_bench, "__version__") else "0.2.33", "torch": torch.__version__, "rows": rows}, indent=1))
    print("\n| members | method | tensors (2-D) | max abs diff | at | ÷ max abs task vector | zoo wall, peak RSS "
          "| FusionBench wall (in process) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']}: base + {r['members']} ({r['input_bytes'] / 2**20:.1f} MiB) | `{r['method']}` | "
              f"{r['tensors']} ({r['matrices']}) | {r['max_abs_diff']:.2e} | `{r['at']}` | "
              f"{r['max_diff_over_max_task_vector']:.1e} | {r['zoo_wall_s']:.1f} s, {r['zoo_peak_rss'] / 2**30:.2f} GiB "
              f"| {r['fusionbench_wall_s']:.2f} s |")


if __name__ == "__main__":
    main()
