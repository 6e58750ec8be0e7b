"""Permutation alignment on members trained here from different seeds: barriers, merges, the seed paper's two
measurements, and the cost of matching.

    python bench/rebasin_report.py --work /tmp/zoo-rebasin-bench            # everything (~1 h on 2 cores)
    python bench/rebasin_report.py --work /tmp/zoo-rebasin-bench --stage train   # only the members

Members: two families (ResNet-18 layout with BatchNorm; ViT with LayerNorm), each at two widths, five seeds
each, trained from scratch on scikit-learn's digits (the digits-demo zoo's data, 32 px) with the demo's
recipe (AdamW, cosine, small shifts). Stages:

- ``train``: the members (cached in --work: a member folder that exists is reused);
- ``barrier``: seed 0 → seed 1 of each family and width, with ``zoo align --report`` (before, aligned, aligned
  with BatchNorm statistics recomputed), and the figure of each;
- ``merge``: ``zoo combine --strategy rebasin`` of 3 and of 5 members (reference and MergeMany; REPAIR on the
  ResNets) against the best member, the output ensemble and the average without alignment;
- ``svd``: the L2 distance before and after matching, and |cos| between the matched left singular vectors of
  each weight matrix of seed 0 and seed 1, by singular-value rank, before and after alignment;
- ``corr``: whether weight matching pairs each unit with its real counterpart: the correlation of the two
  seeds' activations, unit by unit, as paired by weight matching and by the best pairing of the activations;
- ``cost``: wall time and peak memory of matching one ViT-B/16 and one ResNet-50 (each in its own process).

Results go to --work/results.json and figures to bench/figures/rebasin_*.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIGURES = HERE / "figures"
SEEDS = range(5)
FILTER = ""
FAMILIES = {  # name → (timm architecture, constructor arguments per width, epochs, lr)
    "resnet": ("resnet18", {"w16": {"channels": [16, 32, 64, 128]}, "w64": {}}, 12, 3e-3),
    "vit": ("vit_tiny_patch16_224", {
        "d64": {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4},
        "d128": {"img_size": 32, "patch_size": 4, "embed_dim": 128, "depth": 4, "num_heads": 4}}, 30, 1e-3),
}


def _data():
    from zoo.registry import load_zoo

    return load_zoo("digits-demo").data


def train(work: Path) -> None:
    import timm
    import torch

    from zoo.demos import digits
    from zoo.kit.data import data_config, load_split

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    data = _data()
    split = load_split(data["train"], data_config(digits.PRETRAINED_CFG), label_names=digits.LABELS, num_classes=10)
    for family, (arch, widths, epochs, lr) in FAMILIES.items():
        for width, args in widths.items():
            for seed in SEEDS:
                folder = work / "members" / f"{family}-{width}-s{seed}"
                if (folder / "model.safetensors").exists():
                    continue
                t = time.time()
                torch.manual_seed(1000 + seed)
                model = timm.create_model(arch, pretrained=False, num_classes=10,
                                          pretrained_cfg_overlay=digits.PRETRAINED_CFG, **args)
                digits.train(model, split, epochs=epochs, lr=lr, seed=1000 + seed, name=folder.name)
                from timm.models import save_for_hf

                save_for_hf(model, str(folder), model_config={"label_names": digits.LABELS},
                            model_args=args or None, safe_serialization=True)
                print(f"{folder.name}: trained in {time.time() - t:.0f} s", flush=True)


def _members(work: Path, family: str, width: str) -> list[str]:
    return [str(work / "members" / f"{family}-{width}-s{s}") for s in SEEDS]


def barrier(work: Path, results: dict) -> None:
    import zoo

    data = _data()
    from zoo.kit.card.figures import pyplot

    plt = pyplot()
    out = results.setdefault("barrier", {})
    for family, (_, widths, _, _) in FAMILIES.items():
        for width in widths:
            a, b = _members(work, family, width)[:2]
            t = time.time()
            r = zoo.combine("align", [a, b], eval_data=data["eval"], train_data=data["train"],
                            options={"report": "true"}, out=str(work / "aligned" / f"{family}-{width}"), force=True)
            path = r.report["paths"][0]
            out[f"{family}-{width}"] = {
                "sweeps": r.report["sweeps"], "seconds": time.time() - t, "l2_before": path["l2_before"],
                "l2_after": path["l2_after"], "member_top1": r.metrics["top1"] if r.metrics else None,
                **{variant: {k: c[k] for k in ("loss_barrier", "top1_drop", "midpoint_top1", "loss", "top1")}
                   for variant, c in path["curves"].items()}}
            print(f"barrier {family}-{width}: " + ", ".join(
                f"{v} {c['loss_barrier']:.3f}/{c['top1_drop'] * 100:.1f}pts" for v, c in path["curves"].items()),
                flush=True)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4), sharey=True)
    for ax, (name, row) in zip(axes, out.items()):
        for variant in ("before alignment", "aligned", "before alignment, BN recomputed", "aligned + BN recomputed"):
            if variant in row:
                alphas = [i / (len(row[variant]["top1"]) - 1) for i in range(len(row[variant]["top1"]))]
                ax.plot(alphas, [100 * v for v in row[variant]["top1"]], marker="o", ms=3, label=variant)
        ax.set(title=name, xlabel="α (seed 0 → seed 1)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out top-1 (%)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURES / "rebasin_barrier.png", dpi=110)


def merge(work: Path, results: dict) -> None:
    import zoo

    data = _data()
    out = results.setdefault("merge", {})
    for family, (_, widths, _, _) in FAMILIES.items():
        for width in widths:
            for n in (3, 5):
                runs = [("reference", {})]
                runs.append(("merge-many", {"method": "merge-many"}))
                if family == "resnet":
                    runs.append(("reference + REPAIR", {"repair": "true"}))
                for label, opts in runs:
                    if FILTER and FILTER not in label:
                        continue
                    t = time.time()
                    r = zoo.combine("rebasin", _members(work, family, width)[:n], eval_data=data["eval"],
                                    train_data=data["train"], options=opts, force=True,
                                    out=str(work / "merged" / f"{family}-{width}-{n}-{label.replace(' ', '')}"))
                    best = max(m["top1"] for m in r.report["members"].values())
                    row = {"merged_top1": r.metrics["top1"], "merged_nll": r.metrics["nll"], "best_member_top1": best,
                           "ensemble_top1": r.report["ensemble"]["top1"],
                           "unaligned_average_top1": r.report["average_without_alignment"]["top1"],
                           "seconds": time.time() - t}
                    out[f"{family}-{width}-{n}-{label}"] = row
                    print(f"merge {family}-{width} ×{n} {label}: merged {row['merged_top1']:.4f}, best {best:.4f}, "
                          f"ensemble {row['ensemble_top1']:.4f}, unaligned {row['unaligned_average_top1']:.4f}",
                          flush=True)


def svd(work: Path, results: dict) -> None:
    """The seed paper's measurements: weight matching barely moves the L2 distance, but lines up the singular
    vectors of large singular values."""
    import torch

    import zoo
    from zoo.kit.card.figures import pyplot

    plt = pyplot()
    out = results.setdefault("svd", {})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, (family, width) in zip(axes, (("resnet", "w64"), ("vit", "d128"))):
        a_dir, b_dir = _members(work, family, width)[:2]
        a = zoo.load_member(a_dir).state_dict()
        b = zoo.load_member(b_dir).state_dict()
        aligned = zoo.load_member(str(work / "aligned" / f"{family}-{width}")).state_dict()
        buckets = 10
        sums = {"before": [0.0] * buckets, "after": [0.0] * buckets}
        counts = [0] * buckets
        l2 = {"before": 0.0, "after": 0.0}
        for k, wa in a.items():
            if wa.dim() < 2 or k.endswith(("pos_embed", "cls_token")) or wa.shape[0] < 8:
                continue
            for which, other in (("before", b[k]), ("after", aligned[k])):
                l2[which] += float(((wa.double() - other.double()) ** 2).sum())
            if k.startswith(("head", "fc.")):
                continue  # the classifier's rows are the classes: never permuted
            ua = torch.linalg.svd(wa.reshape(wa.shape[0], -1).double(), full_matrices=False)[0]
            r = ua.shape[1]
            for which, other in (("before", b[k]), ("after", aligned[k])):
                ub = torch.linalg.svd(other.reshape(other.shape[0], -1).double(), full_matrices=False)[0]
                cos = (ua * ub).sum(0).abs()  # the i-th left singular vectors of A and B (sign-free)
                for i in range(r):
                    sums[which][min(buckets - 1, i * buckets // r)] += float(cos[i])
            for i in range(r):
                counts[min(buckets - 1, i * buckets // r)] += 1
        curve = {w: [s_ / max(1, c) for s_, c in zip(v, counts)] for w, v in sums.items()}
        row = {"l2_weights_before": l2["before"] ** 0.5, "l2_weights_after": l2["after"] ** 0.5}
        out[f"{family}-{width}"] = {**row, "cos_by_rank": curve}
        xs = [(i + 0.5) / buckets for i in range(buckets)]
        for which, marker in (("before", "o"), ("after", "s")):
            ax.plot(xs, curve[which], marker=marker, label=f"{which} alignment")
        ax.set(title=f"{family}-{width}: weights' L2 distance {row['l2_weights_before']:.1f} → {row['l2_weights_after']:.1f}",
               xlabel="singular value rank (fraction; 0 = largest)", ylabel="|cos| of matched left singular vectors")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        print(f"svd {family}-{width}: top-decile |cos| {curve['before'][0]:.3f} → {curve['after'][0]:.3f}; "
              f"L2 {row['l2_weights_before']:.2f} → {row['l2_weights_after']:.2f}", flush=True)
    fig.tight_layout()
    fig.savefig(FIGURES / "rebasin_svd.png", dpi=110)


def standardised_units(member, layers: list[str], images) -> dict:
    """Each of ``layers``' units of ``member`` on ``images``, one column per unit (a feature map's positions are
    rows too), standardised per unit: their correlations are then the mean of products."""
    import torch

    model, got = member.create_model().eval(), {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: got.__setitem__(n, o.detach())) for n in layers]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    flat = {n: (v.transpose(1, -1) if v.dim() == 4 else v).reshape(-1, v.shape[1] if v.dim() == 4 else v.shape[-1])
            for n, v in got.items()}
    return {n: (v - v.mean(0)) / (v.std(0) + 1e-8) for n, v in flat.items()}


def corr(work: Path, results: dict) -> None:
    """Does weight matching find the units' real counterparts? Per-unit correlation of the activations of seed 0
    and seed 1 on the held-out images, paired as they are (identity), as weight matching paired them, and as
    the best pairing of the activations themselves would (a linear assignment on their correlations)."""
    from scipy.optimize import linear_sum_assignment

    import zoo
    from zoo.kit.data import data_config, load_split

    data = _data()
    out = results.setdefault("corr", {})
    where = {"resnet-w64": ["layer2", "layer3.0.act1"], "vit-d128": ["blocks.1", "blocks.1.mlp.act", "blocks.3"]}
    for name, layers in where.items():
        a, b = (zoo.load_member(m) for m in _members(work, *name.split("-"))[:2])
        aligned = zoo.load_member(str(work / "aligned" / name))
        split = load_split(data["eval"], data_config(a.pretrained_cfg), label_names=a.label_names, num_classes=10)

        def units(member):
            return standardised_units(member, layers, split.images)

        ua, ub, ual = units(a), units(b), units(aligned)
        for n in layers:
            c = (ua[n].T @ ub[n] / len(ua[n])).numpy()
            rows, cols = linear_sum_assignment(c, maximize=True)
            row = {"identity": float((ua[n] * ub[n]).mean(0).mean()),
                   "weight_matching": float((ua[n] * ual[n]).mean(0).mean()),
                   "best_activation_pairing": float(c[rows, cols].mean())}
            out[f"{name} {n}"] = row
            print(f"corr {name} {n}: identity {row['identity']:.3f}, weight matching {row['weight_matching']:.3f}, "
                  f"best pairing of activations {row['best_activation_pairing']:.3f}", flush=True)


COST = """
import resource, sys, time, timm, torch
from zoo.plugins.rebasin import spec as S, permute as P, match as M
arch = sys.argv[1]
torch.manual_seed(0)
a = timm.create_model(arch, num_classes=1000)
sp = S.derive(a, (3, 224, 224))
sa = a.state_dict()
torch.manual_seed(1)
b = timm.create_model(arch, num_classes=1000).state_dict()
del a
t = time.time()
r = M.weight_matching(sp, sa, b, max_sweeps=int(sys.argv[2]))
print(time.time() - t, r.sweeps, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
      sum(v.numel() * 4 for v in sa.values()) / 2**30, len(sp.groups))
"""


def cost(work: Path, results: dict) -> None:
    out = results.setdefault("cost", {})
    for arch in ("resnet50", "vit_base_patch16_224"):
        proc = subprocess.run([sys.executable, "-c", COST, arch, "5"], capture_output=True, text=True, check=True)
        wall, sweeps, peak, size, groups = proc.stdout.split()[-5:]
        out[arch] = {"seconds": float(wall), "sweeps": int(sweeps), "peak_rss_gib": float(peak),
                     "model_gib": float(size), "groups": int(groups)}
        print(f"cost {arch}: {float(wall):.1f} s for {sweeps} sweeps over {groups} groups, peak RSS "
              f"{float(peak):.2f} GiB (one model: {float(size):.2f} GiB)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--stage", action="append", choices=["train", "barrier", "merge", "svd", "corr", "cost"])
    p.add_argument("--merge-filter", default="", help="merge stage: only the runs whose label contains this")
    args = p.parse_args()
    global FILTER
    FILTER = args.merge_filter
    stages = args.stage or ["train", "barrier", "merge", "svd", "corr", "cost"]
    args.work.mkdir(parents=True, exist_ok=True)
    FIGURES.mkdir(exist_ok=True)
    path = args.work / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for stage in stages:
        if stage == "train":
            train(args.work)
        else:
            globals()[stage](args.work, results)
        path.write_text(json.dumps(results, indent=1))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
