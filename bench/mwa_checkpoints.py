"""MWA against the uniform average of one run's checkpoints, and against the last checkpoint.

    python bench/mwa_checkpoints.py --work /tmp/zoo-bench-mwa [--epochs 5] [--lr 3e-4]
    python bench/mwa_checkpoints.py --work /tmp/zoo-bench-mwa-lora --lora r=8 [--epochs 5] [--lr 1e-3]

One `zoo finetune --snapshots` run of EfficientNet-Lite0 (ImageNet weights, the mnist-shift zoo) on
MNIST: after a linear probe, every fine-tuning epoch is kept as a member. Then the checkpoints are
averaged uniformly (`--strategy soup`) and by MWA (`--strategy mwa`, by training loss and by step, a few
penalties), and every result is measured on the held-out MNIST split, the MNIST test split and the
shifted data (scikit-learn's digits). Prints the Markdown for bench/RESULTS.md; results.json under --work.

With `--lora r=8` (the MWA paper's setting): the linear probe is its own run (`--mode lp`, a full member with
the ten-class head), and the run is a LoRA fine-tune of it (`--mode ft --lora r=8`: PEFT trains the adapter
and the head; LoRA refuses LP-FT), so each snapshot is a PEFT adapter of the probe; every merge is given the
probe as `--base`. The adapters are applied by zoo (the full model each stands for) for every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import zoo
from zoo.registry import load_zoo


def full_run(base: str, train: str, work: Path, epochs: int, lr: float) -> tuple[str | None, str]:
    """LP-FT of every weight; the snapshots are full members. Returns (no merge base, a description)."""
    out = work / "ft"
    if not (out / "zoo.json").exists():
        zoo.finetune(base, train, out, snapshots=work / "snapshots",
                     recipe=zoo.FinetuneRecipe(mode="lp-ft", epochs=epochs, lr=lr))
    return None, f"LP-FT, lr {lr}"


def lora_run(base: str, train: str, work: Path, epochs: int, lr: float, lora: str) -> tuple[str | None, str]:
    """The linear probe, then a LoRA fine-tune of it; the snapshots are adapters of the probe. Run from
    ``work`` so that each adapter names the probe by a relative path (zoo applies it without --base)."""
    os.chdir(work)
    probe = Path("lp")
    if not (probe / "zoo.json").exists():
        zoo.finetune(base, train, probe, recipe=zoo.FinetuneRecipe(mode="lp"))
    if not Path("ft", "zoo.json").exists():
        zoo.finetune(str(probe), train, "ft", snapshots="snapshots", lora=lora, log=print,
                     recipe=zoo.FinetuneRecipe(mode="ft", epochs=epochs, lr=lr))
    return str(work / probe), f"linear probe, then LoRA {lora} of it (PEFT: adapter + head), lr {lr}"


def folder_size(path: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in path.glob(pattern))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/zoo-bench-mwa"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=None, help="default 3e-4 (full), 1e-3 (--lora)")
    ap.add_argument("--lora", default=None, help="e.g. r=8: the run is a LoRA fine-tune; its snapshots adapters")
    ap.add_argument("--penalties", default="1,2,4")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    lr = args.lr if args.lr is not None else (1e-3 if args.lora else 3e-4)
    z = load_zoo("mnist-shift")
    [base] = z.members
    data = {"val": z.data["eval"], "test": str(Path(z.data["eval"]).parent / "test"), "ood": z.data["ood"]}
    t0 = time.perf_counter()
    if args.lora:
        merge_base, what = lora_run(base, z.data["train"], work, args.epochs, lr, args.lora)
    else:
        merge_base, what = full_run(base, z.data["train"], work, args.epochs, lr)
    t_ft = time.perf_counter() - t0
    snaps = work / "snapshots"
    runs = [str(snaps / f"epoch-{i}") for i in range(1, args.epochs + 1)]
    history = json.loads((Path(runs[-1]) / "zoo.json").read_text())["report"]["history"]
    ft_rows = [r for r in history if r.get("phase") == "ft"]

    def measure(model: str) -> dict:
        return {split: zoo.evaluate(model, folder).top1 for split, folder in data.items()}

    results = {"last checkpoint": (measure(runs[-1]), None)}
    merged = work / "merged"
    jobs = [("uniform average (soup)", "soup", {})]
    for by in ("loss", "step"):
        for p in args.penalties.split(","):
            jobs.append((f"MWA by {by}, penalty {p}", "mwa", {"by": by, "penalty": p}))
    for label, strategy, options in jobs:
        folder = merged / label.replace(" ", "-").replace(",", "").replace("(", "").replace(")", "")
        if not (folder / "zoo.json").exists():
            zoo.combine(strategy, runs, base=merge_base, options=options, out=folder, force=True)
        weights = json.loads((folder / "zoo.json").read_text())["report"].get("mwa", {}).get("weights")
        results[label] = (measure(str(folder)), weights)

    print(f"\n{args.epochs} fine-tuning epochs of Lite0 on MNIST ({what}), {t_ft:.0f} s; "
          "training loss per epoch: " + ", ".join(f"{r['loss']:.3f}" for r in ft_rows))
    if args.lora:
        one = folder_size(Path(runs[-1]), "adapter_model.safetensors")
        full = folder_size(merged / "uniform-average-soup", "*.safetensors")
        print(f"one adapter checkpoint: {one / 2**20:.2f} MiB (adapter_model.safetensors); one full checkpoint "
              f"(the soup's model.safetensors): {full / 2**20:.2f} MiB; ratio {one / full:.3f}")
    print("\n| checkpoints merged by | weights (epoch 1 … last) | held-out top-1 | test top-1 | shifted top-1 |")
    print("|---|---|---|---|---|")
    for label, (m, w) in results.items():
        shown = "last only" if label == "last checkpoint" else (
            "uniform" if w is None else " ".join(f"{x:.2f}" for x in w))
        print(f"| {label} | {shown} | {m['val']:.4f} | {m['test']:.4f} | {m['ood']:.4f} |")
    (work / "results.json").write_text(json.dumps({
        "run": what, "seconds": t_ft, "losses": [r["loss"] for r in ft_rows],
        "results": {k: {"metrics": m, "weights": w} for k, (m, w) in results.items()}}, indent=2))


if __name__ == "__main__":
    main()
