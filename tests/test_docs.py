"""The documentation's examples, run: stale docs fail here.

- Every ```python block of README.md and docs/*.md runs, each file's blocks in order in one
  namespace, in a fresh temporary working directory per file.
- Every `zoo SUBCOMMAND` in a ```bash block must exist: `zoo SUBCOMMAND --help` exits 0.

A block is skipped only when the line right before its fence says so (see docs/testing.md):

    <!-- zoo-docs: skip (needs the Hub) -->    never run here; the reason is shown
    <!-- zoo-docs: slow -->                     run, but marked slow (deselect with -m "not slow")
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^\s*<!--\s*zoo-docs:\s*(skip|slow)\b\s*(?:\((.*)\))?\s*-->\s*$")
FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})\s*([\w+-]*)")
GLOBAL_OPTIONS_WITH_VALUE = {"--plugin"}  # zoo's own options before the subcommand (not checked)


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None = None  # "skip" or "slow"
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the marker on the line before each fence."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1  # the closing fence
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mark = MARKER.match(prev)
        out.append(Block(path, start + 1, lang.lower(), "\n".join(body) + "\n",
                         mark.group(1) if mark else None, (mark.group(2) or "") if mark else ""))
    return out


ALL = [b for p in FILES for b in blocks(p)]
PYTHON = [b for b in ALL if b.lang in ("python", "py")]


def _param(block: Block, **kw):
    marks = []
    if block.marker == "skip":
        marks.append(pytest.mark.skip(reason=f"{block.id}: {block.reason or 'marked skip'}"))
    elif block.marker == "slow":
        marks.append(pytest.mark.slow)
    return pytest.param(block, id=block.id, marks=marks, **kw)


# ---- python blocks ------------------------------------------------------------------------------
@dataclass
class FileRun:
    """One file's namespace and working directory; its blocks run in order, each once."""

    cwd: Path
    module: types.ModuleType  # registered in sys.modules: dataclasses and pickling look classes up there
    done: dict = field(default_factory=dict)  # block line -> None (ran) or the formatted error


_RUNS: dict[Path, FileRun] = {}


def _run_block(block: Block, run: FileRun) -> str | None:
    old = Path.cwd()
    os.chdir(run.cwd)
    try:
        exec(compile(block.code, f"{block.id}", "exec"), run.module.__dict__)
        return None
    except BaseException as e:  # noqa: BLE001 - a block's SystemExit or KeyboardInterrupt is its failure
        if isinstance(e, KeyboardInterrupt):
            raise
        return "".join(traceback.format_exception(type(e), e, e.__traceback__))
    finally:
        os.chdir(old)


@pytest.fixture(scope="session")
def docs_env(digits_zoo, tmp_path_factory):
    """The digits-demo zoo built (the examples' members and data), headless plotting."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    return tmp_path_factory


@pytest.mark.parametrize("block", [_param(b) for b in PYTHON])
def test_python_block(block: Block, docs_env):
    run = _RUNS.get(block.path)
    if run is None:
        name = "zoo_docs_" + re.sub(r"\W", "_", str(block.path.relative_to(ROOT)))
        run = _RUNS[block.path] = FileRun(docs_env.mktemp(block.path.stem), types.ModuleType(name))
        sys.modules[name] = run.module
    # the file's earlier blocks first (so that -k can pick one block), skipped ones excepted
    for earlier in PYTHON:
        if earlier.path == block.path and earlier.line < block.line and earlier.marker != "skip" \
                and earlier.line not in run.done:
            run.done[earlier.line] = _run_block(earlier, run)
    if block.line not in run.done:
        run.done[block.line] = _run_block(block, run)
    error = run.done[block.line]
    if error:
        failed_before = [b.line for b in PYTHON if b.path == block.path and b.line < block.line
                         and run.done.get(b.line)]
        note = f" (earlier blocks of this file failed too: lines {failed_before})" if failed_before else ""
        pytest.fail(f"the ```python block at {block.id} fails{note}:\n{error}\n--- the block:\n{block.code}",
                    pytrace=False)


# ---- bash blocks: every zoo subcommand exists ------------------------------------------------------
def _logical_lines(code: str) -> list[str]:
    return re.sub(r"\\\n", " ", code).splitlines()


def zoo_commands(block: Block) -> list[tuple[str, ...]]:
    """The (subcommand[, sub-subcommand]) paths of every `zoo …` / `-m zoo …` call in a shell block."""
    found = []
    for line in _logical_lines(block.code):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote: not a command line
            continue
        for i, tok in enumerate(tokens):
            if tok != "zoo" or (i and tokens[i - 1] not in ("&&", "||", ";", "|", "-m", "then", "do")):
                continue
            rest = tokens[i + 1:]
            while rest and rest[0].startswith("-"):  # zoo's global options (--plugin X, --quiet, ...)
                rest = rest[2:] if rest[0] in GLOBAL_OPTIONS_WITH_VALUE else rest[1:]
            if not rest or not re.fullmatch(r"[a-z][a-z0-9-]*", rest[0]):
                continue
            path = [rest[0]]
            # a second bare word may be a sub-subcommand (zoo stitch list); for a plain command it is an
            # argument, and `zoo eval soup --help` still exits 0, so checking it is harmless
            if len(rest) > 1 and re.fullmatch(r"[a-z][a-z0-9-]*", rest[1]):
                path.append(rest[1])
            found.append(tuple(path))
    return found


def _shell_commands() -> list:
    seen: dict[tuple[str, ...], Block] = {}
    for b in ALL:
        if b.lang in ("bash", "sh", "shell", "console") and b.marker != "skip":
            for path in zoo_commands(b):
                seen.setdefault(path, b)
    return [pytest.param(path, block, id=f"zoo {' '.join(path)} ({block.id})") for path, block in seen.items()]


@pytest.mark.parametrize("path,block", _shell_commands())
def test_zoo_subcommand_exists(path: tuple[str, ...], block: Block):
    proc = subprocess.run([sys.executable, "-m", "zoo", *path, "--help"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, (f"`zoo {' '.join(path)}` (in the ```bash block at {block.id}) is not a zoo "
                                  f"command: `zoo {' '.join(path)} --help` exited {proc.returncode}:\n"
                                  f"{proc.stderr[-2000:]}")


# ---- the runner itself ----------------------------------------------------------------------------
def test_markers_and_command_parsing(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("text\n\n<!-- zoo-docs: skip (needs the Hub) -->\n```python\nraise SystemExit\n```\n\n"
                   "```bash\npip install -e . && zoo combine --x 1 \\\n  --y 2   # comment\n"
                   "zoo --plugin m select --list-metrics\ntorchrun --nproc-per-node 2 -m zoo combine ...\n"
                   "zoo stitch list snnet/\npython -c \"import zoo; zoo.load('x')\"\n"
                   "pip install ./examples/zoo-plugin-example\n```\n")
    py, sh = blocks(doc)
    assert (py.lang, py.marker, py.reason, py.line) == ("python", "skip", "needs the Hub", 4)
    assert sh.marker is None
    assert zoo_commands(sh) == [("combine",), ("select",), ("combine",), ("stitch", "list")]
    assert PYTHON, "no ```python blocks found: the runner reads nothing"
