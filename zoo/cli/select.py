"""`zoo select`: rank members for a target task, or pick a team."""

from __future__ import annotations

from typing import List, Optional

import typer

from zoo.cli.app import app, console, progress, state


@app.command("select")
def select_cmd(
    member: List[str] = typer.Option([], "--member", "-m", help="A candidate member (repeatable): "
                                     "hf-hub:ORG/NAME\\[@REV], a folder, or a .safetensors file."),
    zoo_name: Optional[str] = typer.Option(None, "--zoo", help="Candidates from a named zoo or zoo .toml (its "
                                           "train/eval data are the defaults for --target-data/--val-data)."),
    members_from: Optional[str] = typer.Option(None, "--members-from", help="Candidates from a zoo .toml (e.g. "
                                               "an earlier selection's zoo.toml); its data is not used."),
    target_data: Optional[str] = typer.Option(None, "--target-data", help="Labelled target data: image folder, "
                                              "one sub-folder per class."),
    metric: str = typer.Option("logme", "--metric", help="Ranking metric: logme, leep, nce, hscore, "
                               "hscore-shrinkage, gbc, or a plugin's (see --list-metrics)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Select this many (default: all, ranked; "
                                        "3 with --ensemble)."),
    ensemble: bool = typer.Option(False, "--ensemble", help="Pick a team greedily by --team-metric instead of "
                                  "the top-k of the ranking."),
    team_metric: str = typer.Option("osborn", "--team-metric", help="With --ensemble: osborn, ms-leep or e-leep."),
    weight: List[str] = typer.Option([], "--weight", help="With --ensemble: a team-metric weight NAME=VALUE "
                                     "(osborn: domain, task, cohesion; default 1 each). Repeatable."),
    source_data: List[str] = typer.Option([], "--source-data", help="SPEC=FOLDER: the data a member was "
                                          "trained on, for OSBORN's domain term. Repeatable."),
    validate: bool = typer.Option(False, "--validate", help="Also linear-probe every member on --target-data "
                                  "and report how well the metric ranked them (Kendall's τ, plot)."),
    val_data: Optional[str] = typer.Option(None, "--val-data", help="Held-out folder for --validate."),
    skip_failed: bool = typer.Option(False, "--skip-failed", help="Rank the others when a member fails to "
                                     "download or load (it is reported, never silently dropped)."),
    out: Optional[str] = typer.Option(None, "--out", help="Write ranking.csv, ranking.json, zoo.toml (and "
                                      "validation.png) here."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    arch: Optional[str] = typer.Option(None, "--arch", help="timm architecture of bare .safetensors members."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pickled checkpoints (weights_only)."),
    list_metrics: bool = typer.Option(False, "--list-metrics", help="List the metrics and exit."),
):
    """Rank members for a target task without fine-tuning them (transferability), or pick a team."""
    from rich.console import Console
    from rich.table import Table

    from zoo.api.selection import select, transfer_metrics

    say = console()
    if list_metrics:
        table = Table()
        for col in ("metric", "kind", "needs", "from", "summary", "reference"):
            table.add_column(col)
        from rich.markup import escape

        found = transfer_metrics(state.plugins)
        for name, (m, origin) in sorted(found.items(), key=lambda kv: (kv[1][0].kind != "member", kv[0])):
            table.add_row(*(escape(str(c)) for c in (name, m.kind, m.needs, origin, m.summary, m.reference)))
        Console().print(table)
        return
    from zoo.kit.strategy.options import parse_pairs

    def parsed():
        weights = {k: _float(k, v) for k, v in parse_pairs(weight, "--weight", "domain=0.5").items()}
        return weights, parse_pairs(source_data, "--source-data", "./member=./its-train-data")

    weights, sources = parsed()
    with progress() as bars:
        sel = select(
            member, target_data, zoo=zoo_name, members_from=members_from, metric=metric, top_k=top_k,
            ensemble=ensemble, team_metric=team_metric, weights=weights, validate=validate, val_data=val_data,
            sources=sources, skip_failed=skip_failed, out=out, force=force, device=device, arch=arch,
            allow_pickle=allow_pickle, plugins=state.plugins, progress=bars, log=say.print)
    chosen = set(sel.selected)
    table = Table(title=f"{sel.metric} on {sel.target_data} ({len(sel.classes)} classes)")
    for col in ("rank", "member", "architecture", sel.metric, *(["probe top-1"] if sel.validation else []),
                "features"):
        table.add_column(col, justify="right" if col in ("rank", sel.metric, "probe top-1") else "left")
    for r in sel.ranking:
        mark = "[bold]" if r["spec"] in chosen else ""
        table.add_row(str(r["rank"]), f"{mark}{r['member']}", r["architecture"], f"{r['score']:.4f}",
                      *([f"{r['probe_top1'] * 100:.1f}%"] if sel.validation else []), r["features"])
    Console().print(table)
    for f in sel.failed:
        say.print(f"[yellow]skipped[/] {f['spec']}: {f['error']}", highlight=False)
    for note in sel.notes:
        say.print(f"note: {note}", highlight=False)
    if sel.team:
        say.print(f"team ({sel.team['metric']}): " + " → ".join(
            f"{s['added']} ({s['score']:.4f})" for s in sel.team["steps"]), highlight=False)
    if sel.validation:
        v = sel.validation
        say.print(f"Kendall τ between {sel.metric} and linear-probe accuracy: {v['tau']:.3f}", highlight=False)
        for name, acc in v.get("ensembles", {}).items():
            say.print(f"  ensemble {name}: {acc * 100:.1f}%", highlight=False)
    if out:
        say.print(f"wrote {out} (ranking.csv, ranking.json, zoo.toml"
                      f"{', validation.png' if sel.validation else ''})", highlight=False)


def _float(key: str, value: str) -> float:
    from zoo.kit.strategy.errors import BadInput

    try:
        return float(value)
    except ValueError:
        raise BadInput(f"--weight {key}={value}: the value must be a number") from None
