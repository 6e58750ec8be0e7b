"""Run `zoo ARGS` in a fresh process forked from one that has already imported torch, timm and zoo.

A test suite that runs the user's command a hundred times spends most of its time importing torch and
timm (seconds per process on two cores). Each command here still runs in its own process — its own
environment, working directory, exit code, stdout and stderr, nothing shared with the test — through
the same entry point as ``python -m zoo`` (``zoo.cli.main``); only the imports are done once, by a
multiprocessing *forkserver* that the children are forked from.

Settings that libraries read when they are imported (the Hub endpoint and home, offline mode) cannot be
changed in a forked child: a command given one of those runs as a plain ``python -m zoo`` subprocess, and
so does every command when ``ZOO_TESTS_SUBPROCESS=1``.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: environment variables read at import time by huggingface_hub, torch or zoo's preloaded modules
IMPORT_TIME = ("HF_ENDPOINT", "HF_HOME", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_HUB_DISABLE_XET", "TORCH_",
               "CUDA_", "OMP_", "MKL_")
PRELOAD = ["torch", "timm", "safetensors.torch", "huggingface_hub", "matplotlib.pyplot", "zoo.cli", "zoo.kit.data.splits",
           "zoo.kit.members.member", "zoo.kit.measure.metrics", "transformers.modeling_utils",
           "transformers.models.auto.modeling_auto", "transformers.image_processing_utils", "cli_runner"]

_context = None


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _child(args: list[str], env: dict[str, str], cwd: str, out_path: str, err_path: str) -> None:
    """In the forked process: this command's environment and streams, then zoo's entry point."""
    # a forkserver child inherits "forkserver" as its start method; a plain interpreter has the platform's
    # default (a DataLoader's workers would otherwise start a whole new server every epoch)
    multiprocessing.set_start_method(None, force=True)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for entry in reversed([p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    for fd, path in ((1, out_path), (2, err_path)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(handle, fd)
        os.close(handle)
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)
    sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)
    sys.argv = ["zoo", *args]
    code = 1
    try:
        from zoo.cli import main

        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # as the interpreter would: the traceback on stderr, exit 1
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _fresh_interpreter_needed(env: dict[str, str], base: dict[str, str]) -> bool:
    if os.environ.get("ZOO_TESTS_SUBPROCESS"):
        return True
    changed = {k for k in set(env) | set(base) if env.get(k) != base.get(k)}
    return any(k.startswith(IMPORT_TIME) for k in changed)


def run(args: list[str], env: dict[str, str], *, timeout: float = 600) -> subprocess.CompletedProcess:
    """``zoo ARGS`` with environment ``env``; returns the finished process (returncode, stdout, stderr)."""
    if _fresh_interpreter_needed(env, dict(os.environ)):
        return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True, env=env,
                              timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="zoo-cli-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        proc = _forkserver().Process(target=_child, args=(list(args), env, os.getcwd(), str(out), str(err)))
        proc.start()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(["zoo", *args], timeout)
        return subprocess.CompletedProcess(["zoo", *args], proc.exitcode,
                                           out.read_text(errors="replace") if out.exists() else "",
                                           err.read_text(errors="replace") if err.exists() else "")


def kill_when(args: list[str], env: dict[str, str], path: Path, *, timeout: float = 300) -> None:
    """Start ``zoo ARGS`` and SIGKILL it (a crash, not a polite stop) as soon as ``path`` exists."""
    import time

    with tempfile.TemporaryDirectory(prefix="zoo-cli-") as tmp:
        err = Path(tmp) / "stderr"
        proc = _forkserver().Process(target=_child, args=(list(args), env, os.getcwd(), os.devnull, str(err)))
        proc.start()
        deadline = time.time() + timeout
        while not Path(path).exists() and proc.is_alive() and time.time() < deadline:
            time.sleep(0.02)
        alive = proc.is_alive()
        proc.kill()
        proc.join()
        assert alive, f"the run ended before {Path(path).name} appeared: {err.read_text()[-2000:] if err.exists() else ''}"
