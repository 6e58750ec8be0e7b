"""`zoo stitch list` and `zoo stitch export`: read a stitched network (zoo combine --strategy stitch).

Added by the plugin's ``zoo_commands`` hook (:func:`stitch_app`); a command that meets bad input raises
``zoo.BadInput`` and zoo prints it, as for its own commands."""

from __future__ import annotations

from typing import Optional

import typer

import zoo


def stitch_app(cli) -> typer.Typer:
    """The `zoo stitch` commands; ``cli`` is what ``zoo_commands`` gives (zoo's console under --quiet)."""
    app = typer.Typer(help="Inspect a stitched network (SN-Net) and export one of its configurations.",
                      no_args_is_help=True)
    app.command("list")(list_cmd)

    @app.command("export")  # here, with `cli` at hand: its message goes through zoo's console
    def export_cmd(
        folder: str = typer.Argument(..., help="A stitched network: its folder or hf-hub:ORG/NAME\\[@REV]."),
        out: str = typer.Option(..., "--out", "-o", help="Folder to write the configuration to."),
        config: Optional[int] = typer.Option(None, "--config", help="The configuration's id (zoo stitch list)."),
        max_gflops: Optional[float] = typer.Option(None, "--max-gflops", help="Or: the most accurate "
                                                   "configuration within this many GFLOPs per image."),
        max_params: Optional[float] = typer.Option(None, "--max-params", help="Or: ... within this many "
                                                   "parameters."),
        force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    ):
        """Write one configuration as a standalone folder: an anchor as an ordinary timm model, a stitch as a
        one-configuration network (zoo.load) holding only the weights it uses."""
        from zoo.plugins.stitch.export import stitch_export

        path, chosen = stitch_export(folder, out, config=config, max_gflops=max_gflops, max_params=max_params,
                                     force=force)
        cli.console().print(f"configuration {chosen} written to {path}", highlight=False)

    return app


def list_cmd(
    folder: str = typer.Argument(..., help="A stitched network: its folder or hf-hub:ORG/NAME\\[@REV]."),
    sort: str = typer.Option("id", "--sort", help="Order rows by id, gflops, params or top1."),
    json_out: bool = typer.Option(False, "--json", help="Print the configurations as JSON."),
):
    """Every configuration: id, anchors, blocks, GFLOPs, parameters, held-out top-1 (★: Pareto front)."""
    import json

    from zoo.plugins.stitch.export import stitch_configs

    if sort not in ("id", "gflops", "params", "top1"):
        raise zoo.BadInput(f"--sort {sort!r}: use id, gflops, params or top1")
    rows = stitch_configs(folder)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    front = _pareto(rows)
    rows = sorted(rows, key=lambda r: (-(r.get(sort) or 0) if sort == "top1" else r.get(sort) or 0))
    table = Table(title=f"{len(rows)} configurations of {folder}")
    for col, justify in (("id", "right"), ("configuration", "left"), ("GFLOPs", "right"),
                         ("parameters", "right"), ("held-out top-1", "right")):
        table.add_column(col, justify=justify)
    for r in rows:
        mark = (" ★" if r["id"] in front else "") + (" (default)" if r["default"] else "")
        table.add_row(f"{r['id']}{mark}", r["description"], f"{r['gflops']:.4g}", f"{r['params']:,}",
                      f"{r['top1'] * 100:.2f}%" if r.get("top1") is not None else "–")
    Console().print(table)


def _pareto(rows: list[dict]) -> set[int]:
    if not all(r.get("top1") is not None for r in rows):
        return set()
    best, front = -1.0, set()
    for r in sorted(rows, key=lambda r: (r["gflops"], -r["top1"])):
        if r["top1"] > best:
            front.add(r["id"])
            best = r["top1"]
    return front

