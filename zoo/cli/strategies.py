"""`zoo strategies` and `zoo strategies show NAME`."""

from __future__ import annotations

from typing import List, Optional

import typer

from zoo.cli.app import console, state, strategies_app


@strategies_app.callback()
def strategies_list(ctx: typer.Context):
    """Every strategy, with where it comes from."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    from zoo import host as _host

    host = _host.load(state.plugins)
    found = host.strategies()
    table = Table()
    for col in ("strategy", "from", "summary"):
        table.add_column(col)
    for name, (cls, origin) in found.items():
        table.add_row(name, origin, cls.summary)
    Console().print(table)
    for b in host.broken:
        console().print(f"[yellow]warning:[/] plugin {b.name} ({b.origin}) failed to load: {b.error}",
                         highlight=False)


@strategies_app.command("show")
def strategies_show(name: str = typer.Argument(..., help="Strategy name.")):
    """A strategy's options: type, default, help."""
    from rich.console import Console
    from rich.table import Table

    from zoo import host as _host
    from zoo.kit.strategy import options

    host = _host.load(state.plugins)
    cls = host.strategy(name)
    origin = host.strategies()[name][1]
    console = Console()
    console.print(f"[bold]{cls.name}[/] ({origin}): {cls.summary}", highlight=False)
    if cls.needs_base:
        console.print("needs a base model: --base SPEC", highlight=False)
    flags = {"train": "--train-data", "eval": "--eval-data", "ood": "--ood-data"}
    for need in getattr(cls, "needs", ()):
        console.print(f"needs {flags.get(need, need)} DIR", highlight=False)
    most = getattr(cls, "max_members", None)
    members = f"{cls.min_members}" if most == cls.min_members else (
        f"{cls.min_members} or more" if most is None else f"{cls.min_members} to {most}")
    console.print(f"members: {members}", highlight=False)
    table = Table()
    for col in ("option", "type", "default", "help"):
        table.add_column(col)
    from rich.markup import escape

    for info in options.describe(cls.Options):  # escaped: a help's "[...]" is text, not Rich markup
        table.add_row(info.name, info.type_name, escape(str(info.default)), escape(info.help))
    console.print(table)
    console.print(f"set with: zoo combine --strategy {name} --option KEY=VALUE", highlight=False)
