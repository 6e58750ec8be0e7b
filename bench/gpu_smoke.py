"""GPU smoke: every strategy family, briefly, through the `zoo` commands a user runs, on the digits-demo zoo.

    python bench/gpu_smoke.py --device cuda --work /tmp/gpu-smoke     # wherever a GPU is at hand
    python bench/gpu_smoke.py --device cpu --work /tmp/cpu-smoke      # CI (tests/test_gpu_smoke.py)

Runs soup, TIES, task arithmetic, DARE, Model Stock, SLERP, Fisher merging, RegMean, WiSE-FT, fine-tuning
(AMP on CUDA), distillation, stitching, selection, alignment, ensemble, cascade and LEVI with tiny settings
(one epoch, small batches), each as `zoo ARGS` with `--device DEVICE`. The merges that use no data (soup,
ties, task-arithmetic, dare, model-stock, slerp) are run a second time with `--device cpu` and their
model.safetensors compared: bytes equal, or the largest absolute difference and the tensor it is in. Under
`--device cpu` that comparison is CPU against CPU: it shows only that the merge is deterministic, and the
output says so.

Writes WORK/gpu_smoke.json and WORK/gpu_smoke.md: per step the status, wall seconds, held-out top-1
(where the step measures one) and the CPU comparison, with the device name and the torch/CUDA versions.
Exit code 0 when every step succeeded and every merge compared equal (on a GPU a difference is reported
as a figure and does not fail the run), 1 otherwise.

The commands use an empty ZOO_CACHE in WORK/cache (features, hashes, decoded images are computed by them,
on this device); the digits-demo zoo is built, once, in the caller's ZOO_CACHE.

Each command runs in a process of its own, forked from this one after torch, timm and zoo are imported
(as tests/cli_runner.py does: the imports cost seconds per process on small machines); this process
touches no CUDA before the last command has ended, so every child initialises CUDA itself.
`--subprocess` runs each as a plain `python -m zoo` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: merges that use no data (their output should not depend on the device): compared with a --device cpu run
COMPARED = ("soup", "ties", "task-arithmetic", "dare", "model-stock", "slerp", "tsv", "iso-cts")
#: seconds one command may run (tiny settings: seconds on a GPU, under a minute on a loaded CPU), and the
#: exit code recorded for one killed past it
STEP_TIMEOUT = 600
TIMED_OUT = 124
#: the file that marks a --work folder as this script's (so a later run may replace it)
MARK = ".gpu-smoke"
#: the steps, in the order they run (plan() builds their commands)
STEPS = ("soup", "ties", "task-arithmetic", "dare", "model-stock", "slerp", "tsv", "iso-cts", "fisher", "regmean",
         "adamerging", "wise-ft", "finetune",
         "distill", "stitch", "select", "align", "ensemble", "cascade", "levi")


@dataclass
class Step:
    name: str
    family: str
    args: list[str]
    out: str
    #: how the output opens: timm (an ordinary timm repo), zoo (zoo.load), or none (zoo select's ranking)
    opens: str = "timm"
    status: str = "not run"
    rc: int | None = None
    wall_s: float | None = None
    top1: float | None = None
    loads: bool | None = None
    vs_cpu: dict | None = None
    log: str = ""
    note: str = ""
    extra: dict = field(default_factory=dict)


def plan(zoo_root: Path, ingredients: list[str], data: dict[str, Path], work: Path, device: str) -> list[Step]:
    """The steps, smallest settings that still run each family's real code path. ``ingredients``: the
    digits-demo zoo's members (its five fine-tunes), named one by one (``--zoo`` would look for the zoo in
    the commands' own, fresh ZOO_CACHE and build it again)."""
    members = zoo_root / "members"
    fine_tunes = [a for m in ingredients for a in ("-m", m)]
    ft = [str(members / n) for n in ("ft-lr3e-3", "ft-lr1e-3", "ft-ls0.1")]
    base, other, indep = str(members / "base"), str(members / "other-arch"), str(members / "independent")
    train, val = str(data["train"]), str(data["val"])
    dev = ["--device", device]
    held_out = ["--eval-data", val]  # every step measures top-1 on the same images

    def out(name: str) -> str:
        return str(work / name)

    def combine(strategy: str, *args: str, name: str | None = None) -> list[str]:
        return ["combine", "-s", strategy, *args, *dev, "--out", out(name or strategy)]

    steps = [
        Step("soup", "merge", combine("soup", *fine_tunes, *held_out), out("soup")),
        Step("ties", "merge", combine("ties", *fine_tunes, "--base", base, *held_out), out("ties")),
        Step("task-arithmetic", "merge", combine("task-arithmetic", *fine_tunes, "--base", base,
                                                 *held_out, "-o", "scale=0.5"), out("task-arithmetic")),
        Step("dare", "merge", combine("dare", *fine_tunes, "--base", base, *held_out), out("dare")),
        Step("model-stock", "merge", combine("model-stock", *fine_tunes, "--base", base, *held_out),
             out("model-stock")),
        Step("slerp", "merge", combine("slerp", "-m", ft[0], "-m", ft[1], *held_out), out("slerp")),
        Step("tsv", "merge", combine("tsv", *fine_tunes, "--base", base, *held_out), out("tsv")),
        Step("iso-cts", "merge", combine("iso-cts", *fine_tunes, "--base", base, *held_out), out("iso-cts")),
        Step("fisher", "merge with data", combine("fisher", "-m", ft[0], "-m", ft[1], "--train-data", train,
                                                  *held_out, "-o", "samples=32"), out("fisher")),
        Step("regmean", "merge with data", combine("regmean", "-m", ft[0], "-m", ft[1], "--train-data", train,
                                                   *held_out, "-o", "examples=32"), out("regmean")),
        Step("adamerging", "learned merge (AMP on CUDA)",
             combine("adamerging", *fine_tunes, "--base", base, *held_out, "-o", "steps=4", "-o", "batch_size=32"),
             out("adamerging")),
        Step("wise-ft", "wise-ft", combine("wise-ft", "-m", base, "-m", ft[0], *held_out, "-o", "alphas=0,0.5,1"),
             out("wise-ft")),
        Step("finetune", "finetune (AMP on CUDA)",
             ["finetune", base, "--train-data", train, "--eval-data", val, "--epochs", "1", "--batch-size", "128",
              *dev, "--out", out("finetune")], out("finetune")),
        Step("distill", "distill",
             combine("distill", "-m", ft[0], "-m", ft[1], "--train-data", train, "--eval-data", val,
                     "-o", f"student={base}", "-o", "epochs=1", "-o", "batch_size=128"), out("distill")),
        Step("stitch", "stitch",
             combine("stitch", "-m", base, "-m", indep, "--train-data", train, "--eval-data", val,
                     "-o", "epochs=1", "-o", "batch_size=128", "-o", "init_images=64"), out("stitch"), opens="zoo"),
        Step("select", "select", ["select", *fine_tunes, "--target-data", train, "--metric", "logme",
                                  "--top-k", "2", *dev,
                                  "--out", out("select")], out("select"), opens="none"),
        Step("align", "align", ["align", indep, "--to", base, "--eval-data", val, "-o", "max_sweeps=5", *dev,
                                "--out", out("align")], out("align")),
        Step("ensemble", "ensemble/cascade", combine("ensemble", "-m", ft[0], "-m", other, "--eval-data", val),
             out("ensemble"), opens="zoo"),
        Step("cascade", "ensemble/cascade", combine("cascade", "-m", other, "-m", ft[0], "--eval-data", val),
             out("cascade"), opens="zoo"),
        Step("levi", "levi", combine("levi", "-m", base, "--train-data", train, "--eval-data", val,
                                     "-o", "small=test_efficientnet", "-o", "epochs=1", "-o", "batch_size=128"),
             out("levi"), opens="zoo"),
    ]
    assert tuple(s.name for s in steps) == STEPS
    return steps


