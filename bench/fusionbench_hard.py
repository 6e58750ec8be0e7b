"""FusionBench's own merges side by side with zoo's on the hard 8-task benchmark (bench/merges_hard.py): the
same members, the same data, the same hyperparameters, each tool's merge in a child process of its own.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python bench/fusionbench_hard.py --work /work/hardbench-work \\
        --out /tmp/fbhard --models vit,lite0 --steps vit=200,lite0=100

--work is bench/merges_hard.py's (read only): data/TASK/{val,test}, MODEL/base, MODEL/ft/TASK and, where it
exists, results-MODEL.json, whose λ (``-s auto``'s choice on the validation splits) both tools use (before
that file is written: the auto run's leaderboard, read the same way); else the defaults below. Everything is written under --out (MODEL/TOOL-METHOD/, results-MODEL.json/.md); a
merge already there is reused (--redo to run it again).

The FusionBench environment (never imported by zoo; the FusionBench child runs in it)::

    python3 -m venv /work/fbvenv
    echo /work/basevenv/lib/python3.11/site-packages > /work/fbvenv/lib/python3.11/site-packages/zz_base.pth
    /work/fbvenv/bin/pip install --no-deps fusion-bench==0.2.33
    /work/fbvenv/bin/pip install omegaconf bidict hydra-core lightning datasets  # what its package imports

(torch 2.14, timm and safetensors come from the base venv through the .pth.)

Each method, each tool (the heads are never merged: each task keeps its fine-tune's head):

- zoo: ``python -m zoo combine -s METHOD --base MODEL/base -m MODEL/ft/TASK ... --multi-task -o ...`` (for
  adamerging also ``--eval-data TASK=data/TASK/val ...``);
- FusionBench: ``/work/fbvenv/bin/python bench/fusionbench_merge.py JOB.json`` — its own algorithm classes on
  the headless timm backbones (see that file), and the merge alone timed inside it.

Each child's wall and peak RSS (wait4) include its imports, reading the nine models and writing the result.
Children start from a small launcher process: Linux counts into a process's peak RSS the memory of the
process it was forked from, so a child forked straight from this driver would report at least the driver's
size. (AdaMerging rows measured before the launcher get their RSS from a 10-step run of the same merge.)
A last row gives each child's import floor (torch, timm, safetensors and zoo; FusionBench's modules).

Methods and hyperparameters (the same for both tools):

- ``ta``: zoo ``task-arithmetic -o scale=λ``; FusionBench ``TaskArithmeticAlgorithm(scaling_factor=λ)``;
- ``ties``: zoo ``ties -o scale=λ`` (density 0.2, trimmed over the whole model, disjoint mean);
  FusionBench ``TiesMergingAlgorithm(scaling_factor=λ, threshold=20, merge_func="mean")`` (its config's
  default is ``sum`` at λ = 0.3; ``mean`` is the paper's and zoo's);
- ``tsv``: zoo ``tsv -o scale=α``; FusionBench ``TaskSingularVectorMerging(alpha=α)``;
- ``iso-c`` / ``iso-cts``: zoo ``iso-c`` / ``iso-cts -o scale=α`` (common fraction 0.8);
  FusionBench ``IsotropicMergingInCommon(AndTask)Subspace(scaling_factor=α, common_space_fraction=0.8)``;
- ``adamerging``: layer-wise, Adam lr 1e-3, λ from 0.3, 16 unlabeled images per task and step (each task's
  validation images, preprocessed by zoo's loader for the FusionBench child), --steps steps for both.
  FusionBench's loop runs the wrapped backbone in train mode (BatchNorm normalises by each batch and moves
  its running statistics); zoo keeps it in eval mode and moves the statistics with λ. On Lite0 a second
  FusionBench run with the backbone in eval mode (``adamerging-bn-eval``) tells the two apart.

λ / α: results-MODEL.json's choice where it exists, else TA 0.3, TIES 1, TSV 1, Iso-C 1, Iso-CTS 1 (the
papers' defaults; FusionBench's configs have the same but for TIES). On Lite0 the bench ran the SVD merges
with ``convs=true`` (its one 2-D matrix is the classifier, kept apart); FusionBench treats 2-D tensors only,
so on Lite0 its TSV/Iso-C/Iso-CTS are θ₀ + α·mean(τᵢ) on every tensor: zoo runs twice there, ``convs=true``
(the bench's) and the default (FusionBench's treatment, compared tensor for tensor); α is the convs=true
choice for both. FusionBench's TA and TIES work on the whole state dict, BatchNorm's running statistics
included (TA moves them by λ·Στᵢ; TIES trims and elects over them), where zoo moves them toward the
members' mean; on Lite0 a FusionBench-only row ``ties-no-stats`` runs its TIES functions with the
statistics in its ``remove_keys`` (they stay the base's) and is compared with zoo's TIES.

Evaluation: each merged backbone in each task's fine-tuned model (its own head), ``zoo.evaluate`` top-1 on
the task's test split — the same call for both tools' outputs. Normalised = merged top-1 ÷ the fine-tune's,
averaged over the 8 tasks. Max |zoo − FusionBench| over the backbone's floating tensors, split into weights
and BatchNorm running statistics.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merges_hard import TASKS  # noqa: E402  (bench/ is not a package)

HERE = Path(__file__).resolve().parent
METHODS = ("ta", "ties", "tsv", "iso-c", "iso-cts", "adamerging")
ZOO_NAME = {"ta": "task-arithmetic", "ties": "ties", "tsv": "tsv", "iso-c": "iso-c", "iso-cts": "iso-cts",
            "adamerging": "adamerging"}
BENCH_NAME = {"ta": "task-arithmetic", "ties": "ties", "tsv": "tsv", "iso-c": "iso-c", "iso-cts": "iso-cts"}
DEFAULT_SCALE = {"ta": 0.3, "ties": 1.0, "tsv": 1.0, "iso-c": 1.0, "iso-cts": 1.0}
ADA = {"lr": 1e-3, "init": 0.3, "batch_size": 16}


#: runs a command and writes its peak RSS (wait4) to a file: a small process between the driver and the merge,
#: because Linux counts into a process's peak RSS the memory of the process it was forked from (kept across
#: exec): a child forked from this driver, once it has evaluated models, would report at least the driver's size
LAUNCHER = ("import os, subprocess, sys\n"
            "p = subprocess.Popen(sys.argv[2:])\n"
            "_, status, usage = os.wait4(p.pid, 0)\n"
            "open(sys.argv[1], 'w').write(str(usage.ru_maxrss * 1024))\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")


def run_child(args: list[str], log: Path) -> tuple[float, int]:
    """A child process: (wall seconds, its peak RSS in bytes, through LAUNCHER); its output to ``log``."""
    rss_file = log.with_suffix(".rss")
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, "-S", "-c", LAUNCHER, str(rss_file), *args], stdout=f,
                               stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"failed ({log}): {' '.join(args)}\n{log.read_text()[-3000:]}")
    return wall, int(rss_file.read_text())


def scales(work: Path, model: str) -> tuple[dict[str, float], dict[str, str]]:
    """Each method's λ: the bench's -s auto choice (results-MODEL.json, or before it is written the auto run's
    leaderboard, read as bench/merges_hard.py reads it: each method's first best point), else the default."""
    from merges_hard import CONV_METHODS, METHODS as CANDIDATES, _matches

    found = work / f"results-{model}.json"
    results = json.loads(found.read_text())["results"] if found.exists() else {}
    boards = sorted((work / model).glob("auto-*/zoo.json"), key=lambda p: p.stat().st_mtime)
    board = json.loads(boards[-1].read_text())["auto"]["leaderboard"] if boards and not results else []
    candidates = {**CANDIDATES, **(CONV_METHODS if model == "lite0" else {})}
    out, where = {}, {}
    for m, name in BENCH_NAME.items():
        scale = results.get(name, {}).get("options", {}).get("scale")
        where[m] = f"bench -s auto ({found.name})"
        rows = [r for r in board if _matches(candidates[name], r)]
        if scale is None and rows:
            scale = max(rows, key=lambda r: r["score"])["options"]["scale"]
            where[m] = f"bench -s auto ({boards[-1].parent.name}/zoo.json leaderboard)"
        out[m] = float(scale) if scale is not None else DEFAULT_SCALE[m]
        if scale is None:
            where[m] = "default"
    return out, where


def zoo_side(method: str, model: str, work: Path, out: Path, opts: dict, log: Path) -> dict:
    members = [str(work / model / "ft" / t) for t in TASKS]
    cmd = [sys.executable, "-m", "zoo", "--quiet", "combine", "-s", ZOO_NAME[method], "--base",
           str(work / model / "base"), *sum((["-m", m] for m in members), []), "--multi-task", "--out", str(out),
           "--force", *sum((["-o", f"{k}={v}"] for k, v in opts.items()), [])]
    if method == "adamerging":
        cmd += sum((["--eval-data", f"{t}={work / 'data' / t / 'val'}"] for t in TASKS), [])
    wall, rss = run_child(cmd, log)
    return {"wall_s": wall, "peak_rss": rss, "command": " ".join(cmd[1:])}


def unlabeled_images(work: Path, model: str, folder: Path) -> dict[str, str]:
    """Each task's validation images, preprocessed by zoo's loader for that task's fine-tune (labels dropped),
    as safetensors files the FusionBench child reads."""
    from safetensors.torch import save_file

    from zoo.kit.data import data_config, load_split

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for t in TASKS:
        f = folder / f"{t}.safetensors"
        if not f.exists():
            cfg = json.loads((work / model / "ft" / t / "config.json").read_text())
            split = load_split(work / "data" / t / "val", data_config(cfg["pretrained_cfg"]),
                               label_names=cfg["label_names"], num_classes=cfg["num_classes"])
            save_file({"images": split.images.contiguous()}, str(f))
        files[t] = str(f)
    return files


def fusionbench_side(method: str, model: str, work: Path, out: Path, opts: dict, images: dict | None,
                     fbpython: str, log: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    job = {"method": method, "base": str(work / model / "base"),
           "members": {t: str(work / model / "ft" / t) for t in TASKS}, "options": opts,
           "out": str(out / "backbone.safetensors"), "report": str(out / "report.json")}
    if images is not None:
        job["images"] = images
    (out / "job.json").write_text(json.dumps(job, indent=1))
    wall, rss = run_child([fbpython, str(HERE / "fusionbench_merge.py"), str(out / "job.json")], log)
    return {"wall_s": wall, "peak_rss": rss, **json.loads((out / "report.json").read_text())}


def with_heads(backbone_file: Path, work: Path, model: str, out: Path) -> None:
    """out/TASK: each task's fine-tune (its config, its head) with the merged backbone."""
    from safetensors.torch import load_file, save_file

    backbone = load_file(str(backbone_file))
    base = load_file(str(work / model / "base" / "model.safetensors"))
    for t in TASKS:
        ft = work / model / "ft" / t
        own = load_file(str(ft / "model.safetensors"))
        head = json.loads((ft / "config.json").read_text())["pretrained_cfg"]["classifier"]
        # BatchNorm's integer counters (made floats for FusionBench): the base's, as zoo writes
        sd = {k: (v if k.split(".")[0] == head else base[k] if not v.is_floating_point() else backbone[k].to(v.dtype))
              .contiguous() for k, v in own.items()}
        (out / t).mkdir(parents=True, exist_ok=True)
        save_file(sd, str(out / t / "model.safetensors"), metadata={"format": "pt"})
        shutil.copy(ft / "config.json", out / t / "config.json")


def compare(zoo_out: Path, fb_out: Path) -> dict:
    """max |zoo − FusionBench| over the backbone's floating tensors: weights, and BatchNorm statistics apart."""
    from safetensors.torch import load_file

    ours = load_file(str(zoo_out / TASKS[0] / "model.safetensors"))
    theirs = load_file(str(fb_out / TASKS[0] / "model.safetensors"))
    head = json.loads((zoo_out / TASKS[0] / "config.json").read_text())["pretrained_cfg"]["classifier"]
    row = {"weights": 0.0, "weights_at": "", "statistics": None, "statistics_at": "", "nonfinite_fusionbench": 0,
           "entries": 0, "entries_over_1e-6": 0}
    for k, v in theirs.items():
        if k.split(".")[0] == head or not v.is_floating_point():
            continue
        row["nonfinite_fusionbench"] += int((~v.isfinite()).sum())
        if k.endswith(".running_var"):
            row["negative_running_var"] = row.get("negative_running_var", 0) + int((v < 0).sum())
        delta = (ours[k].float() - v.float()).abs()
        row["entries"] += delta.numel()
        row["entries_over_1e-6"] += int((delta > 1e-6).sum())
        d = float(delta.max())
        kind = "statistics" if k.endswith((".running_mean", ".running_var")) else "weights"
        if row[kind] is None or d > row[kind]:
            row[kind], row[f"{kind}_at"] = d, k
    return row


def zoo_lambda(out: Path) -> dict:
    """zoo's learned λ (mean, min, max over members and tensors) and the entropies it reports."""
    report = json.loads((out / TASKS[0] / "zoo.json").read_text())["report"]["adamerging"]
    lam = np.array(list(report["coefficients"].values()), dtype=float)
    return {"lambda_mean": float(lam.mean()), "lambda_min": float(lam.min()), "lambda_max": float(lam.max()),
            "lambda_shape": list(lam.shape), "entropy": report.get("entropy")}


def evaluate(folder: Path, work: Path) -> dict[str, float]:
    import zoo

    return {t: zoo.evaluate(str(folder / t), str(work / "data" / t / "test")).top1 for t in TASKS}


def normalised(test: dict[str, float], alone: dict[str, float]) -> float:
    return float(np.mean([test[t] / alone[t] for t in TASKS if alone[t] > 0]))


def import_floor(fbpython: str, folder: Path) -> dict:
    """Wall and peak RSS of each tool's child doing nothing but its imports (torch, timm, safetensors and zoo;
    the same and FusionBench's modules used here)."""
    folder.mkdir(parents=True, exist_ok=True)
    zoo = run_child([sys.executable, "-c", "import torch, timm, safetensors.torch, zoo.cli"], folder / "floor-zoo.log")
    fb = run_child([fbpython, "-c", "import timm, torch, safetensors.torch; "
                    "import fusion_bench.method.task_arithmetic.task_arithmetic, "
                    "fusion_bench.method.ties_merging.ties_merging, fusion_bench.method.task_singular_vector.TSVM, "
                    "fusion_bench.method.isotropic_merging.iso, fusion_bench.models.wrappers.layer_wise_fusion"],
                   folder / "floor-fusionbench.log")
    return {"zoo": {"wall_s": zoo[0], "peak_rss": zoo[1]}, "fusionbench": {"wall_s": fb[0], "peak_rss": fb[1]}}


def variants(method: str, model: str, lam: dict, steps: int) -> list[tuple[str, dict | None, dict | None]]:
    """(row tag, zoo's options or None, FusionBench's options or None) of each run of ``method``."""
    if method == "adamerging":
        runs = [("adamerging", {"steps": steps}, {"steps": steps, **ADA})]
        if model == "lite0":  # FusionBench's loop runs the backbone in train mode: BatchNorm on batch statistics
            runs.append(("adamerging-bn-eval", None, {"steps": steps, **ADA, "train_mode": False}))
        return runs
    fb = {"scale": lam[method], **({"threshold": 20, "merge_func": "mean"} if method == "ties" else {}),
          **({"common_space_fraction": 0.8} if method == "iso-cts" else {})}
    if method == "ties" and model == "lite0":
        # FusionBench's TIES trims and elects over BatchNorm's statistics too: its functions without them as well
        return [(method, {"scale": lam[method]}, fb), ("ties-no-stats", None, {**fb, "remove_statistics": True})]
    if method in ("tsv", "iso-c", "iso-cts") and model == "lite0":
        # the bench's setting (convs as matrices), zoo alone; then FusionBench's treatment, both tools
        return [(f"{method}-convs", {"scale": lam[method], "convs": "true"}, None), (method, {"scale": lam[method]}, fb)]
    return [(method, {"scale": lam[method]}, fb)]


def remeasure_rss(row: dict, method: str, model: str, work: Path, root: Path, args) -> None:
    """Peak RSS of a row measured before LAUNCHER, again: the same merge with 10 steps (AdaMerging's memory
    peaks in its first step; wall and accuracy stay the full run's)."""
    for side in ("zoo", "fusionbench"):
        opts = row.get(f"{side}_options")
        if side not in row or opts is None:
            continue
        short = {**opts, "steps": 10}
        scratch = root / f"rss-{side}-{row['method']}"
        if side == "zoo":
            rss = zoo_side(method, model, work, scratch, short, root / f"{scratch.name}.log")["peak_rss"]
        else:
            images = unlabeled_images(work, model, root / "images")
            rss = fusionbench_side(method, model, work, scratch, short, images, args.fbpython,
                                   root / f"{scratch.name}.log")["peak_rss"]
        row[side].update(peak_rss=rss, peak_rss_from="a 10-step run of the same merge (through the launcher)",
                         peak_rss_before=row[side]["peak_rss"])
    row["rss"] = "launcher"
    print(f"[{model}] {row['method']}: peak RSS measured again", flush=True)


def run_model(model: str, args) -> dict:
    work, root = args.work, args.out / model
    root.mkdir(parents=True, exist_ok=True)
    lam, lam_from = scales(work, model)
    steps = args.steps[model]
    alone_file = root / "fine-tunes.json"
    if not alone_file.exists():
        alone_file.write_text(json.dumps({t: zoo_top1(work / model / "ft" / t, work, t) for t in TASKS}))
    alone = json.loads(alone_file.read_text())
    rows = []
    for method in args.methods:
        for tag, zoo_opts, fb_opts in variants(method, model, lam, steps):
            row = {"model": model, "method": tag, "zoo_options": zoo_opts, "fusionbench_options": fb_opts,
                   "rss": "launcher",
                   "lambda_from": lam_from.get(method, f"steps {steps}")}
            # by options: another λ (the bench's results appearing) is another run
            # (and "launcher": rows measured before it had peak RSS counted from the driver's size)
            key = json.dumps([zoo_opts, fb_opts, *(["launcher"] if method != "adamerging" else [])]).encode()
            done = root / f"{tag}-{hashlib.sha256(key).hexdigest()[:8]}.json"
            if done.exists() and not args.redo:
                row = json.loads(done.read_text())
                if row.get("rss") != "launcher":  # an AdaMerging run from before the launcher: its memory again
                    remeasure_rss(row, method, model, work, root, args)
                    done.write_text(json.dumps(row, indent=1))
                rows.append(row)
                print(f"[{model}] {tag}: cached", flush=True)
                continue
            if zoo_opts is not None:
                print(f"[{model}] {tag}: zoo ...", flush=True)
                z = zoo_side(method, model, work, root / f"zoo-{tag}", zoo_opts, root / f"zoo-{tag}.log")
                row["zoo"] = {**z, "test": evaluate(root / f"zoo-{tag}", work)}
                if method == "adamerging":
                    row["zoo"]["lambda"] = zoo_lambda(root / f"zoo-{tag}")
            if fb_opts is not None:
                print(f"[{model}] {tag}: FusionBench ...", flush=True)
                images = unlabeled_images(work, model, args.out / model / "images") if method == "adamerging" else None
                fb_dir = root / f"fusionbench-{tag}"
                f = fusionbench_side(method, model, work, fb_dir, fb_opts, images, args.fbpython,
                                     root / f"fusionbench-{tag}.log")
                with_heads(fb_dir / "backbone.safetensors", work, model, fb_dir)
                row["fusionbench"] = {**f, "test": evaluate(fb_dir, work)}
                if zoo_opts is not None or tag == "ties-no-stats":  # the latter against zoo's ties
                    row["diff"] = compare(root / f"zoo-{method}", fb_dir)
            for side in ("zoo", "fusionbench"):
                if side in row:
                    row[side]["normalised"] = normalised(row[side]["test"], alone)
            done.write_text(json.dumps(row, indent=1))
            rows.append(row)
            print(f"[{model}] {tag}: " + json.dumps({s: {k: row[s][k] for k in ("normalised", "wall_s")}
                                                      for s in ("zoo", "fusionbench") if s in row}), flush=True)
    return {"fine_tunes": alone, "rows": rows, "lambda": lam, "lambda_from": lam_from, "steps": steps,
            "import_floor": import_floor(args.fbpython, root)}


def zoo_top1(folder: Path, work: Path, task: str) -> float:
    import zoo

    return zoo.evaluate(str(folder), str(work / "data" / task / "test")).top1


def table(model: str, result: dict) -> str:
    alone, short = result["fine_tunes"], [t.replace("rotated-digits-parity", "rot-dig-par") for t in TASKS]
    head = ("| method | tool | " + " | ".join(short) + " | mean | norm. | wall (child) | peak RSS | merge alone "
            "| max abs diff: weights / BN stats (AdaMerging: learned λ, mean [min, max]) |")
    lines = [head, "|" + "---|" * (len(TASKS) + 8),
             "| fine-tunes | — | " + " | ".join(f"{alone[t]:.3f}" for t in TASKS)
             + f" | {np.mean(list(alone.values())):.3f} | 1 | | | | |"]
    for r in result["rows"]:
        for side in ("zoo", "fusionbench"):
            if side not in r:
                continue
            s = r[side]
            opts = r[f"{side}_options"] or {}
            shown = ", ".join(f"{k}={v}" for k, v in opts.items() if k not in ("threshold", "merge_func", "lr",
                                                                                "init", "batch_size"))
            if opts.get("train_mode") is False:
                shown = f"steps={opts['steps']}, backbone in eval mode"
            if opts.get("remove_statistics"):
                shown = f"scale={opts['scale']}, BN statistics left out (the base's)"
            diff = ""
            if r["method"] == "adamerging":  # not deterministic: the learned λ instead
                lam = s["lambda"] if side == "zoo" else s
                diff = f"λ {lam['lambda_mean']:.3f} [{lam['lambda_min']:.2f}, {lam['lambda_max']:.2f}]"
            elif side == "fusionbench" and "diff" in r:
                d = r["diff"]
                diff = f"{d['weights']:.1e}" + (f" / {d['statistics']:.1e}" if d["statistics"] is not None else "")
                if d["entries_over_1e-6"]:
                    diff += f" ({d['entries_over_1e-6']:,} of {d['entries']:,} entries differ by > 1e-6)"
                if d.get("negative_running_var"):
                    diff += f"; FusionBench: {d['negative_running_var']} negative BN running variances"
                if d["nonfinite_fusionbench"]:
                    diff += f" ({d['nonfinite_fusionbench']} non-finite)"
            merge = f"{s['seconds']:.1f} s" if "seconds" in s else ""
            lines.append(f"| {r['method']} ({shown}) | {side} | " + " | ".join(f"{s['test'][t]:.3f}" for t in TASKS)
                         + f" | {np.mean(list(s['test'].values())):.3f} | {s['normalised']:.3f} | {s['wall_s']:.1f} s"
                         f" | {s['peak_rss'] / 2**20:.0f} MiB | {merge} | {diff} |")
    floor = result["import_floor"]
    lines.append("| (each child's imports alone: zoo / FusionBench) | | " + " | " * (len(TASKS) + 2)
                 + f"{floor['zoo']['wall_s']:.1f} s / {floor['fusionbench']['wall_s']:.1f} s | "
                 f"{floor['zoo']['peak_rss'] / 2**20:.0f} / {floor['fusionbench']['peak_rss'] / 2**20:.0f} MiB | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/work/hardbench-work"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/fbhard"))
    ap.add_argument("--models", default="vit,lite0")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", default="vit=200,lite0=100", help="AdaMerging's steps per model (both tools)")
    ap.add_argument("--fbpython", default="/work/fbvenv/bin/python")
    ap.add_argument("--redo", action="store_true", help="run merges again even where --out has them")
    args = ap.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        ap.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    args.steps = {k: int(v) for k, _, v in (s.partition("=") for s in args.steps.split(","))}
    import torch

    for model in [m for m in args.models.split(",") if m]:
        load = os.getloadavg()
        t0 = time.perf_counter()
        result = run_model(model, args)
        result.update(load_start=load, load_end=os.getloadavg(), seconds=time.perf_counter() - t0,
                      torch=torch.__version__, threads=os.environ.get("OMP_NUM_THREADS"))
        (args.out / f"results-{model}.json").write_text(json.dumps(result, indent=1))
        text = table(model, result)
        (args.out / f"results-{model}.md").write_text(text + "\n")
        print(f"\n[{model}] λ: {result['lambda']} ({result['lambda_from']}); AdaMerging steps {result['steps']}; "
              f"load {load} → {result['load_end']}\n\n{text}\n", flush=True)


if __name__ == "__main__":
    main()
