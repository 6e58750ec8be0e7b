"""Soup and TIES of transformers ViT members, in their own format and through timm: wall, peak RSS, equal outputs.

    python bench/formats.py --members 4 --work /tmp/zoo-formats-bench

Members: N transformers ViT-B/16 image classifiers (ViTForImageClassification, 10 labels, ViTConfig with
layer_norm_eps=1e-6, timm's value, so the conversion to timm is exact), written by save_pretrained with a
ViTImageProcessor: one random init perturbed N ways (merging is data-independent), and the unperturbed init
as the base. Each run is `zoo combine ...` in its own process, as users run it, with ZOO_CACHE in --work;
peak RSS is that process's ru_maxrss (os.wait4) and the members' page cache is dropped before each
(posix_fadvise). The runs, in this order:
  read        : read every member's weights once (the floor of the wall)
  imports     : a process that only imports torch, timm, transformers' ViT and zoo's CLI (the floor of the
                peak RSS: what a merge holds is its peak minus this)
  warm-up     : `zoo combine -s ties --base BASE -m ...` with an empty ZOO_CACHE: it hashes (sha256) the
                base and every member once, so every run after it finds their hashes cached
  soup        : `zoo combine -s soup -m ...`                      (transformers in, transformers out)
  soup-timm   : the same with `--format timm`                      (converted exactly to timm on the way)
  ties        : `zoo combine -s ties --base BASE -m ...`
  ties-timm   : the same with `--format timm`
  soup-back, ties-back: `zoo combine -s soup -m TIMM_OUT --format transformers` (the timm output converted
                back; a member never seen before, so it is hashed too)
Then the checks, each in a child process: the transformers and the timm output of the same merge give the
same logits through `zoo.load` (max abs difference on a fixed random batch), and the converted-back output
has the transformers output's tensors (max abs difference per tensor; whether the model.safetensors bytes
are equal). A Markdown table is printed. Results: bench/RESULTS.md.

    python bench/formats.py --members 2 --work /tmp/zoo-formats-bench   # fewer members where 4 is too slow
    OMP_NUM_THREADS=1 python bench/formats.py --work /tmp/zoo-formats-bench  # one torch thread per run: on a
        # shared 2-core machine, torch's two threads wait on each other (see bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from soup_memory import drop_caches  # noqa: E402  (the same page-cache eviction as the soup bench)

READ = """
import sys
for p in sys.argv[1:]:
    with open(p, 'rb') as f:
        while f.read(1 << 24):
            pass
"""
# what a `zoo combine` of ViTs through timm imports, and nothing else: the floor of its peak RSS
IMPORTS = "import torch, timm.models, transformers.models.vit.modeling_vit, zoo.cli.app"
# the checks import torch: a child process, so this one stays small (its peak would pass on to children)
CHECK = """
import json, sys, torch
from safetensors.torch import load_file
import zoo
hf, timm_out, back = sys.argv[1:4]
torch.manual_seed(0)
x = torch.randn(8, 3, 224, 224)
with torch.no_grad():
    a, b = zoo.load(hf)(x), zoo.load(timm_out)(x)
merged, again = load_file(hf + '/model.safetensors'), load_file(back + '/model.safetensors')
diffs = {k: (merged[k].double() - again[k].double()).abs().max().item() for k in merged if k in again}
worst = max(diffs, key=diffs.get) if diffs else None
print(json.dumps({
    'logits_max_abs': (a - b).abs().max().item(), 'logits_scale': a.abs().max().item(),
    'same_keys': merged.keys() == again.keys(), 'tensors': len(merged),
    'tensors_equal': sum(torch.equal(merged[k], again[k]) for k in diffs),
    'tensor_max_abs': diffs[worst] if worst else None, 'worst_tensor': worst,
}))
"""


def make_members(n: int, work: Path) -> list[Path]:
    """The base (a random ViT-B/16 init) and N members (the base + 0.01 N(0, 1) noise, one seed each)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folders = [work / f"m{i}" for i in range(n)]
    if all((f / "model.safetensors").is_file() for f in folders + [work / "base"]):
        return folders
    labels = [str(i) for i in range(10)]
    config = ViTConfig(layer_norm_eps=1e-6, id2label=dict(enumerate(labels)),
                       label2id={name: i for i, name in enumerate(labels)})  # the rest: ViT-B/16 at 224
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    processor = ViTImageProcessor()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    for folder, seed in [(work / "base", None), *((f, i + 1) for i, f in enumerate(folders))]:
        if seed is not None:
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    if v.is_floating_point():
                        v.copy_(base[k] + 0.01 * torch.randn(v.shape, generator=g))
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        print(f"  wrote {folder}", flush=True)
    return folders