def sliced(data: Path, work: Path, per_class: int | None) -> dict[str, Path]:
    """The zoo's train and val splits, or the first ``per_class`` images of each class of them as symlinks
    under WORK/data (a class-balanced slice that keeps a CPU run short)."""
    if per_class is None:
        return {split: data / split for split in ("train", "val")}
    for split in ("train", "val"):
        for cls in sorted(p for p in (data / split).iterdir() if p.is_dir()):
            (work / "data" / split / cls.name).mkdir(parents=True)
            for image in sorted(cls.iterdir())[:per_class]:
                (work / "data" / split / cls.name / image.name).symlink_to(image.resolve())
    return {split: work / "data" / split for split in ("train", "val")}


def preload() -> None:
    """Import once, before the forks, what every command imports: torch, timm, zoo's CLI and plugins."""
    import importlib

    import timm  # noqa: F401
    import torch  # noqa: F401

    import zoo.cli  # noqa: F401
    from zoo.host import BUILTINS

    for name in ("safetensors.torch", "huggingface_hub", "matplotlib.pyplot", *BUILTINS):
        try:
            importlib.import_module(name)
        except ImportError:  # a module moved: the child imports what it needs itself, only slower
            pass


def cuda_available(fresh: bool) -> bool:
    """torch.cuda.is_available(), asked in a forked child when the commands are forked from this process:
    asked here, it could initialise CUDA in it (without NVML, torch asks the CUDA runtime)."""
    if fresh:  # the commands start afresh: nothing here is inherited
        import torch

        return torch.cuda.is_available()
    pid = os.fork()
    if pid == 0:
        import torch

        os._exit(0 if torch.cuda.is_available() else 3)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def cpu_twin(step: Step, work: Path) -> Step:
    """The same merge with --device cpu, written beside it: the reference its bytes are compared with."""
    args = list(step.args)
    args[args.index("--device") + 1] = "cpu"
    twin = str(work / f"{step.name}-cpu")
    args[args.index("--out") + 1] = twin
    return Step(f"{step.name} (cpu reference)", step.family, args, twin)


