"""Merging LoRA adapters of four tasks: zoo's full merge, zoo's merged adapter at ranks 8/16/32, PEFT's own.

    python bench/lora_merges.py --work /tmp/zoo-bench-lora [--epochs 3] [--lr 2e-3] [--ranks 8,16,32]

The four tasks, the base (EfficientNet-Lite0, ImageNet, 64 px), the methods, their λ grids and the measure
are bench/merges_multi_task.py's, except the plain average: task arithmetic at λ = 1/4, since zoo refuses
the soup with ``--multi-task``. Each task gets a LoRA adapter instead of a full fine-tune: ``zoo finetune
--lora r=8`` (PEFT LoRA on every 1×1 convolution, its own new head saved whole as ``modules_to_save``).

- zoo, full merge: ``zoo combine --multi-task`` of the four adapters with each method (the merged network
  with each task's head; λ chosen on the validation splits, the test splits measured once).
- zoo, merged adapter: the same with ``--format adapter -o rank=R`` for each R of --ranks (one adapter per
  task: the merged LoRA and that task's head), with its file size and the reconstruction error zoo reports.
  Skipped, with a line saying why, where this zoo refuses ``--multi-task --format adapter``.
- PEFT: the four adapters loaded into one ``PeftModel`` (``from_pretrained`` and ``load_adapter``), merged by
  ``add_weighted_adapter`` with ``linear``, ``ties`` (zoo's TIES density, 0.2), ``svd`` (``svd_rank`` 8) and,
  as a check, ``cat`` (exact, rank 32) — weights λ for all four chosen on validation among zoo's grid for the
  matching method. PEFT cannot merge the heads (each adapter's ``modules_to_save``; peft #1595), so each
  adapter is loaded without its head (a copy of its folder without the ``classifier`` tensors and
  ``modules_to_save``) and each task is measured with the merged adapter and that task's own head put back
  as the base's classifier (timm's ``reset_classifier`` to its classes, its saved weights).

Normalised accuracy is merged top-1 ÷ the task's own adapter's top-1. Prints the Markdown for bench/RESULTS.md
and writes results.json under --work (adapters and merges are reused on a rerun). ``--only`` and ``--methods``
run parts (several side by side, all writing results.json; ``--only none`` prints it); ``--adapter-lambda full``
gives the merged adapters the λ the full merge chose instead of choosing again among the grid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import zoo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merges_multi_task import METHODS, TASKS, merge_on_val_then_test, write_tasks  # noqa: E402

ZOO_METHODS = ("task arithmetic", "TIES", "DARE → task arithmetic", "DARE → TIES",
               "plain average (task arithmetic at λ=1/4)", "Model Stock")
# PEFT combination → (zoo's method whose λ grid it takes, its other arguments)
PEFT_METHODS = {
    "linear": ("task arithmetic", {}),
    "ties": ("TIES", {"density": 0.2}),  # zoo's TIES default density
    "svd": ("task arithmetic", {"svd_rank": 8}),
    "cat": ("task arithmetic", {}),
}


def make_adapters(work: Path, epochs: int, lr: float) -> tuple[dict[str, Path], Path, dict[str, Path], float]:
    """The tasks, the base and one LoRA adapter (r=8, its own new head) per task, made once."""
    from zoo.demos.shift import PRETRAINED_CFG
    from zoo.demos.wheels import save_lite_member

    t0 = time.perf_counter()
    data = write_tasks(work)
    base = work / "lite0"
    if not base.exists():
        save_lite_member(0, base, PRETRAINED_CFG)
    loras = {}
    for task in TASKS:
        loras[task] = work / "lora" / task
        if not loras[task].exists():
            zoo.finetune(str(base), str(data[task] / "train"), loras[task], lora="r=8",
                         recipe=zoo.FinetuneRecipe(epochs=epochs, lr=lr), eval_data=str(data[task] / "val"))
    return data, base, loras, time.perf_counter() - t0


def adapter_report(out: Path) -> dict:
    """Size of each task's merged adapter file and the max / mean relative reconstruction error zoo reports."""
    sizes, errors, accuracy = [], [], []
    for t in TASKS:
        sizes.append((out / t / "adapter_model.safetensors").stat().st_size)
        report = json.loads((out / t / "zoo.json").read_text())["report"]["adapter"]
        errors += [m["error"] for m in report["modules"].values()]
        accuracy.append(report["accuracy"])
    return {"bytes": float(np.mean(sizes)), "max_error": max(errors) if errors else float("nan"),
            "mean_error": float(np.mean(errors)) if errors else float("nan"),
            "val_adapter_vs_full": [float(np.mean([a[k] for a in accuracy])) for k in ("adapter", "full")]}


