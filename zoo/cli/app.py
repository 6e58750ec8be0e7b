"""The `zoo` command's shared parts: the typer app, the global flags, and how every command prints,
shows progress and fails (one line on stderr, exit 2 for bad input, 1 otherwise).

Each sub-command is a module of this package; plugins add theirs through the ``zoo_commands`` hook and
get the same helpers as :class:`Commands`. Imports nothing heavy at start-up.
"""

from __future__ import annotations

from typing import List

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
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
    from zoo.kit._infra.progress import Rich, Silent

    if state.quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
        return Silent()
    return Rich(console())


def fail(e: BaseException) -> None:
    from zoo.kit.strategy.errors import ZooError

    if state.debug:
        raise e
    code = e.exit_code if isinstance(e, ZooError) else 1
    message = str(e) if isinstance(e, ZooError) else f"{type(e).__name__}: {e} (run with --debug for the traceback)"
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run(fn, progress=None):
    """Call ``fn``; turn any failure into one line on stderr and the right exit code."""
    try:
        return fn()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        console().print("interrupted; nothing was written")
        raise typer.Exit(130)
    except Exception as e:
        fail(e)
    finally:
        if progress is not None and hasattr(progress, "stop"):
            progress.stop()


def wrote(out, metrics: dict | None) -> str:
    """The line a command ends with: where it wrote, and the held-out figures when there were any."""
    summary = f"wrote {out}"
    if metrics:
        shown = [f"{label} {metrics[key]:.4f}" for key, label in
                 (("top1", "held-out top-1"), ("nll", "NLL"), ("ece", "ECE")) if key in metrics]
        summary += " — " + ", ".join(shown)
    return summary


class Commands:
    """What a plugin's ``zoo_commands(app, cli)`` gets as ``cli``: zoo's way to run, print and show progress."""

    run = staticmethod(run)
    console = staticmethod(console)
    progress = staticmethod(progress_bars)

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
