"""Weight matching against activation matching, side by side, on the seed pairs of bench/rebasin_report.py.

    python bench/rebasin_activations.py --work /tmp/zoo-rebasin-bench                  # all pairs (~25 min on 2 busy cores, training apart)
    python bench/rebasin_activations.py --work /tmp/zoo-rebasin-bench --pair resnet-w64 --pair vit-d128

Members: those of bench/rebasin_report.py (same folders under --work, trained by its ``train`` stage if missing;
only seeds 0–2 are used here). For each family and width:

- ``barrier``: ``zoo align seed1 --to seed0 --report`` with ``method=weights`` and ``method=activations``
  (512 training images): the loss barrier and top-1 along θ(α) before and after alignment (BatchNorm
  recomputed too for the ResNets);
- ``merge``: ``zoo combine --strategy rebasin`` of seeds 0–2 with ``method=reference`` (weight matching to seed
  0) and ``method=activations`` (activation matching to seed 0), BatchNorm recomputed;
- ``corr``: the mean correlation of seed 0's and seed 1's units on the held-out images (not the images
  activation matching saw), at the layers rebasin_report.py's ``corr`` stage measures, as each method paired
  them, against the best pairing of those held-out activations.

Results go to --work/activations.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import rebasin_report as base  # noqa: E402

SEEDS = range(3)
METHODS = {"weights": {}, "activations": {"method": "activations"}}
LAYERS = {"resnet-w16": ["layer2", "layer3.0.act1"], "resnet-w64": ["layer2", "layer3.0.act1"],
          "vit-d64": ["blocks.1", "blocks.1.mlp.act", "blocks.3"],
          "vit-d128": ["blocks.1", "blocks.1.mlp.act", "blocks.3"]}


def _pairs(only: list[str]) -> list[tuple[str, str]]:
    found = [(f, w) for f, (_, widths, _, _) in base.FAMILIES.items() for w in widths]
    return [(f, w) for f, w in found if not only or f"{f}-{w}" in only]


def _members(work: Path, family: str, width: str) -> list[str]:
    return [str(work / "members" / f"{family}-{width}-s{s}") for s in SEEDS]


def train(work: Path, pairs) -> None:
    base.SEEDS = SEEDS
    families = dict(base.FAMILIES)
    for family, width in pairs:
        arch, widths, epochs, lr = families[family]
        base.FAMILIES = {family: (arch, {width: widths[width]}, epochs, lr)}
        base.train(work)
    base.FAMILIES = families


def barrier(work: Path, pairs, results: dict) -> None:
    import zoo

    data = base._data()
    out = results.setdefault("barrier", {})
    for family, width in pairs:
        a, b = _members(work, family, width)[:2]
        for method, opts in METHODS.items():
            t = time.time()
            r = zoo.combine("align", [a, b], eval_data=data["eval"], train_data=data["train"],
                            options={"report": "true", **opts}, force=True,
                            out=str(work / "aligned" / f"{family}-{width}-{method}"))
            path = r.report["paths"][0]
            row = {"seconds": time.time() - t, "sweeps": r.report["sweeps"],
                   "l2_before": path["l2_before"], "l2_after": path["l2_after"],
                   "correlation_after": r.report.get("correlation_after"),
                   **{v: {k: c[k] for k in ("loss_barrier", "top1_drop", "midpoint_top1", "loss", "top1")}
                      for v, c in path["curves"].items()}}
            out[f"{family}-{width} {method}"] = row
            print(f"barrier {family}-{width} {method} ({row['seconds']:.0f} s): " + ", ".join(
                f"{v} {c['loss_barrier']:.3f}/{c['midpoint_top1'] * 100:.1f}%" for v, c in path["curves"].items()),
                flush=True)


def merge(work: Path, pairs, results: dict) -> None:
    import zoo

    data = base._data()
    out = results.setdefault("merge", {})
    for family, width in pairs:
        for method, opts in (("weights (reference)", {}), ("activations", {"method": "activations"})):
            t = time.time()
            r = zoo.combine("rebasin", _members(work, family, width), eval_data=data["eval"], train_data=data["train"],
                            options=opts, force=True, out=str(work / "merged" / f"{family}-{width}-3-{opts.get('method', 'reference')}"))
            row = {"merged_top1": r.metrics["top1"], "merged_nll": r.metrics["nll"],
                   "best_member_top1": max(m["top1"] for m in r.report["members"].values()),
                   "ensemble_top1": r.report["ensemble"]["top1"],
                   "unaligned_average_top1": r.report["average_without_alignment"]["top1"],
                   "seconds": time.time() - t}
            out[f"{family}-{width} {method}"] = row
            print(f"merge {family}-{width} ×3 {method}: merged {row['merged_top1']:.4f} (NLL {row['merged_nll']:.3f}), "
                  f"best {row['best_member_top1']:.4f}, ensemble {row['ensemble_top1']:.4f}, unaligned "
                  f"{row['unaligned_average_top1']:.4f}", flush=True)


def corr(work: Path, pairs, results: dict) -> None:
    from scipy.optimize import linear_sum_assignment

    import zoo
    from zoo.kit.data import data_config, load_split

    data = base._data()
    out = results.setdefault("corr", {})
    for family, width in pairs:
        name = f"{family}-{width}"
        layers = LAYERS[name]
        a, b = (zoo.load_member(m) for m in _members(work, family, width)[:2])
        split = load_split(data["eval"], data_config(a.pretrained_cfg), label_names=a.label_names, num_classes=10)

        def units(member):
            return base.standardised_units(member, layers, split.images)

        ua, ub = units(a), units(b)
        paired = {m: units(zoo.load_member(str(work / "aligned" / f"{name}-{m}"))) for m in METHODS}
        for n in layers:
            c = (ua[n].T @ ub[n] / len(ua[n])).numpy()
            rows, cols = linear_sum_assignment(c, maximize=True)
            row = {"identity": float((ua[n] * ub[n]).mean(0).mean()),
                   **{m: float((ua[n] * paired[m][n]).mean(0).mean()) for m in METHODS},
                   "best_pairing_of_held_out_activations": float(c[rows, cols].mean())}
            out[f"{name} {n}"] = row
            print(f"corr {name} {n}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--stage", action="append", choices=["train", "barrier", "merge", "corr"])
    p.add_argument("--pair", action="append", default=[], help="resnet-w16, resnet-w64, vit-d64, vit-d128 (default: all)")
    args = p.parse_args()
    stages = args.stage or ["train", "barrier", "merge", "corr"]
    pairs = _pairs(args.pair)
    path = args.work / "activations.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for stage in stages:
        if stage == "train":
            train(args.work, pairs)
        else:
            globals()[stage](args.work, pairs, results)
        path.write_text(json.dumps(results, indent=1))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