def measure(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of one command in its own process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode()
    if status != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-4000:]}")
    return wall, usage.ru_maxrss / 1024 / 1024


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path("/tmp/zoo-formats-bench"))
    ap.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.make_only:
        make_members(args.members, args.work)
        return
    print(f"making {args.members} transformers ViT-B/16 members in {args.work}", flush=True)
    subprocess.run([sys.executable, __file__, "--make-only", "--members", str(args.members),
                    "--work", str(args.work)], check=True)
    folders = [args.work / f"m{i}" for i in range(args.members)]
    base = args.work / "base"
    weights = [f / "model.safetensors" for f in folders]
    member_bytes = sum(p.stat().st_size for f in folders for p in f.iterdir() if p.is_file())
    cache = args.work / "zoo-cache"
    shutil.rmtree(cache, ignore_errors=True)  # the warm-up starts empty and hashes everything
    env = {**os.environ, "ZOO_CACHE": str(cache)}
    out = {name: args.work / f"out-{name}" for name in ("soup", "soup-timm", "ties", "ties-timm", "soup-back",
                                                         "ties-back")}
    py = sys.executable
    zoo = [py, "-m", "zoo", "--quiet", "combine", "--device", "cpu", "--force"]
    members = sum((["-m", str(f)] for f in folders), [])
    ties = ["-s", "ties", "--base", str(base), *members]
    runs = {
        "read": [py, "-c", READ, *map(str, weights)],
        "imports": [py, "-c", IMPORTS],
        "warm-up": [*zoo, *ties, "--out", str(args.work / "out-warm-up")],
        "soup": [*zoo, "-s", "soup", *members, "--out", str(out["soup"])],
        "soup-timm": [*zoo, "-s", "soup", *members, "--format", "timm", "--out", str(out["soup-timm"])],
        "ties": [*zoo, *ties, "--out", str(out["ties"])],
        "ties-timm": [*zoo, *ties, "--format", "timm", "--out", str(out["ties-timm"])],
        "soup-back": [*zoo, "-s", "soup", "-m", str(out["soup-timm"]), "--format", "transformers",
                      "--out", str(out["soup-back"])],
        "ties-back": [*zoo, "-s", "soup", "-m", str(out["ties-timm"]), "--format", "transformers",
                      "--out", str(out["ties-back"])],
    }
    results = {}
    for name, cmd in runs.items():
        drop_caches(weights + [base / "model.safetensors"]
                    + [p / "model.safetensors" for p in out.values() if (p / "model.safetensors").is_file()])
        results[name] = measure(cmd, env)
        print(f"  {name:9s} wall {results[name][0]:6.1f} s   peak RSS {results[name][1]:5.2f} GiB", flush=True)
    shutil.rmtree(args.work / "out-warm-up", ignore_errors=True)
    checks = {}
    for merge in ("soup", "ties"):
        proc = subprocess.run([py, "-c", CHECK, str(out[merge]), str(out[f"{merge}-timm"]), str(out[f"{merge}-back"])],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"check of {merge} failed:\n{proc.stderr[-4000:]}")
        checks[merge] = json.loads(proc.stdout.strip().splitlines()[-1])
        checks[merge]["bytes_equal"] = sha256(out[merge] / "model.safetensors") == sha256(
            out[f"{merge}-back"] / "model.safetensors")

    gib = member_bytes / 2**30
    print(f"\n{args.members} x transformers ViT-B/16 members, {gib:.2f} GiB of members' files in all "
          f"({gib / args.members:.3f} GiB each); {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset (torch: one thread per core)')}")
    floor = results["imports"][1]
    print("| run | format of the output | wall (s) | peak RSS (GiB) | peak RSS − imports (GiB) "
          "| peak RSS / members' bytes |")
    print("|---|---|---|---|---|---|")
    what = {"read": ("read every member's weights once (the floor)", "-"),
            "imports": ("import torch, timm, transformers' ViT, zoo's CLI (the floor)", "-"),
            "warm-up": ("warm-up: TIES, empty ZOO_CACHE (hashes base and members)", "transformers"),
            "soup": ("soup", "transformers"), "soup-timm": ("soup `--format timm`", "timm"),
            "ties": ("TIES `--base`", "transformers"), "ties-timm": ("TIES `--base` `--format timm`", "timm"),
            "soup-back": ("soup's timm output back (`-s soup -m TIMM_OUT --format transformers`)", "transformers"),
            "ties-back": ("TIES's timm output back", "transformers")}
    for name, (w, r) in results.items():
        print(f"| {what[name][0]} | {what[name][1]} | {w:.1f} | {r:.2f} | {r - floor:+.2f} | {r / gib:.2f} |")
    print("\n| merge | logits: max abs diff, transformers vs timm output (max abs logit) | tensors back from timm: "
          "equal / all | max abs diff per tensor | model.safetensors bytes equal |")
    print("|---|---|---|---|---|")
    for merge, c in checks.items():
        keys = "" if c["same_keys"] else " (keys differ!)"
        print(f"| {merge} | {c['logits_max_abs']:.3g} ({c['logits_scale']:.3g}) | {c['tensors_equal']} / "
              f"{c['tensors']}{keys} | {c['tensor_max_abs']:.3g} | {'yes' if c['bytes_equal'] else 'no'} |")
    if results.get("soup") and results.get("ties"):
        print(f"\nwall, --format timm / own format: soup {results['soup-timm'][0] / results['soup'][0]:.2f}, "
              f"TIES {results['ties-timm'][0] / results['ties'][0]:.2f}")


if __name__ == "__main__":
    main()
