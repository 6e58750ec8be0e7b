"""MWA against the uniform average of one run's checkpoints, and against the last checkpoint.

    python bench/mwa_checkpoints.py --work /tmp/zoo-bench-mwa [--epochs 5] [--lr 3e-4]

One `zoo finetune --snapshots` run of EfficientNet-Lite0 (ImageNet weights, the mnist-shift zoo) on
MNIST: after a linear probe, every fine-tuning epoch is kept as a member. Then the checkpoints are
averaged uniformly (`--strategy soup`) and by MWA (`--strategy mwa`, by training loss and by step, a few
penalties), and every result is measured on the held-out MNIST split, the MNIST test split and the
shifted data (scikit-learn's digits). Prints the Markdown for bench/RESULTS.md; results.json under --work.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import zoo
from zoo.registry import load_zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/zoo-bench-mwa"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--penalties", default="1,2,4")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    z = load_zoo("mnist-shift")
    [base] = z.members
    data = {"val": z.data["eval"], "test": str(Path(z.data["eval"]).parent / "test"), "ood": z.data["ood"]}
    t0 = time.perf_counter()
    out, snaps = args.work / "ft", args.work / "snapshots"
    if not (out / "zoo.json").exists():
        zoo.finetune(base, z.data["train"], out, snapshots=snaps,
                     recipe=zoo.FinetuneRecipe(mode="lp-ft", epochs=args.epochs, lr=args.lr))
    t_ft = time.perf_counter() - t0
    runs = [str(snaps / f"epoch-{i}") for i in range(1, args.epochs + 1)]
    history = json.loads((Path(runs[-1]) / "zoo.json").read_text())["report"]["history"]
    ft_rows = [r for r in history if r.get("phase") == "ft"]

    def measure(model: str) -> dict:
        return {split: zoo.evaluate(model, folder).top1 for split, folder in data.items()}

    results = {"last checkpoint": (measure(runs[-1]), None)}
    merged = args.work / "merged"
    jobs = [("uniform average (soup)", "soup", {})]
    for by in ("loss", "step"):
        for p in args.penalties.split(","):
            jobs.append((f"MWA by {by}, penalty {p}", "mwa", {"by": by, "penalty": p}))
    for label, strategy, options in jobs:
        folder = merged / label.replace(" ", "-").replace(",", "").replace("(", "").replace(")", "")
        if not (folder / "zoo.json").exists():
            zoo.combine(strategy, runs, options=options, out=folder, force=True)
        weights = json.loads((folder / "zoo.json").read_text())["report"].get("mwa", {}).get("weights")
        results[label] = (measure(str(folder)), weights)

    print(f"\n{args.epochs} fine-tuning epochs of Lite0 on MNIST (LP-FT, lr {args.lr}), {t_ft:.0f} s; "
          "training loss per epoch: " + ", ".join(f"{r['loss']:.3f}" for r in ft_rows))
    print("\n| checkpoints merged by | weights (epoch 1 … last) | held-out top-1 | test top-1 | shifted top-1 |")
    print("|---|---|---|---|---|")
    for label, (m, w) in results.items():
        shown = "last only" if label == "last checkpoint" else (
            "uniform" if w is None else " ".join(f"{x:.2f}" for x in w))
        print(f"| {label} | {shown} | {m['val']:.4f} | {m['test']:.4f} | {m['ood']:.4f} |")
    (args.work / "results.json").write_text(json.dumps({k: {"metrics": m, "weights": w}
                                                         for k, (m, w) in results.items()}, indent=2))


if __name__ == "__main__":
    main()
