"""Session fixtures: a real zoo built on real data, and command runners.

The zoo is the embedded digits-demo (zoo.demos.digits): timm's tiny test_efficientnet trained
on scikit-learn's handwritten digits, fine-tuned five ways from one base, plus an
independently trained member and one of another architecture. It is built once per
session (or reused from ZOO_CACHE).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Every Hub call of the suite goes to 127.0.0.1: point huggingface_hub there before anything imports it.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="zoo-tests-"))
os.environ.setdefault("ZOO_CACHE", str(_SESSION_TMP / "zoo-cache"))
os.environ["HF_HOME"] = str(_SESSION_TMP / "hf-home")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.pop("HF_TOKEN", None)
# Plugins installed in this environment stay out of the tests (as pytest's PYTEST_DISABLE_PLUGIN_AUTOLOAD);
# the tests of outside plugins switch entry points back on for their own commands (PLUGINS_ON).
os.environ["ZOO_DISABLE_PLUGIN_AUTOLOAD"] = "1"
os.environ.pop("ZOO_PLUGINS", None)
os.environ.pop("ZOO_DISABLE_PLUGINS", None)
PLUGINS_ON = {"ZOO_DISABLE_PLUGIN_AUTOLOAD": ""}

sys.path.insert(0, str(Path(__file__).parent))
from hubserver import Hub  # noqa: E402

# The test Hub's address is fixed now, before anything imports huggingface_hub (which reads HF_ENDPOINT
# once); the servers themselves start only when a test asks for the `hub` fixture.
_HUB = Hub(_SESSION_TMP / "hub")
os.environ["HF_ENDPOINT"] = _HUB.endpoint


@pytest.fixture(scope="session")
def hub():
    _HUB.start()
    yield _HUB
    _HUB.stop()


@pytest.fixture(scope="session")
def digits_zoo() -> Path:
    """The built digits-demo folder: members/ and data/{train,val,test}."""
    from zoo.demos import ensure_built

    return ensure_built("digits")


@pytest.fixture(scope="session")
def adapters(tmp_path_factory, digits_zoo) -> dict[str, Path]:
    """PEFT LoRA adapters of the digits-demo base, each beside the full model PEFT merges from it
    (tests/lora_adapters.py)."""
    from lora_adapters import make_adapters

    return make_adapters(tmp_path_factory.mktemp("adapters"), digits_zoo)


@pytest.fixture(scope="session")
def ingredients(digits_zoo) -> list[Path]:
    """The five fine-tunes of one base: soup ingredients."""
    from zoo.registry import load_zoo

    return [Path(m) for m in load_zoo("digits-demo").members]


@pytest.fixture(scope="session")
def val_dir(digits_zoo) -> Path:
    return digits_zoo / "data" / "val"


def run_zoo(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the `zoo` command as a user would, in its own process; returns the finished process.

    The process is forked from one that has already imported torch and timm (tests/cli_runner.py), which
    saves the seconds each import costs; ZOO_TESTS_SUBPROCESS=1 runs every command as `python -m zoo`.
    """
    import cli_runner

    full_env = {**os.environ, **(env or {})}
    proc = cli_runner.run([str(a) for a in args], full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"zoo {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture
def zoo_cli():
    return run_zoo


def refused(zoo_cli, out: Path, *args, words=()) -> str:
    """``zoo ARGS --out OUT`` refused as bad input: exit 2, one ``error:`` and no traceback, every word of ``words``
    in it (whitespace as the terminal wraps it aside), nothing written and nothing left staged. Returns the
    message."""
    proc = zoo_cli(*args, "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    err = " ".join(proc.stderr.split())
    assert err.startswith("error:") and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*")), "something was written or left staged"
    return err


def start_until(cmd: list, path: Path, timeout: float = 300) -> subprocess.Popen:
    """Start ``cmd`` and return it, still running, as soon as ``path`` exists (e.g. its first checkpoint)."""
    import time

    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before {path.name} appeared: {proc.stderr.read()[-2000:]}"
    return proc


def kill_after_checkpoint(args: list, out: Path, checkpoint: Path) -> None:
    """Run ``zoo ARGS --out OUT`` and SIGKILL it (a crash, not a polite stop) once ``checkpoint`` exists."""
    import cli_runner

    cli_runner.kill_when(["--quiet", *map(str, args), "--out", str(out)], dict(os.environ), checkpoint)


def class_slice(data: dict, out: Path, per_class: dict[str, int]) -> dict[str, Path]:
    """The first ``n`` images of every class of ``data[split]`` for each split, as symlinks under
    ``out/split`` (a class-balanced slice of a built zoo's data that keeps a slow test near a minute)."""
    for split, n in per_class.items():
        for cls in sorted(p for p in Path(data[split]).iterdir() if p.is_dir()):
            (out / split / cls.name).mkdir(parents=True)
            for image in sorted(cls.iterdir())[:n]:
                (out / split / cls.name / image.name).symlink_to(image.resolve())
    return {split: out / split for split in per_class}
