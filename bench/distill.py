"""Distillation on real teachers: student vs ensemble vs best teacher vs the same student on labels alone.

    python bench/distill.py --work /tmp/distill-bench [--epochs 5]

Teachers: three members of the digits-demo zoo (two architectures: test_efficientnet fine-tuned and
trained independently, test_resnet), on scikit-learn's digits. Students, each trained twice with the
same budget (epochs, batch, AdamW, learning rate, schedule, no weight decay) — by MEAL V2 from the
teachers, and by cross-entropy on the labels (``zoo finetune --mode ft``):
(a) the base member the fine-tunes started from (MEAL V2's "good initialisation"),
(b) a fresh test_efficientnet. Then training throughput (images/s) with the teachers' outputs
cached against teachers run on every batch, in one run. Prints the markdown for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import zoo
from zoo.demos import ensure_built


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    root = ensure_built("digits")
    teachers = [str(root / "members" / m) for m in ("ft-lr3e-3", "independent", "other-arch")]
    train, val = str(root / "data" / "train"), str(root / "data" / "val")
    budget = {"epochs": args.epochs, "lr": args.lr, "weight_decay": 0.0, "batch_size": 64, "warmup_epochs": 0.5}

    rows = {}
    first = zoo.combine("distill", teachers, train_data=train, eval_data=val, out=args.work / "a-meal",
                        force=True, options={**budget, "student": str(root / "members" / "base")})
    ev = first.report["evaluation"]
    rows["ensemble of the 3 teachers"] = ev["ensemble"]["top1"]
    for name, m in ev["teachers"].items():
        rows[f"teacher {name}"] = m["top1"]
    rows["(a) base start, MEAL V2"] = ev["student"]["top1"]
    rows["(a) base start, labels only"] = zoo.finetune(
        str(root / "members" / "base"), train, args.work / "a-labels", eval_data=val, force=True,
        recipe=zoo.FinetuneRecipe(mode="ft", **budget)).metrics["top1"]
    fresh = zoo.combine("distill", teachers, train_data=train, eval_data=val, out=args.work / "b-meal", force=True,
                        options={**budget, "student": "test_efficientnet"})
    rows["(b) fresh test_efficientnet, MEAL V2"] = fresh.report["evaluation"]["student"]["top1"]
    # the same fresh start trained on labels: a fresh member folder from the same seed, then zoo finetune
    import torch

    from zoo.demos.digits import new_model, save_member

    torch.manual_seed(0)
    fresh_member = args.work / "fresh-test_efficientnet"
    save_member(new_model("test_efficientnet", 0), fresh_member)
    rows["(b) fresh test_efficientnet, labels only"] = zoo.finetune(
        str(fresh_member), train, args.work / "b-labels", eval_data=val, force=True,
        recipe=zoo.FinetuneRecipe(mode="ft", **budget)).metrics["top1"]

    # throughput: cold cache (teachers' first pass included), warm cache, and teachers live
    speed = {}
    n = len(list(Path(train).glob("*/*.png")))
    cold = args.work / f"train-{time.time_ns()}"
    shutil.copytree(train, cold)  # a new path: the teachers' logits are not in the cache yet
    for label, data, mode in (("cached, first run (teachers' pass included)", str(cold), "cached"),
                              ("cached, teachers' logits on disk", str(cold), "cached"),
                              ("live: teachers run on every batch", str(cold), "live")):
        start = time.perf_counter()
        zoo.combine("distill", teachers, train_data=data, out=args.work / "speed", force=True,
                    options={**budget, "epochs": 2, "teacher_outputs": mode, "student": str(root / "members" / "base")})
        speed[label] = 2 * n / (time.perf_counter() - start)

    print(f"Teachers on scikit-learn digits ({n} training images), held-out top-1 on {val.split('/')[-1]}:\n")
    print("| model | held-out top-1 (%) |\n|---|---:|")
    for k, v in rows.items():
        print(f"| {k} | {v * 100:.2f} |")
    print("\n| training | images/s (2 epochs, end to end) |\n|---|---:|")
    for k, v in speed.items():
        print(f"| {k} | {v:.0f} |")
    ratio = speed["cached, teachers' logits on disk"] / speed["live: teachers run on every batch"]
    print(f"\ncached (on disk) / live: {ratio:.2f}×")
    (args.work / "report.json").write_text(json.dumps({"top1": rows, "images_per_s": speed}, indent=2))


if __name__ == "__main__":
    main()
