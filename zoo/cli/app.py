"""The `zoo` command's shared parts: the typer app, the global flags, and how every command prints,
shows progress and fails.

A command, built-in or from a plugin, reports a failure by raising: :class:`zoo.BadInput` (exit 2) or
another :class:`zoo.ZooError` (its ``exit_code``; 1 for the network). The app (:class:`ZooGroup`) prints
one line on stderr and exits with that code; any other exception is printed as an unexpected error
(exit 1; ``--debug`` shows the traceback). Each sub-command is a module of this package; plugins add
theirs through the ``zoo_commands`` hook and get the same helpers as :class:`Commands`. Imports nothing
heavy at start-up.
"""

from __future__ import annotations

import contextlib
from typing import Any, List

import typer
from typer.core import TyperGroup


class ZooGroup(TyperGroup):
    """The root command: whatever a sub-command raises becomes one line on stderr and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _passed_on():
            raise  # an exit asked for (--help too), and click's usage errors (exit 2), as typer prints them
        except KeyboardInterrupt:
            console().print("interrupted; nothing was written")
            raise typer.Exit(130)
        except Exception as e:
            fail(e)


def _passed_on() -> tuple[type[BaseException], ...]:
    """What typer itself handles: its exits and aborts, and click's usage errors (typer ≥ 0.26 carries its own
    copy of click, older versions use click's)."""
    import importlib

    import typer.core

    click = getattr(typer.core, "_click", None) or importlib.import_module("click")
    return (typer.Exit, typer.Abort, click.exceptions.ClickException,
            *(getattr(click.exceptions, name) for name in ("Exit", "Abort") if hasattr(click.exceptions, name)))


app = typer.Typer(cls=ZooGroup, add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Combine pretrained models: weight soups and more, as pluggy plugins.")
strategies_app = typer.Typer(help="List strategies, or show one's options.", invoke_without_command=True)
app.add_typer(strategies_app, name="strategies")

#: flags every command takes, before or after the sub-command (`zoo --quiet combine ...` or `zoo combine ... -q`)
GLOBAL_FLAGS = ("--quiet", "-q", "--debug")
GLOBAL_VALUED = ("--plugin", "--no-plugin")


class state:
    """The global flags of this run."""

    quiet = False
    debug = False
    plugins: list[str] = []
    disabled: list[str] = []


def console():
    from rich.console import Console

    return Console(stderr=True, quiet=state.quiet)


def progress_bars():
    """Progress bars (silent under --quiet) for a caller that stops them itself: see :func:`progress`."""
    from zoo.kit._infra.progress import Rich, Silent

    if state.quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
        return Silent()
    return Rich(console())


@contextlib.contextmanager
def progress():
    """``with progress() as bars:`` progress bars for a command's work, gone when the block ends, however it
    ends (before the command prints its answer: a live display would take stdout over)."""
    bars = progress_bars()
    try:
        yield bars
    finally:
        if hasattr(bars, "stop"):
            bars.stop()


def fail(e: BaseException) -> None:
    """Print ``e`` as one line on stderr and exit with its code (a ZooError's ``exit_code``, else 1)."""
    from zoo.kit.strategy.errors import ZooError

    if state.debug:
        raise e
    code = e.exit_code if isinstance(e, ZooError) else 1
    message = str(e) if isinstance(e, ZooError) else f"{type(e).__name__}: {e} (run with --debug for the traceback)"
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def wrote(out, metrics: dict | None) -> str:
    """The line a command ends with: where it wrote, and the held-out figures when there were any."""
    summary = f"wrote {out}"
    if metrics:
        shown = [f"{label} {metrics[key]:.4f}" for key, label in
                 (("top1", "held-out top-1"), ("nll", "NLL"), ("ece", "ECE")) if key in metrics]
        summary += " — " + ", ".join(shown)
    return summary


def run_strategy(strategy: str, members: list[str], **kwargs: Any):
    """Run a strategy as `zoo combine` does: ``zoo.combine`` with this run's --plugin modules, progress bars
    and messages (the keywords are ``zoo.combine``'s); returns its :class:`zoo.Combined`."""
    from zoo.api.combine import combine as _combine

    with progress() as bars:
        return _combine(strategy, members, plugins=state.plugins, progress=bars, log=console().print, **kwargs)


def load_members(specs: list[str], *, base: str | None = None, arch: str | None = None, allow_pickle: bool = False):
    """Resolve members (and a base) as `zoo combine` does, with this run's --plugin modules and progress bars:
    ``(members, base member or None)``."""
    from zoo import host as _host
    from zoo.api.combine import load_member, load_members as _load

    with progress() as bars:
        host = _host.load(list(state.plugins))
        base_member = load_member(base, arch=arch, allow_pickle=allow_pickle, plugins=state.plugins) if base else None
        return _load(specs, host=host, arch=arch, allow_pickle=allow_pickle, progress=bars, base=base_member), \
            base_member


class Commands:
    """What a plugin's ``zoo_commands(app, cli)`` gets as ``cli``: zoo's way to print, show progress, resolve
    members and run a strategy. Errors need nothing from it: a command raises :class:`zoo.BadInput` (or another
    :class:`zoo.ZooError`) and the app prints it with its exit code."""

    console = staticmethod(console)
    progress = staticmethod(progress)
    combine = staticmethod(run_strategy)
    load_members = staticmethod(load_members)

    @property
    def plugins(self) -> list[str]:
        return list(state.plugins)


@app.callback()
def _main(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages; errors only."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    plugin: List[str] = typer.Option([], "--plugin", help="Load one more plugin module (repeatable; also "
                                      "ZOO_PLUGINS=mod1,mod2)."),
    no_plugin: List[str] = typer.Option([], "--no-plugin", help="Switch an outside plugin off by its entry-point "
                                         "name (repeatable; also ZOO_DISABLE_PLUGINS=name1,name2)."),
):
    import os

    state.quiet, state.debug = quiet, debug
    state.plugins, state.disabled = list(plugin), list(no_plugin)
    if no_plugin:  # every plugin host of this run (zoo.api loads its own) leaves them out
        from zoo.host import DISABLE_VAR

        os.environ[DISABLE_VAR] = ",".join(filter(None, [os.environ.get(DISABLE_VAR, ""), *no_plugin]))


def hoist_global_flags(argv: list[str]) -> list[str]:
    """Move the global flags to the front, so they work after the sub-command too, as users type them."""
    front, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        if arg in GLOBAL_FLAGS:
            front.append(arg)
        elif arg in GLOBAL_VALUED and i + 1 < len(argv):
            front += [arg, argv[i + 1]]
            i += 1
        elif any(arg.startswith(f"{flag}=") for flag in GLOBAL_VALUED):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest
