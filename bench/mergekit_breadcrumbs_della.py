"""Model breadcrumbs and DELLA: `zoo combine -s breadcrumbs / della` against mergekit's own merge functions.

    /work/fbvenv/bin/python bench/mergekit_breadcrumbs_della.py --work /tmp/zoo-bench-fbsvd

The environment is bench/fusionbench_svd.py's venv plus ``pip install --no-deps mergekit==0.1.5`` (its
``sparsify`` and ``generalized_task_arithmetic`` modules import only torch and pydantic, which the base venv
has). The members are that bench's (the digits-demo fine-tunes; the ViT fine-tunes it wrote under --work).

- breadcrumbs (deterministic): mergekit's ``GeneralizedTaskArithmeticMerge.merge_group`` (registered as
  ``breadcrumbs``) on each tensor's group (base + members; weight 1, density 0.9, gamma 0.01, lambda 1) against
  zoo's output at the same settings, tensor for tensor, BatchNorm statistics left out (zoo moves them toward
  the members' mean; mergekit extrapolates them like weights);
- DELLA at density 1 (no drop: the sign election and the weighted mean alone, deterministic), the same way;
- DELLA's MagPrune (random): on one matrix, the keep frequency at each magnitude rank over 200 draws of
  mergekit's ``della_magprune`` (torch's global generator) and 200 of zoo's ``magprune`` (its seeded draws),
  against the line density − ε + 2ε·rank/(L − 1); and the L1 norm after rescaling.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def mergekit_merge(method: str, base: dict, thetas: list[dict], params: dict) -> dict:
    from mergekit.merge_methods import registry
    from mergekit.merge_methods.base import TensorGroup

    merge = registry.get(method)
    ids = list(range(1, len(thetas) + 1))
    per = {k: {i: v for i in ids} for k, v in params["per_member"].items()}
    out = {}
    for k, b in base.items():
        if not b.is_floating_point():
            continue
        group = TensorGroup.from_tensors([b] + [t[k] for t in thetas], ids=[0] + ids, base_index=0, name=k)
        out[k] = merge.merge_group(group, **params["shared"], **per)
    return out


def zoo_combine(method: str, base: Path, members: list[Path], out: Path, options: list[str]) -> dict:
    args = [sys.executable, "-m", "zoo", "--quiet", "combine", "-s", method, "--base", str(base)]
    args += sum((["-m", str(m)] for m in members), []) + sum((["-o", o] for o in options), [])
    subprocess.run(args + ["--out", str(out), "--force"], check=True)
    return load_file(str(out / "model.safetensors"))


def compare(ours: dict, theirs: dict) -> dict:
    import zoo

    keys = [k for k in theirs if not zoo.is_statistic(k)]
    diffs = {k: float((ours[k].float() - theirs[k].float()).abs().max()) for k in keys}
    worst = max(diffs, key=diffs.get)
    return {"tensors": len(keys), "max_abs_diff": diffs[worst], "at": worst if diffs[worst] else "",
            "unequal": sum(d > 0 for d in diffs.values())}


def keep_curves(tau: torch.Tensor, density: float, epsilon: float, draws: int) -> dict:
    from mergekit.sparsify import RescaleNorm, della_magprune

    from zoo.plugins.merges import della

    ranks = tau.abs().argsort(dim=1).argsort(dim=1)
    length = tau.shape[1]
    counts = {"mergekit": torch.zeros(length), "zoo": torch.zeros(length)}
    l1 = {"mergekit": 0.0, "zoo": 0.0}
    for d in range(draws):
        torch.manual_seed(d)
        theirs = della_magprune(tau, density, epsilon, RescaleNorm.l1)
        ours = della.magprune(tau, density, epsilon, della.generator(d, 0, "w"))
        for name, got in (("mergekit", theirs), ("zoo", ours)):
            counts[name].index_add_(0, ranks.flatten(), (got != 0).flatten().float())
            l1[name] = max(l1[name], float((got.abs().sum() - tau.abs().sum()).abs() / tau.abs().sum()))
    freq = {name: c / (draws * tau.shape[0]) for name, c in counts.items()}
    line = density - epsilon + 2 * epsilon * torch.arange(length) / (length - 1)
    return {"shape": list(tau.shape), "draws": draws,
            "max_gap_zoo_vs_mergekit": float((freq["zoo"] - freq["mergekit"]).abs().max()),
            "max_gap_zoo_vs_line": float((freq["zoo"] - line).abs().max()),
            "max_gap_mergekit_vs_line": float((freq["mergekit"] - line).abs().max()),
            "sampling_sd": float((line * (1 - line) / (draws * tau.shape[0])).sqrt().max()),
            "max_l1_change": l1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/zoo-bench-fbsvd"))
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from fusionbench_svd import member_sets

    rows, curves = [], None
    for name, (base_dir, members) in member_sets(args.work).items():
        base = load_file(str(base_dir / "model.safetensors"))
        thetas = [load_file(str(m / "model.safetensors")) for m in members]
        cases = [("breadcrumbs", ["density=0.9", "gamma=0.01"],
                  {"shared": {"int8_mask": False, "normalize": False, "rescale": False, "lambda": 1.0},
                   "per_member": {"weight": 1.0, "density": 0.9, "gamma": 0.01}}),
                 ("della", ["density=1"],
                  {"shared": {"int8_mask": False, "normalize": True, "rescale": True, "lambda": 1.0},
                   "per_member": {"weight": 1.0, "density": 1.0, "epsilon": 0.15}})]
        for method, options, params in cases:
            ours = zoo_combine(method, base_dir, members, args.work / f"{name}-{method}", options)
            row = {"set": name, "method": method, "options": options, "members": len(members),
                   **compare(ours, mergekit_merge(method, base, thetas, params))}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if name == "vit":
            k = "blocks.0.mlp.fc1.weight"
            curves = {"tensor": k, **keep_curves(thetas[0][k] - base[k], 0.5, 0.15, 200)}
            print(json.dumps(curves), flush=True)
    (args.work / "mergekit.json").write_text(json.dumps({"rows": rows, "magprune": curves}, indent=1))


if __name__ == "__main__":
    main()
