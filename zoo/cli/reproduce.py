"""`zoo reproduce`: re-run an output's zoo.json and say whether the bytes are the same."""

from __future__ import annotations

from typing import List, Optional

import typer

from zoo.cli.app import app, console, progress, state


@app.command()
def reproduce(
    output: str = typer.Argument(..., help="An output zoo wrote: a folder, or hf-hub:ORG/NAME\\[@REV]."),
    out: Optional[str] = typer.Option(None, "--out", help="Keep the re-run here (default: a temporary folder, "
                                      "removed when compared)."),
    member: List[str] = typer.Option([], "--member", "-m", help="NAME=PATH: where a member that was a local "
                                     "folder is on this machine (its files must have the recorded sha256); "
                                     "needed only where the output was made elsewhere, or the member moved. "
                                     "Repeatable."),
    zoo_name: Optional[str] = typer.Option(None, "--zoo", help="A named zoo or zoo .toml holding the local "
                                           "members and data (default: the zoo zoo.json names, if any)."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="The held-out data, if it was a folder "
                                            "(where the output was made: found unless it moved or changed)."),
    train_data: Optional[str] = typer.Option(None, "--train-data", help="The training data, if it was a folder."),
    ood_data: Optional[str] = typer.Option(None, "--ood-data", help="The shifted data, if it was a folder."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda (default: the recorded "
                                         "device, where this machine has it)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pickled members (weights_only)."),
):
    """Re-run the recipe in OUTPUT's zoo.json and compare the weights byte for byte.

    Exit 0 when they are identical, 1 when they differ (the first differing tensor and the likely cause
    are shown), 2 for bad input (a missing member, data, or zoo.json)."""
    from zoo.api.reproduce import reproduce as _reproduce
    from zoo.kit.strategy.options import parse_pairs

    say = console()
    members = parse_pairs(member, flag="--member", example="ft-a=./members/ft-a")
    with progress() as bars:
        result = _reproduce(output, out=out, members=members, zoo=zoo_name, eval_data=eval_data,
                            train_data=train_data, ood_data=ood_data, device=device, force=force,
                            allow_pickle=allow_pickle, plugins=state.plugins, progress=bars, log=say.print)
    from rich.console import Console

    verdict = Console(soft_wrap=True)  # the command's answer: on stdout, --quiet or not
    compared = ", ".join(result.compared)
    if result.identical:
        verdict.print(f"identical: {compared} are byte for byte the same as {output}'s", highlight=False)
    else:
        verdict.print(f"differs: {result.difference}", highlight=False)
        verdict.print("likely cause: " + "; ".join(result.causes), highlight=False)
    recorded, again = result.metrics
    if recorded and again and recorded != again:
        shown = ", ".join(f"{k} {recorded[k]:.6f} → {again[k]:.6f}" for k in ("top1", "nll", "ece")
                          if isinstance(recorded.get(k), float) and isinstance(again.get(k), float)
                          and recorded[k] != again[k])
        if shown:
            verdict.print(f"held-out metrics: {shown}", highlight=False)
    if out is not None:
        say.print(f"wrote {out}", highlight=False)
    if not result.identical:
        raise typer.Exit(1)