# ---- running one `zoo` command -------------------------------------------------------------------------
def run_zoo(args: list[str], log: Path, *, fresh: bool, threads: int | None = None,
            timeout: float = STEP_TIMEOUT) -> int:
    """``zoo -q ARGS`` in a process of its own, stdout and stderr into ``log``; its exit code (TIMED_OUT
    when it ran past ``timeout`` seconds and was killed: the run goes on unattended)."""
    argv = ["-q", *args]
    if fresh:
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        with open(log, "w") as fh:
            try:
                return subprocess.run([sys.executable, "-m", "zoo", *argv], stdout=fh, stderr=subprocess.STDOUT,
                                      env=env, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                return TIMED_OUT
    pid = os.fork()
    if pid == 0:  # the child: the user's entry point, as `python -m zoo` runs it
        code = 1
        try:
            handle = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(handle, 1)
            os.dup2(handle, 2)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            sys.argv = ["zoo", *argv]
            if threads:
                import torch

                torch.set_num_threads(threads)
            from zoo.cli import main

            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return TIMED_OUT
        time.sleep(0.05)


def run_step(step: Step, logs: Path, *, fresh: bool, threads: int | None = None,
             timeout: float = STEP_TIMEOUT) -> None:
    log = logs / f"{step.name.split()[0]}{'-cpu' if 'cpu reference' in step.name else ''}.log"
    step.log = str(log)
    start = time.perf_counter()
    step.rc = run_zoo(step.args, log, fresh=fresh, threads=threads, timeout=timeout)
    step.wall_s = round(time.perf_counter() - start, 2)
    step.status = "ok" if step.rc == 0 else "failed"
    if step.rc == 0:
        step.top1 = top1_of(Path(step.out))
        if step.opens == "none":
            step.extra = selection_of(Path(step.out))
    elif step.rc == TIMED_OUT:
        step.note = f"killed after {timeout:g} s"
    else:  # the command's own last line: zoo's message, or the exception a traceback ends with
        step.note = next(iter(log.read_text(errors="replace").strip().splitlines()[-1:]), "")


def top1_of(out: Path) -> float | None:
    """The held-out top-1 the command measured (zoo.json's metrics), if it measured one."""
    recipe = out / "zoo.json"
    if not recipe.is_file():
        return None
    metrics = json.loads(recipe.read_text()).get("metrics") or {}
    return round(float(metrics["top1"]), 4) if "top1" in metrics else None


def selection_of(out: Path) -> dict:
    report = json.loads((out / "ranking.json").read_text())
    return {"selected": [Path(s).name for s in report.get("selected", [])]}


# ---- comparing outputs ----------------------------------------------------------------------------------
def compare_outputs(a: Path, b: Path) -> dict:
    """Whether two outputs' model.safetensors are byte-identical; if not, the largest absolute difference
    and the tensor holding it (or what differs in their keys, shapes or dtypes)."""
    fa, fb = Path(a) / "model.safetensors", Path(b) / "model.safetensors"
    if fa.read_bytes() == fb.read_bytes():
        return {"equal": True, "max_abs_diff": 0.0}
    from safetensors.torch import load_file

    ta, tb = load_file(str(fa)), load_file(str(fb))
    if ta.keys() != tb.keys():
        return {"equal": False, "max_abs_diff": None, "differs": "keys: " + ", ".join(sorted(ta.keys() ^ tb.keys()))}
    worst, where = 0.0, None
    for key in ta:
        x, y = ta[key], tb[key]
        if x.shape != y.shape or x.dtype != y.dtype:
            return {"equal": False, "max_abs_diff": None, "differs": f"{key}: {x.dtype}{list(x.shape)} against "
                                                                      f"{y.dtype}{list(y.shape)}"}
        diff = (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
        if diff > worst or where is None and not x.equal(y):
            worst, where = diff, key
    return {"equal": False, "max_abs_diff": worst, "tensor": where}


def opens(step: Step) -> bool | None:
    """Does the output open as the user would open it: timm.create_model for a timm repo, else zoo.load."""
    if step.status != "ok" or step.opens == "none":
        return None
    if step.opens == "timm":
        import timm

        timm.create_model(f"local-dir:{step.out}", pretrained=True)
    else:
        import zoo

        zoo.load(step.out, device="cpu")
    return True


# ---- the environment and the report ---------------------------------------------------------------------
def environment(device: str, threads: int | None) -> dict:
    """Versions and the device's name; called after the last command, so no child inherits a CUDA context."""
    import platform

    import timm
    import torch

    env = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "timm": timm.__version__,
           "python": platform.python_version(), "threads": threads or torch.get_num_threads(),
           "cpu_count": os.cpu_count()}
    if device != "cpu" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def markdown(result: dict) -> str:
    env = result["environment"]
    where = env.get("gpu") or f"CPU ({env['cpu_count']} cores)"
    lines = [f"GPU smoke, `--device {env['device']}` on {where}: torch {env['torch']} (CUDA {env['cuda']}), "
             f"timm {env['timm']}; {result['started']}; total {result['wall_s']} s.", "",
             "| step | family | status | wall (s) | held-out top-1 | against --device cpu |",
             "|---|---|---|---|---|---|"]
    for s in result["steps"]:
        top1 = "" if s["top1"] is None else f"{s['top1']:.4f}"
        if s["extra"].get("selected"):
            top1 = "selected: " + ", ".join(s["extra"]["selected"])
        cmp = s["vs_cpu"]
        if cmp is None:
            versus = ""
        elif cmp.get("equal"):
            versus = "bytes equal"
        elif cmp.get("max_abs_diff") is not None:
            versus = f"differs: max abs {cmp['max_abs_diff']:.3g} ({cmp['tensor']})"
        else:
            versus = f"differs: {cmp.get('differs', cmp.get('error', '?'))}"
        status = s["status"] + (f" ({s['note']})" if s["note"] and s["status"] != "ok" else "")
        lines.append(f"| {s['name']} | {s['family']} | {status} | {s['wall_s']} | {top1} | {versus} |")
    lines += ["", result["comparison_note"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, cpu or auto")
    p.add_argument("--work", type=Path, default=Path("gpu-smoke"),
                   help="folder for the outputs, logs, gpu_smoke.json and gpu_smoke.md (replaced)")
    p.add_argument("--per-class", type=int, metavar="N",
                   help="use only the first N images of each class of the train and val splits (default: all)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads of each command (torch.set_num_threads; default: torch's). On a small shared "
                        "machine 1 is faster for these tiny models")
    p.add_argument("--step-timeout", type=float, default=STEP_TIMEOUT, metavar="SECONDS",
                   help=f"kill a command that runs longer and go on (default: {STEP_TIMEOUT})")
    p.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps (names as in the table)")
    p.add_argument("--subprocess", action="store_true",
                   help="run each command as a plain `python -m zoo` process (slower: imports every time)")
    a = p.parse_args(argv)

    work = a.work.resolve()  # bad input first, before seconds of imports
    if work.exists() and any(work.iterdir()) and not (work / MARK).is_file():
        p.error(f"--work {work}: not empty and not an earlier smoke run's folder (never deleted); give a new folder")
    unknown = sorted(set(a.only or ()) - set(STEPS))
    if unknown:
        p.error(f"--only {' '.join(unknown)}: no such step; steps: {', '.join(STEPS)}")

    # anything before the forks that asks torch whether CUDA is there asks NVML, leaving CUDA uninitialised
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    fresh = a.subprocess
    if not fresh:
        preload()
        import torch

        if torch.cuda.is_initialized():  # a forked child could not use CUDA: run each command afresh
            print("CUDA was initialised while importing: running every command as python -m zoo", file=sys.stderr)
            fresh = True
    if a.device.startswith("cuda") and not cuda_available(fresh):
        p.error(f"--device {a.device}: CUDA is not available here; run with --device cpu (what CI runs)")
    from zoo.registry import load_zoo

    if work.exists():
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True)
    (work / MARK).write_text("written by bench/gpu_smoke.py; replaced by its next run\n")
    ingredients = load_zoo("digits-demo").members  # the zoo is built on first use, in the user's ZOO_CACHE
    zoo_root = Path(ingredients[0]).parent.parent
    data = sliced(zoo_root / "data", work, a.per_class)
    steps = plan(zoo_root, ingredients, data, work, a.device)
    # the commands start from an empty cache of their own: features, hashes and decoded images are computed
    # on this device by these commands, never taken from an earlier run on another device
    os.environ["ZOO_CACHE"] = str(work / "cache")
    if a.only:
        steps = [s for s in steps if s.name in a.only]

    started, t0 = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.perf_counter()
    references: list[Step] = []
    for step in steps:
        print(f"{step.name:>16}: ", end="", flush=True)
        run_step(step, work / "logs", fresh=fresh, threads=a.threads, timeout=a.step_timeout)
        print(f"{step.status} in {step.wall_s} s" + (f", top-1 {step.top1:.4f}" if step.top1 is not None else "")
              + (f" ({step.note})" if step.note else ""), flush=True)
        if step.name in COMPARED:
            ref = cpu_twin(step, work)
            run_step(ref, work / "logs", fresh=fresh, threads=a.threads, timeout=a.step_timeout)
            references.append(ref)
            if step.status == ref.status == "ok":
                step.vs_cpu = compare_outputs(Path(step.out), Path(ref.out))
            else:
                step.vs_cpu = {"equal": False, "error": "the cpu reference failed" if step.status == "ok" else
                               "the step failed"}

    for step in steps:  # after every command: only now may this process touch CUDA or load the outputs
        try:
            step.loads = opens(step)
        except Exception as e:  # noqa: BLE001  (reported in the table, the run goes on)
            step.loads, step.status, step.note = False, "failed", f"output does not open: {e}"
    env = environment(a.device, a.threads)
    env["commands"] = "python -m zoo, each" if fresh else "forked from one process that imported torch and timm"
    on_cpu = "gpu" not in env
    note = ("Under --device cpu the comparison is CPU against CPU: it shows only that each merge is "
            "deterministic (the same bytes twice), not that a GPU computes the same merge." if on_cpu else
            f"Merges compared: {', '.join(s.name for s in steps if s.vs_cpu is not None)}: the GPU's "
            "model.safetensors against a --device cpu run of the same command.")
    result = {"started": started, "wall_s": round(time.perf_counter() - t0, 1), "environment": env,
              "per_class": a.per_class, "images": {k: sum(1 for _ in v.glob("*/*")) for k, v in data.items()},
              "cpu_vs_cpu": on_cpu, "comparison_note": note,
              "steps": [asdict(s) for s in steps], "cpu_references": [asdict(s) for s in references]}
    (work / "gpu_smoke.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (work / "gpu_smoke.md").write_text(table)
    print("\n" + table)
    failed = [s.name for s in [*steps, *references] if s.status != "ok"]
    unequal = [s.name for s in steps if s.vs_cpu is not None and not s.vs_cpu.get("equal")]
    if failed:
        print(f"failed: {', '.join(failed)} (logs in {work / 'logs'})", file=sys.stderr)
    if unequal and on_cpu:
        print(f"not deterministic on the CPU: {', '.join(unequal)}", file=sys.stderr)
    return 1 if failed or (unequal and on_cpu) else 0


if __name__ == "__main__":
    sys.exit(main())
