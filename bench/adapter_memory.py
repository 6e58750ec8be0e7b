"""Memory of a merge of LoRA adapters against the size of their base: peak RSS per run, in its own process.

    python bench/adapter_memory.py --work /tmp/zoo-adapter-memory    # --arch vit_large_patch16_224 --adapters 4 --rank 16

The base is timm's ARCH at random init, saved as a timm folder; N LoRA adapters of it are made with PEFT
(``get_peft_model`` + ``LoraConfig(r=RANK)`` on every block's qkv/proj/fc1/fc2, A and B set to small random values
so that every delta is non-zero, ``save_pretrained``; ``base_model_name_or_path`` = the base folder). Then, each in
its own process with an empty ZOO_CACHE and the page cache of the inputs dropped, peak RSS from ``os.wait4``
(``ru_maxrss``):

  imports   : the imports a merge needs and nothing else (torch, timm, peft, zoo's combine): the floor
  ta        : `zoo combine -s task-arithmetic --base BASE -m a1 .. aN --out OUT`      (a full model)
  ties      : `zoo combine -s ties --base BASE -m a1 .. aN --out OUT`                 (a full model)
  ta-adapter: `zoo combine -s task-arithmetic ... --format adapter -o rank=RANK`      (a merged adapter)
  ties-adapter: the same with TIES
  ta-full, ties-full: `-s task-arithmetic` / `-s ties` of the same four models as full timm folders (each adapter
            merged into the base by PEFT's ``merge_and_unload``): what the adapter path costs over full members

The claim checked: peak − floor stays well under the base's size (the engine streams a few tensors at a time and
never holds the whole model). Prints the Markdown table for bench/RESULTS.md.

    python bench/adapter_memory.py --work /tmp/zoo-adapter-memory --trace ta     # where the memory goes

``--trace RUN`` runs that zoo command in this process instead, with a thread that samples VmRSS every 10 ms and
keeps the main thread's stack at each new maximum (50 MB steps): it prints the peak, the last stacks and the
RSS timeline (seconds:GiB). Try it with MALLOC_ARENA_MAX=1 to see the allocator's share.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soup_memory import drop_caches, measure  # noqa: E402  (the soup bench's cache eviction and RSS)

IMPORTS = "import torch, timm, peft, safetensors, zoo, zoo.api.combine, zoo.cli"
TARGETS = r".*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"  # not patch_embed.proj (a 16×16 convolution)


def make(arch: str, n: int, rank: int, work: Path) -> tuple[Path, list[Path]]:
    """The base folder and N adapter folders (kept if already there)."""
    base, adapters = work / "base", [work / f"a{i + 1}" for i in range(n)]
    if (base / "model.safetensors").is_file() and all((a / "adapter_model.safetensors").is_file() for a in adapters):
        return base, adapters
    import timm
    import torch
    from peft import LoraConfig, get_peft_model
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False)
    save_for_hf(model, str(base), safe_serialization=True)
    for i, folder in enumerate(adapters):
        peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS))
        g = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_A" in name:
                    p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
                elif "lora_B" in name:  # PEFT starts B at zero: a delta of zero
                    p.copy_(0.01 * torch.randn(p.shape, generator=g))
        peft_model.peft_config["default"].base_model_name_or_path = str(base)
        peft_model.save_pretrained(str(folder))
        model = peft_model.unload()  # the bare base again for the next adapter
        print(f"  wrote {folder}", flush=True)
    return base, adapters


def make_full(arch: str, base: Path, adapters: list[Path], work: Path) -> list[Path]:
    """Each adapter merged into the base by PEFT (``merge_and_unload``), saved as a full timm folder."""
    folders = [work / f"full-{a.name}" for a in adapters]
    if all((f / "model.safetensors").is_file() for f in folders):
        return folders
    import timm
    from peft import PeftModel
    from safetensors.torch import load_file
    from timm.models import save_for_hf

    model = timm.create_model(arch, pretrained=False)
    start = load_file(str(base / "model.safetensors"))
    for adapter, folder in zip(adapters, folders):
        model.load_state_dict(start)
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        save_for_hf(merged, str(folder), safe_serialization=True)
        model = merged
        print(f"  wrote {folder}", flush=True)
    return folders


def trace(argv: list[str]) -> None:
    """``zoo ARGV`` in this process under an RSS sampler (see the module docstring)."""
    import threading
    import traceback

    main_id, samples, peaks, done = threading.get_ident(), [], [], threading.Event()

    def rss() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 2**20

    def sample() -> None:
        t0, best, logged = time.perf_counter(), 0.0, 0.0
        while not done.is_set():
            r = rss()
            samples.append((time.perf_counter() - t0, r))
            best = max(best, r)
            if best - logged > 0.05:
                logged = best
                stack = traceback.format_stack(sys._current_frames().get(main_id))[-12:]
                peaks.append((samples[-1][0], r, "".join(stack)))
            time.sleep(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    from zoo.cli import main as zoo_main

    sys.argv = ["zoo", *argv]
    try:
        zoo_main()
    except SystemExit:
        pass
    done.set()
    thread.join()
    for t, r, stack in peaks[-4:]:
        print(f"\n=== t={t:.1f} s, RSS {r:.3f} GiB\n{stack}")
    step = max(1, len(samples) // 80)
    print("timeline: " + " ".join(f"{t:.0f}:{r:.2f}" for t, r in samples[::step]))
    print(f"peak {max(r for _, r in samples):.3f} GiB, wall {samples[-1][0]:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vit_large_patch16_224")
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--work", type=Path, default=Path("/tmp/zoo-adapter-memory"))
    ap.add_argument("--only", default="", help="comma-separated runs (default: all)")
    ap.add_argument("--full", action="store_true", help="also the runs on full members (ta-full, ties-full)")
    ap.add_argument("--trace", default="", help="run this one run in-process under an RSS sampler")
    ap.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.make_only:
        base, adapters = make(args.arch, args.adapters, args.rank, work)
        if args.full:
            make_full(args.arch, base, adapters, work)
        return
    print(f"making the base ({args.arch}) and {args.adapters} adapters (r={args.rank}) in {work}", flush=True)
    # made in a child: this process stays small (no torch), since ru_maxrss survives fork+exec
    subprocess.run([sys.executable, __file__, "--make-only", "--arch", args.arch, "--adapters", str(args.adapters),
                    "--rank", str(args.rank), "--work", str(work), *(["--full"] if args.full else [])], check=True)
    base, adapters = work / "base", [work / f"a{i + 1}" for i in range(args.adapters)]
    inputs = [base / "model.safetensors", *(a / "adapter_model.safetensors" for a in adapters)]
    base_size = inputs[0].stat().st_size / 2**30
    adapter_sizes = [p.stat().st_size / 2**20 for p in inputs[1:]]
    py = sys.executable
    merge = [py, "-m", "zoo", "--quiet", "combine", "--base", str(base), *sum((["-m", str(a)] for a in adapters), []),
             "--device", "cpu", "--force"]
    runs = {
        "imports": [py, "-c", IMPORTS],
        "ta": [*merge, "-s", "task-arithmetic", "--out", str(work / "out")],
        "ties": [*merge, "-s", "ties", "--out", str(work / "out")],
        "ta-adapter": [*merge, "-s", "task-arithmetic", "--format", "adapter", "-o", f"rank={args.rank}",
                       "--out", str(work / "out")],
        "ties-adapter": [*merge, "-s", "ties", "--format", "adapter", "-o", f"rank={args.rank}",
                         "--out", str(work / "out")],
    }
    if args.full:
        full = [py, "-m", "zoo", "--quiet", "combine", "--base", str(base),
                *sum((["-m", str(work / f"full-{a.name}")] for a in adapters), []), "--device", "cpu", "--force"]
        runs["ta-full"] = [*full, "-s", "task-arithmetic", "--out", str(work / "out")]
        runs["ties-full"] = [*full, "-s", "ties", "--out", str(work / "out")]
        inputs += [work / f"full-{a.name}" / "model.safetensors" for a in adapters]
    if args.trace:
        if args.trace not in runs or args.trace == "imports":
            raise SystemExit(f"--trace: one of {', '.join(r for r in runs if r != 'imports')}")
        os.environ["ZOO_CACHE"] = str(work / "zoo-cache-trace")
        return trace(runs[args.trace][3:])  # the arguments after `python -m zoo`
    only = [r for r in args.only.split(",") if r] or list(runs)
    unknown = sorted(set(only) - set(runs))
    if unknown:
        raise SystemExit(f"--only: unknown run(s) {unknown}; known: {', '.join(runs)}")
    cache = work / "zoo-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "ZOO_CACHE": str(cache)}
    results, outputs = {}, {}
    for name in (r for r in runs if r in only):
        shutil.rmtree(work / "out", ignore_errors=True)
        drop_caches(inputs)
        results[name] = measure(runs[name], env)
        if name != "imports":
            outputs[name] = sum(p.stat().st_size for p in (work / "out").glob("*.safetensors")) / 2**20
        written = f"   output {outputs[name]:.1f} MiB" if name in outputs else ""
        print(f"  {name:12s} wall {results[name][0]:7.1f} s   peak RSS {results[name][1]:6.2f} GiB{written}", flush=True)
    shutil.rmtree(work / "out", ignore_errors=True)
    floor = results.get("imports", (0.0, 0.0))[1]
    print(f"\nbase {args.arch}: {base_size:.2f} GiB on disk; {args.adapters} adapters r={args.rank}: "
          + ", ".join(f"{s:.1f}" for s in adapter_sizes) + " MiB; imports-only floor "
          f"{floor:.2f} GiB")
    print("\n| run | wall (s) | peak RSS (GiB) | peak − floor (GiB) | (peak − floor) / base size | output (MiB) |")
    print("|---|---|---|---|---|---|")
    for name, (wall, rss) in results.items():
        out = f"{outputs[name]:.0f}" if name in outputs else ""
        print(f"| {name} | {wall:.1f} | {rss:.2f} | {rss - floor:.2f} | {(rss - floor) / base_size:.2f} | {out} |")


if __name__ == "__main__":
    main()
