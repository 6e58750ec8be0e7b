"""`zoo discover BASE`: the Hub's fine-tunes (adapters, merges, quantizations) of a base, which of them fit
it for a weight merge, and a zoo file of those that do."""

from __future__ import annotations

from collections import Counter
from typing import List, Optional

import typer

from zoo.cli.app import app, console, progress, state


@app.command("discover")
def discover_cmd(
    base: str = typer.Argument(..., help="The base model: ORG/NAME or hf-hub:ORG/NAME\\\\[@REV]."),
    relation: List[str] = typer.Option(["finetune"], "--relation", "-r", help="How the models derive from the "
                                       "base, as the Hub's model tree says: finetune, adapter, merge or "
                                       "quantized (repeatable), or all."),
    limit: int = typer.Option(20, "--limit", help="At most this many models (per relation)."),
    sort: str = typer.Option("downloads", "--sort", help="Most first by downloads, likes, last_modified, "
                             "created_at or trending_score."),
    check: bool = typer.Option(False, "--check", help="Compare each with the base from its safetensors header "
                               "and config.json (no weights are downloaded): its format (timm, transformers, "
                               "...), whether zoo can load it, which fit, and why the others do not."),
    write: Optional[str] = typer.Option(None, "--write", help="Write a zoo .toml of the models that fit "
                                        "(implies --check), for zoo combine --members-from."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --write file."),
    as_json: bool = typer.Option(False, "--json", help="Print the models (and, with --check, the count per "
                                 "format) as JSON on stdout, not a table."),
):
    """List the Hub's models that name BASE as their base (its model tree), each pinned to its commit."""
    from zoo.api.discover import discover, format_counts, parse_base

    with progress() as bars:
        found = discover(base, relation=relation, limit=limit, sort=sort, check=check, write=write, force=force,
                         plugins=state.plugins, progress=bars)
    say = console()
    checked = check or write is not None
    repo_id = parse_base(base)[0]
    if as_json:
        import json

        typer.echo(json.dumps({"base": repo_id, "formats": format_counts(found) if checked else None,
                               "candidates": [c.as_dict() for c in found]}, indent=2))
    else:
        _table(found, checked, several=len({c.relation for c in found}) > 1, sort=sort)
    if checked:
        others = Counter(c.verdict for c in found if not c.fits)
        summary = (f"{sum(c.fits for c in found)} of {len(found)} fit {repo_id}"
                   + "".join(f"; {n} {why}" for why, n in others.items())
                   + " (from safetensors headers and config.json; no weights downloaded)")
    else:
        names = "model names" if len(found) == 1 else "models name"
        summary = f"{len(found)} {names} {repo_id} as their base, most {sort} first; --check says which fit"
    say.print(summary, highlight=False, soft_wrap=True)
    if write is not None:
        say.print(f"wrote {write} ({sum(c.fits for c in found)} members): zoo combine --strategy soup "
                  f"--members-from {write} --out soup/", highlight=False, soft_wrap=True)


def _table(found, checked: bool, several: bool, sort: str) -> None:
    """The candidates as a table (with the value they are sorted by; --json has them all); with the check,
    each one's format and whether zoo loads it, the count per format as the table's caption, and each
    misfit's whole reason below it, a line too long for a table cell."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from zoo.api.discover import SORTS, format_counts

    key = SORTS[sort]
    out = Console()
    counts = format_counts(found) if checked else {}
    table = Table(caption="formats: " + ", ".join(f"{n} {name}" for name, n in counts.items()) if checked else None,
                  caption_justify="left")
    columns = ["#", "model", "revision", *(["relation"] if several else []), key.replace("_", " "),
               *(["format", "loads", "architecture", "fits"] if checked else [])]
    for col in columns:
        table.add_column(col, justify="right" if col in ("#", "downloads", "likes", "trending score") else "left",
                         overflow="fold")
    for i, c in enumerate(found, 1):
        value = getattr(c, key)
        shown = "-" if value is None else value[:10] if isinstance(value, str) else str(value)  # dates: the day
        verdict = "[green]fits[/]" if c.fits else f"[red]{escape(c.verdict)}[/]"
        loads = "-" if c.loads is None else "yes" if c.loads else "[red]no[/]"
        table.add_row(str(i), escape(c.repo_id), c.sha[:10], *([c.relation] if several else []), shown,
                      *([escape(c.format or "none"), loads, escape(c.architecture or "-"), verdict] if checked else []))
    out.print(table)
    for i, c in enumerate(found, 1):
        if checked and not c.fits:
            out.print(f"{i}. {escape(c.repo_id)} does not fit: {escape(c.reason)}", highlight=False, soft_wrap=True)
