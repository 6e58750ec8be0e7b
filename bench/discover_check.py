"""Time `zoo discover BASE --check` over 20 candidates served by a local Hub (olah + the front of
tests/hubserver.py on 127.0.0.1, which answers the model search from the repos' model cards).

    python bench/discover_check.py --work /tmp/zoo-discover-bench

The base is the digits-demo zoo's `base`; the candidates are copies of its five fine-tunes (they fit) and
of its member of another architecture (they do not), each with a model card naming the base
(`base_model_relation: finetune`). Every run is its own `python -m zoo` process with an empty
huggingface_hub cache; the listing alone (`zoo discover BASE`) is timed too, to show what the check adds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/zoo-discover-bench"))
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--misfits", type=int, default=5, help="how many of them are of another architecture")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    from hubserver import Hub

    from zoo.demos import ensure_built
    from zoo.registry import load_zoo

    members = ensure_built("digits") / "members"
    fits = [Path(m) for m in load_zoo("digits-demo").members]
    shutil.rmtree(args.work / "hub", ignore_errors=True)  # a fresh Hub each run
    hub = Hub(args.work / "hub")
    hub.start()
    try:
        hub.publish(members / "base", "bench/base")
        for i in range(args.candidates):
            source = members / "other-arch" if i < args.misfits else fits[i % len(fits)]
            folder = args.work / "staging" / f"ft-{i:02d}"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(source, folder)
            (folder / "README.md").write_text("---\nbase_model: bench/base\nbase_model_relation: finetune\n---\n")
            hub.publish(folder, f"bench/ft-{i:02d}")
        rows = {}
        for label, extra in (("listing", []), ("--check", ["--check", "--json"])):
            walls, got, out = [], 0, ""
            for _ in range(args.runs):
                hf_home = args.work / "hf-home"
                shutil.rmtree(hf_home, ignore_errors=True)
                env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(hf_home),
                       "ZOO_CACHE": str(args.work / "zoo-cache")}
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "zoo", "--quiet", "discover", "bench/base",
                                       "--limit", str(args.candidates), *extra], env=env, capture_output=True,
                                      text=True)
                walls.append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    raise SystemExit(f"zoo discover failed: {proc.stderr}")
                got = sum(p.stat().st_size for p in hf_home.rglob("*") if p.is_file() and not p.is_symlink())
                weights = list(hf_home.rglob("*.safetensors"))
                out = proc.stdout
            rows[label] = (statistics.median(walls), min(walls), got, len(weights), out)
            print(f"  {label:8s} median {rows[label][0]:.2f} s over {args.runs} runs", flush=True)
        checked = json.loads(rows["--check"][4])  # the base, the count per member format, the candidates
        found = checked["candidates"]
        fit = sum(c["fits"] for c in found)
        listing, check = rows["listing"], rows["--check"]
        formats = ", ".join(f"{n} {name}" for name, n in checked["formats"].items())
        print(f"\n{len(found)} candidates ({fit} fit, {len(found) - fit} of another architecture; formats: "
              f"{formats}), served from 127.0.0.1; median of {args.runs} runs, each a fresh process and cache\n")
        print("| candidates | fit | `zoo discover` (s) | `--check` (s) | check per candidate (ms) | "
              "downloaded (KiB) | weights downloaded |\n|---|---|---|---|---|---|---|")
        print(f"| {len(found)} | {fit} | {listing[0]:.2f} | {check[0]:.2f} | "
              f"{(check[0] - listing[0]) / len(found) * 1000:.0f} | {check[2] / 1024:.0f} | {check[3]} |")
    finally:
        hub.stop()


if __name__ == "__main__":
    main()