class PeftMerges:
    """The four adapters in one PeftModel (their heads kept aside), merged by ``add_weighted_adapter``."""

    def __init__(self, work: Path, base: Path, loras: dict[str, Path], data: dict[str, Path]):
        import torch
        from peft import PeftModel
        from safetensors.torch import load_file, save_file

        from zoo.kit.data import data_config, load_split

        self.heads, self.classes, self.data = {}, {}, data
        bare = {}
        for t in TASKS:  # each adapter without its head: PEFT refuses to merge modules_to_save
            bare[t] = work / "peft-in" / t
            bare[t].mkdir(parents=True, exist_ok=True)
            tensors = load_file(str(loras[t] / "adapter_model.safetensors"))
            prefix = "base_model.model.classifier."
            self.heads[t] = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            save_file({k: v for k, v in tensors.items() if not k.startswith(prefix)},
                      str(bare[t] / "adapter_model.safetensors"))
            config = json.loads((loras[t] / "adapter_config.json").read_text())
            (bare[t] / "adapter_config.json").write_text(json.dumps({**config, "modules_to_save": None}))
            self.classes[t] = json.loads((loras[t] / "zoo.json").read_text())["report"]["classes"]
        model = zoo.load(str(base))
        cfg = data_config(model.pretrained_cfg)
        self.splits = {(t, s): load_split(str(data[t] / s), cfg, label_names=self.classes[t],
                                          num_classes=len(self.classes[t])) for t in TASKS for s in ("val", "test")}
        self.pm = PeftModel.from_pretrained(model, str(bare[TASKS[0]]), adapter_name=TASKS[0])
        for t in TASKS[1:]:
            self.pm.load_adapter(str(bare[t]), adapter_name=t)
        self.pm.eval()
        self.torch = torch

    def merge(self, name: str, combination: str, weight: float, extra: dict) -> float:
        """``add_weighted_adapter`` of the four, each with ``weight``; returns its wall in seconds."""
        t0 = time.perf_counter()
        self.pm.add_weighted_adapter(list(TASKS), [weight] * len(TASKS), name, combination_type=combination,
                                     **extra)
        return time.perf_counter() - t0

    def top1(self, adapter: str, split: str) -> dict[str, float]:
        """Each task's top-1 on ``split`` with ``adapter`` active and the task's own head as the classifier."""
        from zoo.kit.measure import evaluate_model

        self.pm.set_adapter(adapter)
        inner = self.pm.base_model.model
        out = {}
        for t in TASKS:
            inner.reset_classifier(len(self.classes[t]))
            inner.classifier.load_state_dict(self.heads[t])
            out[t] = evaluate_model(self.pm, self.splits[(t, split)], self.torch.device("cpu")).top1
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/zoo-bench-lora"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--ranks", default="8,16,32")
    ap.add_argument("--only", default="full,peft,adapter",
                    help="the parts to run, comma-separated, in this order (the adapters are made first, "
                    "always); none: print the tables of results.json")
    ap.add_argument("--methods", default="", help="zoo's methods to run, comma-separated labels "
                    "(default: all of " + ", ".join(ZOO_METHODS) + ")")
    ap.add_argument("--adapter-lambda", choices=("grid", "full"), default="grid",
                    help="merged adapters: choose λ on val among the grid, or take the full merge's choice")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)  # the adapters name their local base by its folder name: zoo eval finds it from here
    data, base, loras, t_ft = make_adapters(args.work, args.epochs, args.lr)
    res_file = args.work / "results.json"
    results = json.loads(res_file.read_text()) if res_file.exists() else {}
    if "fine-tunes" not in results:  # each adapter's own top-1, measured once
        results["fine-tunes"] = {t: zoo.evaluate(str(loras[t]), str(data[t] / "test")).top1 for t in TASKS}
        results["val"] = {t: zoo.evaluate(str(loras[t]), str(data[t] / "val")).top1 for t in TASKS}
        results["lora_bytes"] = {t: (loras[t] / "adapter_model.safetensors").stat().st_size for t in TASKS}
        results["recipe"] = {"lora": "r=8", "epochs": args.epochs, "lr": args.lr}
    alone, val_alone = results["fine-tunes"], results["val"]

    def save() -> None:
        """results.json updated with this run's entries (another run of parts may write it too)."""
        on_disk = json.loads(res_file.read_text()) if res_file.exists() else {}
        results.update({**on_disk, **results})
        tmp = res_file.with_suffix(f".{os.getpid()}")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(res_file)

    save()
    methods = [m for m in ZOO_METHODS if not args.methods or m in args.methods.split(",")]

    def norm(test: dict[str, float]) -> float:
        return float(np.mean([test[t] / alone[t] for t in TASKS]))

    if "full" in parts:
        for label in methods:
            strategy, candidates = METHODS[label]
            t0 = time.perf_counter()
            options, _, test = merge_on_val_then_test(strategy, candidates, loras, base, data, val_alone,
                                                      args.work / "merged")
            results[f"zoo full: {label}"] = {"options": options, "test_top1": test, "normalized": norm(test),
                                             "wall_s": time.perf_counter() - t0}
            save()
    if "peft" in parts:
        peft = PeftMerges(args.work, base, loras, data)
        for combination, (grid_of, extra) in PEFT_METHODS.items():
            best, walls = None, []
            for i, cand in enumerate(METHODS[grid_of][1]):
                name = f"{combination}-{i}"
                walls.append(peft.merge(name, combination, cand["scale"], extra))
                val = peft.top1(name, "val")
                score = float(np.mean([val[t] / val_alone[t] for t in TASKS]))
                if best is None or score > best[0]:
                    best = (score, cand["scale"], name)
            _, weight, name = best
            test = peft.top1(name, "test")
            results[f"PEFT {combination}"] = {"options": {"weight": weight, **extra}, "test_top1": test,
                                              "normalized": norm(test), "merge_wall_s": float(np.median(walls))}
            save()

    if "adapter" in parts:
        for label in methods:  # method by method, each at every rank
            strategy, candidates = METHODS[label]
            if args.adapter_lambda == "full" and f"zoo full: {label}" in results:
                candidates = [results[f"zoo full: {label}"]["options"]]  # the full merge's choice on val
            for rank in (int(r) for r in args.ranks.split(",")):
                t0 = time.perf_counter()
                try:
                    options, out, test = merge_on_val_then_test(
                        strategy, candidates, loras, base, data, val_alone, args.work / "merged",
                        output={"format": "adapter", "rank": rank})
                    if not (out / TASKS[0] / "adapter_config.json").exists():
                        raise RuntimeError(f"{out / TASKS[0]} is not an adapter")
                except Exception as e:  # this zoo has no --multi-task --format adapter: say so, go on
                    print(f"zoo combine --multi-task --format adapter -o rank={rank} -s {strategy}: "
                          f"{type(e).__name__}: {e}")
                    continue
                results[f"zoo adapter r={rank}: {label}"] = {
                    "options": options, "test_top1": test, "normalized": norm(test),
                    "wall_s": time.perf_counter() - t0, "lambda": args.adapter_lambda, **adapter_report(out)}
                save()
    save()
    print_tables(results, args, t_ft)


