"""Task-vector merges in the "same task" setting: several fine-tunes of one base on one task.

    python bench/merges_same_task.py [--work /tmp/zoo-bench-merges] [--zoo digits|mnist-shift|both]
                                     [--epochs 2] [--fresh]

Two zoos:

- digits-demo: base = members/base, fine-tunes = ft-lr3e-3, ft-lr1e-3, ft-ls0.1, ft-seed4, ft-long
  (test_efficientnet on scikit-learn's digits); held-out = data/val, final number = data/test.
- mnist-shift: EfficientNet-Lite0 (ImageNet weights) at 64 px. The base is a linear probe on MNIST
  (`zoo finetune --mode lp`), then four full fine-tunes of it (`--mode ft`, different seeds and learning
  rates); held-out = data/val (MNIST), test = data/test (MNIST), shifted = data/ood (scikit-learn digits).

Every model is made with the real CLI (`zoo finetune`, `zoo combine ... --quiet`) through subprocess and
measured with `zoo eval --json` on every split. Anything that selects (greedy soup, the sweeps) is given
only the val split; test and ood are never passed to `zoo combine`. The val top-1 each `zoo combine`
writes to zoo.json is cross-checked against `zoo eval`.

Everything is cached under --work (fine-tunes, merges, evaluations), so a rerun reuses it; --fresh
redoes the merges and evaluations (not the fine-tunes). Prints one Markdown table per zoo and writes
them, with every number, to WORK/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from zoo.registry import load_zoo

DIGITS_FT = ["ft-lr3e-3", "ft-lr1e-3", "ft-ls0.1", "ft-seed4", "ft-long"]
# mnist-shift fine-tunes of the linear probe: (seed, lr). BatchNorm statistics frozen, see below.
MNIST_FT = [(0, 1e-4), (1, 1e-4), (2, 3e-4), (3, 3e-5)]

# (label, strategy, options, needs --base). Every combine also gets --eval-data val (held-out only).
METHODS = [
    ("soup uniform", "soup", [], False),
    ("soup greedy", "soup", ["mode=greedy"], False),
    ("model-stock", "model-stock", [], True),
    ("ties (density 0.2, λ 1)", "ties", [], True),
    ("ties, λ sweep 0.2:1.2:0.2", "ties", ["scale=0.2:1.2:0.2"], True),
    ("dare then=ta (p 0.9, λ 0.3)", "dare", [], True),
    ("dare then=ties (p 0.9, λ 1)", "dare", ["then=ties"], True),
    ("task arithmetic λ 0.3", "task-arithmetic", [], True),
    ("task arithmetic, λ sweep 0:1:0.1", "task-arithmetic", ["scale=0:1:0.1"], True),
]


def zoo_cli(*args: str, log: Path | None = None) -> tuple[str, float]:
    """Run `zoo ARGS`; return (stdout, seconds). Raises with the command and stderr on failure."""
    cmd = ["zoo", *args]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n# rc={p.returncode} {dt:.1f}s\n{p.stderr[-4000:]}\n")
    if p.returncode != 0:
        raise RuntimeError(f"command failed (rc={p.returncode}): {' '.join(cmd)}\n{p.stderr[-4000:]}")
    return p.stdout, dt


def slug(label: str) -> str:
    keep = "".join(c if c.isalnum() or c in ".-" else "-" for c in label)
    return "-".join(s for s in keep.split("-") if s)


class Bench:
    def __init__(self, work: Path, splits: dict[str, str], fresh: bool):
        self.work, self.splits, self.fresh = work, splits, fresh
        (work / "evals").mkdir(parents=True, exist_ok=True)
        self.log = work / "commands.log"
        self.timings_file = work / "timings.json"
        self.timings = json.loads(self.timings_file.read_text()) if self.timings_file.exists() else {}

    def _time(self, key: str, seconds: float) -> None:
        self.timings[key] = seconds
        self.timings_file.write_text(json.dumps(self.timings, indent=1))

    def evaluate(self, name: str, model: Path | str) -> dict[str, dict]:
        out = {}
        for split, path in self.splits.items():
            f = self.work / "evals" / f"{slug(name)}.{split}.json"
            if f.exists() and not self.fresh:
                out[split] = json.loads(f.read_text())
                continue
            stdout, dt = zoo_cli("eval", str(model), "--data", path, "--json", log=self.log)
            out[split] = json.loads(stdout.strip().splitlines()[-1])
            f.write_text(json.dumps(out[split]))
            self._time(f"eval {name} {split}", dt)
        return out

    def combine(self, label, strategy, options, base, members) -> dict:
        out = self.work / "merges" / slug(label)
        meta = out / "zoo.json"
        if self.fresh or not meta.exists():
            args = ["combine", "--strategy", strategy, "--out", str(out), "--force", "--quiet",
                    "--eval-data", self.splits["val"]]
            for m in members:
                args += ["-m", str(m)]
            if base is not None:
                args += ["--base", str(base)]
            for o in options:
                args += ["-o", o]
            try:
                _, dt = zoo_cli(*args, log=self.log)
            except RuntimeError as e:
                print(f"!! {label}: {e}", file=sys.stderr)
                return {"label": label, "error": str(e)}
            self._time(f"combine {label}", dt)
            if self.fresh:
                for f in (self.work / "evals").glob(f"{slug(label)}.*.json"):
                    f.unlink()
        info = json.loads(meta.read_text())
        row = {"label": label, "strategy": strategy, "options": info.get("options", {}),
               "zoo_json_val_top1": (info.get("metrics") or {}).get("top1"), "dir": str(out)}
        report = info.get("report") or {}
        if "sweep" in report:
            row["sweep"] = report["sweep"]
        for k in ("ingredients", "kept", "accepted"):
            if k in report:
                row[k] = report[k]
        row["metrics"] = self.evaluate(label, out)
        return row

    def member(self, label, path) -> dict:
        return {"label": label, "dir": str(path), "metrics": self.evaluate(label, path)}


def chosen(row: dict) -> str:
    """What a selecting method picked: the kept sweep value, or the greedy soup's ingredients."""
    opts = row.get("options", {})
    if "sweep" in row:
        sw = row["sweep"]
        return f"{sw['option']}={sw['best']:g}"
    if opts.get("mode") == "greedy" and "ingredients" in row:
        return f"{len(row['ingredients'])} kept: " + ", ".join(row["ingredients"])
    return ""


