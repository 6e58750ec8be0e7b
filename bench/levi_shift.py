"""LEVI against plain fine-tuning and WiSE-FT on a real shift: EfficientNet-Lite0 (ImageNet) → MNIST (ID)
→ scikit-learn's digits (OOD), the mnist-shift zoo.

    python bench/levi_shift.py --work /tmp/levi-bench [--epochs 2] [--levi-epochs 5]

In one run, through the Python API, from the same member and data:
- fine-tuning (``zoo.finetune``, mode ft, ``--epochs``, AdamW 1e-4);
- WiSE-FT: the linear probe and LP-FT (``--epochs``, 1e-4) as its ends, α picked on held-out data;
- LEVI (``--strategy levi``): Lite0 frozen, with a small model from scratch (``resnet10t``, and timm's
  tiny ``test_efficientnet``), ``--levi-epochs`` at 1e-3.
Each output is measured with ``zoo.evaluate`` on the zoo's test split (ID, never used to choose) and on
the shifted digits (OOD). Prints the markdown for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import zoo
from zoo.registry import load_zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--levi-epochs", type=int, default=5)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    z = load_zoo("mnist-shift")
    base, data = z.members[0], z.data
    rows, outs = [], {}

    def timed(name, fn, out):
        t0 = time.time()
        fn(out)
        outs[name] = (out, time.time() - t0)

    timed("fine-tuning (ft)", lambda o: zoo.finetune(base, data["train"], o, force=True, recipe=zoo.FinetuneRecipe(
        mode="ft", epochs=a.epochs, lr=1e-4)), a.work / "ft")
    timed("linear probe", lambda o: zoo.finetune(base, data["train"], o, force=True,
                                                 recipe=zoo.FinetuneRecipe(mode="lp")), a.work / "lp")
    timed("LP-FT", lambda o: zoo.finetune(base, data["train"], o, force=True, recipe=zoo.FinetuneRecipe(
        mode="lp-ft", epochs=a.epochs, lr=1e-4)), a.work / "lpft")
    timed("WiSE-FT (best held-out α)", lambda o: zoo.combine(
        "wise-ft", [str(a.work / "lp"), str(a.work / "lpft")], eval_data=data["eval"], out=o, force=True),
        a.work / "wise")
    for small in ("resnet10t", "test_efficientnet"):
        timed(f"LEVI (Lite0 frozen + {small})", lambda o, small=small: zoo.combine(
            "levi", [base], train_data=data["train"], eval_data=data["eval"], out=o, force=True,
            options={"small": small, "epochs": a.levi_epochs}), a.work / f"levi-{small}")
    print("| model | ID test top-1 (%) | OOD top-1 (%) | OOD ECE | wall (s) |")
    print("|---|---|---|---|---|")
    for name, (out, wall) in outs.items():
        ident, shifted = zoo.evaluate(str(out), data["test"]), zoo.evaluate(str(out), data["ood"])
        rows.append((name, ident, shifted))
        print(f"| {name} | {ident.top1 * 100:.1f} | {shifted.top1 * 100:.1f} | {shifted.ece:.3f} | {wall:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