def print_tables(results: dict, args, t_ft: float) -> None:
    """The Markdown: full merges and PEFT's side by side, then the merged adapters by rank."""
    alone = results["fine-tunes"]
    print(f"\nadapters made or found in {t_ft:.0f} s; each adapter file "
          f"{np.mean(list(results['lora_bytes'].values())) / 1e6:.2f} MB")

    def cells(test: dict[str, float], normalised: float) -> str:
        return (" | ".join(f"{test[t]:.3f}" for t in TASKS)
                + f" | {np.mean(list(test.values())):.3f} | {normalised:.3f}")

    def chosen(options: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in options.items()) or "—"

    print("\n| merge | chosen on val | " + " | ".join(TASKS) + " | mean | normalised | wall |")
    print("|---|---|" + "---|" * (len(TASKS) + 3))
    print(f"| each task's own adapter | — | {cells(alone, 1.0)} | — |")
    for key, r in results.items():
        if key.startswith("zoo full: "):
            print(f"| zoo, full merge: {key[10:]} | {chosen(r['options'])} | {cells(r['test_top1'], r['normalized'])}"
                  f" | {r['wall_s']:.0f} s (all candidates, with their evaluations) |")
    for key, r in results.items():
        if key.startswith("PEFT "):
            print(f"| PEFT add_weighted_adapter: {key[5:]} | {chosen(r['options'])} | "
                  f"{cells(r['test_top1'], r['normalized'])} | {r['merge_wall_s']:.2f} s (the merge alone) |")
    rows = [(key, r) for key, r in results.items() if key.startswith("zoo adapter r=")]
    if rows:
        print("\n| zoo merged adapter | rank | chosen on val | " + " | ".join(TASKS)
              + " | mean | normalised | file | error max | error mean | val top-1: adapter / full merge |")
        print("|---|---|---|" + "---|" * (len(TASKS) + 6))
        for key, r in rows:
            rank, label = key[len("zoo adapter r="):].split(": ", 1)
            print(f"| {label} | {rank} | {chosen(r['options'])} | {cells(r['test_top1'], r['normalized'])} | "
                  f"{r['bytes'] / 1e6:.2f} MB | {r['max_error']:.3g} | {r['mean_error']:.3g} | "
                  "{:.3f} / {:.3f} |".format(*r["val_adapter_vs_full"]))

if __name__ == "__main__":
    main()