def table(rows: list[dict], splits: list[str]) -> str:
    heads = {"val": "val top-1 (%)", "test": "test top-1 (%)", "ood": "ood (shifted) top-1 (%)"}
    lines = ["| model | chosen on val | " + " | ".join(heads[s] for s in splits) + " |",
             "|---|---|" + "---:|" * len(splits)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | failed | " + " | ".join("—" for _ in splits) + " |")
            continue
        cells = [f"{100 * r['metrics'][s]['top1']:.2f}" for s in splits]
        lines.append(f"| {r['label']} | {chosen(r)} | " + " | ".join(cells) + " |")
    for r in rows:
        if "sweep" in r:
            sw = r["sweep"]
            curve = ", ".join(f"{p['value']:g}: {100 * p['metrics']['top1']:.1f}" for p in sw["points"])
            lines.append(f"\n{r['label']}, val top-1 (%) per {sw['option']}: {curve}")
    return "\n".join(lines)


def build_mnist_members(work: Path, z, epochs: int, bench: Bench) -> tuple[Path, list[tuple[str, Path]]]:
    mdir = work / "members"
    base = mdir / "base"
    if not (base / "model.safetensors").exists():
        _, dt = zoo_cli("finetune", z.members[0], "--train-data", z.data["train"], "--mode", "lp",
                        "--out", str(base), "--force", "--quiet", log=bench.log)
        bench._time("finetune base (lp)", dt)
    fts = []
    for seed, lr in MNIST_FT:
        name = f"ft-s{seed}-lr{lr:g}"
        out = mdir / name
        if not (out / "model.safetensors").exists():
            # --bn frozen: with the default (--bn auto = train for --mode ft) the running statistics are
            # replaced by MNIST's in the first batches and the probed head collapses (54% val, measured).
            _, dt = zoo_cli("finetune", str(base), "--train-data", z.data["train"], "--mode", "ft",
                            "--epochs", str(epochs), "--seed", str(seed), "--lr", f"{lr:g}", "--bn", "frozen",
                            "--out", str(out), "--force", "--quiet", log=bench.log)
            bench._time(f"finetune {name}", dt)
        fts.append((name, out))
    return base, fts


def run_zoo(which: str, work: Path, args) -> dict:
    z = load_zoo("digits-demo" if which == "digits" else "mnist-shift")
    splits = {"val": z.data["eval"], "test": z.data["test"]}
    if "ood" in z.data:
        splits["ood"] = z.data["ood"]
    bench = Bench(work, splits, args.fresh)
    t0 = time.perf_counter()
    if which == "digits":
        root = Path(z.members[0]).parent
        base = root / "base"
        fts = [(n, root / n) for n in DIGITS_FT]
        assert all(p.exists() for _, p in fts) and base.exists()
    else:
        base, fts = build_mnist_members(work, z, args.epochs, bench)
    rows = [bench.member("base" + (" (linear probe)" if which != "digits" else ""), base)]
    rows += [bench.member(n, p) for n, p in fts]
    members = [p for _, p in fts]
    for label, strategy, options, needs_base in METHODS:
        rows.append(bench.combine(label, strategy, options, base if needs_base else None, members))
    checks = []
    for r in rows:
        zj = r.get("zoo_json_val_top1")
        if zj is not None and abs(zj - r["metrics"]["val"]["top1"]) > 1e-6:
            checks.append(f"{r['label']}: zoo.json val top-1 {zj:.4f} != zoo eval {r['metrics']['val']['top1']:.4f}")
    md = table(rows, list(splits))
    n = {s: rows[0]["metrics"][s]["n"] for s in splits}
    return {"zoo": z.name if hasattr(z, "name") else which, "splits": splits, "n_images": n, "rows": rows,
            "markdown": md, "checks": checks, "timings_s": bench.timings, "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/zoo-bench-merges"))
    ap.add_argument("--zoo", choices=["digits", "mnist-shift", "both"], default="both")
    ap.add_argument("--epochs", type=int, default=2, help="mnist-shift fine-tune epochs")
    ap.add_argument("--fresh", action="store_true", help="redo merges and evaluations (fine-tunes stay cached)")
    args = ap.parse_args()
    if shutil.which("zoo") is None:
        sys.exit("`zoo` is not on PATH: activate the project's environment")
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {}
    for which in (["digits", "mnist-shift"] if args.zoo == "both" else [args.zoo]):
        res = run_zoo(which, args.work / which, args)
        results[which] = res
        print(f"\n### {which} (n = " + ", ".join(f"{k} {v}" for k, v in res["n_images"].items()) + ")\n")
        print(res["markdown"])
        for c in res["checks"]:
            print(f"!! {c}")
        print(f"\nwall time {res['wall_s']:.0f} s")
    results["this_run_wall_s"] = time.perf_counter() - t0  # cached steps cost ~0: see each zoo's timings_s
    results["env"] = {"ZOO_CACHE": os.environ.get("ZOO_CACHE")}
    out = args.work / "results.json"
    prev = json.loads(out.read_text()) if out.exists() else {}
    prev.update(results)
    out.write_text(json.dumps(prev, indent=1, default=str))
    print(f"\nresults: {out}  (this run {results['this_run_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
