"""Concatenated representations (``--strategy concat``, Zhang & Bottou 2023) against each member alone, one
network as wide as the concatenation, and the output ensemble: MNIST (in distribution) → scikit-learn's
digits (shifted), the mnist-shift zoo's data.

    OMP_NUM_THREADS=1 python bench/concat_shift.py --work /tmp/concat-bench [--members 3] [--epochs 6]

Members: timm's ``test_resnet`` (four stages of 32/48/48/96 channels, 96 pooled features), trained from
scratch on the zoo's MNIST training split from ``--members`` different seeds (``zoo finetune --mode ft``,
AdamW lr 1e-3, ``--epochs``, 32 px, the random initial weights written as a member folder first). The wide
network: the same architecture with every stage ``--members`` times as wide (``channels`` × N: N·96 pooled
features, the concatenation's width), trained the same way from seed 0. Then, through the CLI's API:

- ``concat``: ``zoo combine -s concat`` of the members (features side by side, one linear probe on the
  training split);
- ``ensemble``: ``zoo combine -s ensemble`` of the same members (the mean of their softmax);
- each member alone, and the wide network alone (their own trained heads);
- each member's linear probe of its own features (what concat reports beside itself).

Every model is measured with ``zoo.evaluate`` on the zoo's MNIST test split (in distribution) and on the
digits (shifted). Prints the Markdown for bench/RESULTS.md and writes results.json under --work.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import zoo
from zoo.registry import load_zoo

ARCH = "test_resnet"
CHANNELS = (32, 48, 48, 96)


def random_member(folder: Path, seed: int, width: int) -> Path:
    """A member folder holding timm's random initialisation of ``test_resnet`` (``width`` × its channels)."""
    import timm
    import torch
    from safetensors.torch import save_file

    if (folder / "model.safetensors").exists():
        return folder
    args = {"channels": [c * width for c in CHANNELS]} if width > 1 else {}
    torch.manual_seed(seed)
    model = timm.create_model(ARCH, num_classes=10, **args)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    cfg = {"input_size": [3, 32, 32], "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
           "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    (folder / "config.json").write_text(json.dumps({
        "architecture": ARCH, "num_classes": 10, "label_names": [str(i) for i in range(10)],
        "model_args": {"num_classes": 10, **args}, "pretrained_cfg": cfg}, indent=2))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    data = load_zoo("mnist-shift").data
    recipe = zoo.FinetuneRecipe(mode="ft", epochs=a.epochs, lr=1e-3)
    wall: dict[str, float] = {}

    def trained(name: str, seed: int, width: int) -> str:
        out = a.work / name
        if not (out / "zoo.json").exists():
            start = random_member(a.work / f"{name}-init", seed, width)
            t = time.perf_counter()
            zoo.finetune(str(start), data["train"], out, force=True, recipe=zoo.FinetuneRecipe(
                **{**recipe.__dict__, "seed": seed}))
            (out / "seconds.txt").write_text(f"{time.perf_counter() - t:.1f}\n")
        wall[name] = float((out / "seconds.txt").read_text())
        return str(out)

    members = [trained(f"seed{s}", s, 1) for s in range(a.members)]
    wide = trained(f"wide-x{a.members}", 0, a.members)
    outs = {f"seed {s} alone": m for s, m in enumerate(members)}
    outs[f"one network {a.members}× as wide (seed 0)"] = wide
    for strategy, kwargs in (("concat", {"train_data": data["train"], "eval_data": data["eval"]}),
                             ("ensemble", {"eval_data": data["eval"]})):
        out = a.work / strategy
        t = time.perf_counter()
        if not (out / "zoo.json").exists():
            zoo.combine(strategy, members, out=out, force=True, **kwargs)
            (out / "seconds.txt").write_text(f"{time.perf_counter() - t:.1f}\n")
        wall[strategy] = float((out / "seconds.txt").read_text())
        outs[f"{strategy} of the {a.members} seeds"] = str(out)

    rows, results = [], {}
    for name, folder in outs.items():
        ident, shifted = zoo.evaluate(folder, data["test"]), zoo.evaluate(folder, data["ood"])
        results[name] = {"id_top1": ident.top1, "ood_top1": shifted.top1, "id_nll": ident.nll,
                         "ood_nll": shifted.nll, "ood_ece": shifted.ece}
        rows.append(f"| {name} | {ident.top1 * 100:.1f} | {shifted.top1 * 100:.1f} | {shifted.nll:.3f} | "
                    f"{shifted.ece:.3f} |")
    # each member's own linear probe on its part of the same features (concat's card), on the validation split
    recorded = json.loads((a.work / "concat" / "zoo.json").read_text())
    probes = {k: v["top1"] for k, v in recorded["report"]["eval_members_alone"].items()}
    text = "\n".join(["| model | MNIST test top-1 (%) | digits (shifted) top-1 (%) | shifted NLL | shifted ECE |",
                      "|---|---|---|---|---|", *rows])
    text += ("\n\nLinear probes of each member's own features (concat's card, MNIST validation split): "
             + ", ".join(f"{k} {v * 100:.1f}%" for k, v in probes.items())
             + f"; concat {recorded['metrics']['top1'] * 100:.1f}%.")
    text += "\n\nWall (s): " + ", ".join(f"{k} {v:.0f}" for k, v in wall.items())
    print(text)
    (a.work / "results.json").write_text(json.dumps({"results": results, "probes": probes, "wall": wall}, indent=2))


if __name__ == "__main__":
    main()
