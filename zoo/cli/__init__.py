"""The `zoo` command: a thin layer over zoo.api. One module per sub-command; plugins add their own."""

from __future__ import annotations

import os
import sys

from zoo.cli import combine, discover, evaluate, finetune, push, reproduce, run, select, strategies  # noqa: F401  (they register)
from zoo.cli.app import Commands, app, hoist_global_flags, state


def _plugin_commands(argv: list[str]) -> None:
    """Let every plugin add its sub-commands (``zoo_commands``), with the --plugin modules of this run."""
    from zoo import host as _host

    extra = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--plugin"]
    extra += [a.split("=", 1)[1] for a in argv if a.startswith("--plugin=")]
    disabled = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--no-plugin"]
    disabled += [a.split("=", 1)[1] for a in argv if a.startswith("--no-plugin=")]
    try:
        host = _host.load(extra, disabled=disabled)
    except Exception:  # an invalid outside plugin is reported by the command that loads it, with its exit code;
        host = _host.builtins()  # the built-ins' commands (zoo align, zoo stitch) are there all the same
    host.pm.hook.zoo_commands(app=app, cli=Commands())


def main() -> None:
    # typer's usage errors exit 2 already; ours do too (zoo.kit.strategy.errors.BadInput)
    if os.environ.get("ZOO_DEBUG"):
        state.debug = True
    argv = hoist_global_flags(sys.argv[1:])
    _plugin_commands(argv)
    app(args=argv, prog_name="zoo")


__all__ = ["app", "main"]
