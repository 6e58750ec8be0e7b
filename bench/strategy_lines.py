"""Lines of each built-in strategy, split into algorithm and plumbing, at two commits of this repository.

    python bench/strategy_lines.py --before b99151d --after HEAD

A line is a source line that holds code: not blank, not a comment, not a docstring. It is *plumbing*
when it touches what is not the method itself (PLUMBING below: imports, the context, data splits and
batches, devices and AMP, optimizers and schedules, checkpoints, progress, logs, evaluation, figures,
cards and reports, files, errors, options, the CLI, hooks), else *algorithm*. The rule is coarse on
purpose: it is the same for both commits, so the change is what it shows.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: a strategy's files before the kit (flat layout) and after it
FILES = {
    "soup": (["plugins/soup.py"], ["plugins/soup.py"]),
    "wise-ft": (["plugins/wise_ft.py"], ["plugins/wise_ft/sweep.py"]),
    "bang": (["plugins/bang.py"], ["plugins/wise_ft/bang.py"]),
    "distill": (["plugins/distill.py", "plugins/distill_loop.py"],
                ["plugins/distill/__init__.py", "plugins/distill/strategy.py", "plugins/distill/losses.py",
                 "plugins/distill/loop.py"]),
    "stitch": (["plugins/stitch.py", "plugins/stitch_loop.py", "zoo/snnet.py", "zoo/snnet_io.py", "zoo/blocks.py",
                "zoo/cli_stitch.py"],
               ["plugins/stitch/__init__.py", "plugins/stitch/strategy.py", "plugins/stitch/loop.py",
                "plugins/stitch/snnet.py", "plugins/stitch/io.py", "plugins/stitch/blocks.py",
                "plugins/stitch/cli.py", "plugins/stitch/export.py"]),
}
PLUMBING = re.compile(
    r"^\s*(import|from)\s|\bctx\b|split|batches|loader|device|autocast|amp|scaler|optim|schedul|lr_|"
    r"checkpoint|resume|progress|\btask\b|\blog\(|evaluat|metrics|predict|plots?\.|pyplot|figure|\bfig\b|"
    r"\baxes\b|card|section|report|history|Combined|json|Path|open\(|write|save|load|mkdir|raise\s|Error|"
    r"BadInput|option\(|typer|console|hookimpl|def zoo_|rank|world_size|barrier|distributed|DDP", re.I)


def _source(rev: str, path: str) -> str | None:
    if rev == "WORKTREE":
        p = ROOT / path
        return p.read_text() if p.is_file() else None
    proc = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def _code_lines(text: str) -> set[int]:
    """Line numbers that hold code (tokens other than comments, newlines and docstrings)."""
    tree = ast.parse(text)
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                docstrings |= set(range(body[0].lineno, body[0].end_lineno + 1))
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING,
            tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type not in skip:
            lines |= set(range(tok.start[0], tok.end[0] + 1))
    return lines - docstrings


def count(text: str) -> tuple[int, int]:
    """(algorithm lines, plumbing lines) of one module."""
    lines = text.splitlines()
    code = _code_lines(text)
    plumbing = {n for n in code if PLUMBING.search(lines[n - 1])}
    return len(code - plumbing), len(plumbing)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="b99151d")
    ap.add_argument("--after", default="WORKTREE", help="a commit, or WORKTREE for the files as they are")
    args = ap.parse_args()
    print("| strategy | before: algorithm | before: plumbing | after: algorithm | after: plumbing | plumbing after ÷ before |")
    print("|---|---|---|---|---|---|")
    for name, (before, after) in FILES.items():
        row = []
        for rev, paths in ((args.before, before), (args.after, after)):
            alg = plumb = 0
            for path in paths:
                text = _source(rev, path)
                if text is not None:
                    a, p = count(text)
                    alg, plumb = alg + a, plumb + p
            row.append((alg, plumb))
        (a0, p0), (a1, p1) = row
        print(f"| {name} | {a0} | {p0} | {a1} | {p1} | {p1 / p0:.2f} |")


if __name__ == "__main__":
    main()
