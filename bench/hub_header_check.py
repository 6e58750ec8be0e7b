"""Time to refuse an incompatible Hub member: from its safetensors header (as zoo does) against downloading
it in full first (the pre-download check switched off in a wrapper), served by a local Hub (olah on
127.0.0.1, tests/hubserver.py).

    python bench/hub_header_check.py --work /tmp/zoo-header-bench

The members: a ViT-L/16 (1.13 GiB) with 10 classes, and the same architecture with 1000 classes (another
head). `zoo combine -s soup -m A -m B` must refuse B. Each run starts with an empty huggingface_hub cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

NO_CHECK = """
import runpy, sys
import zoo.api.combine as c
c.check_headers = lambda *a, **k: None
sys.argv = ["zoo"] + sys.argv[1:]
runpy.run_module("zoo", run_name="__main__")
"""

MAKE = """
import json, sys, timm, torch
from safetensors.torch import save_file
arch, classes, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(classes)
model = timm.create_model(arch, num_classes=classes)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out + "/model.safetensors", metadata={"format": "pt"})
json.dump({"architecture": arch, "num_classes": classes}, open(out + "/config.json", "w"))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/zoo-header-bench"))
    ap.add_argument("--arch", default="vit_large_patch16_224")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    from hubserver import Hub

    members = {}
    for name, classes in (("ten", 10), ("thousand", 1000)):
        folder = args.work / name
        if not (folder / "model.safetensors").is_file():
            folder.mkdir(exist_ok=True)
            subprocess.run([sys.executable, "-c", MAKE, args.arch, str(classes), str(folder)], check=True)
        members[name] = folder
    shutil.rmtree(args.work / "hub", ignore_errors=True)  # a fresh Hub each run
    hub = Hub(args.work / "hub")
    hub.start()
    try:
        for name, folder in members.items():
            hub.publish(folder, f"bench/{name}")
        size = (members["thousand"] / "model.safetensors").stat().st_size / 2**30
        rows = []
        for label, head in (("header check (zoo)", [sys.executable, "-m", "zoo"]),
                            ("full download first", [sys.executable, "-c", NO_CHECK])):
            hf_home = args.work / "hf-home"
            shutil.rmtree(hf_home, ignore_errors=True)
            env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(hf_home),
                   "HF_HUB_DOWNLOAD_TIMEOUT": "300", "HF_HUB_ETAG_TIMEOUT": "300",  # olah starts big files slowly
                   "ZOO_CACHE": str(args.work / "zoo-cache")}
            t0 = time.perf_counter()
            proc = subprocess.run([*head, "--quiet", "combine", "-s", "soup", "-m", "hf-hub:bench/ten",
                                   "-m", "hf-hub:bench/thousand", "--out", str(args.work / "out"), "--force"],
                                  env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            got = sum(p.stat().st_size for p in hf_home.rglob("*") if p.is_file() and not p.is_symlink()) / 2**30
            rows.append((label, wall, proc.returncode, got, proc.stderr.strip().splitlines()[-1][:120]))
            print(f"  {label:22s} {wall:6.1f} s  exit {proc.returncode}  downloaded {got:.2f} GiB", flush=True)
        print(f"\n{args.arch}, {size:.2f} GiB per member, served from 127.0.0.1\n")
        print("| way | time to refuse (s) | exit | downloaded (GiB) | ratio |\n|---|---|---|---|---|")
        for label, wall, code, got, _ in rows:
            print(f"| {label} | {wall:.1f} | {code} | {got:.2f} | {wall / rows[1][1]:.2f} |")
        print("\n" + json.dumps({label: message for label, *_, message in rows}, indent=1))
    finally:
        try:
            hub.stop()
        except subprocess.TimeoutExpired:  # olah can be slow to stop after serving gigabytes
            pass


if __name__ == "__main__":
    main()
