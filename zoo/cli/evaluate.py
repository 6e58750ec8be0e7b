"""`zoo eval`: metrics of a model on labelled data."""

from __future__ import annotations

from typing import List, Optional

import typer

from zoo.cli.app import app, progress, state


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="A zoo output folder, hf-hub:ORG/NAME\\[@REV], or any member spec."),
    data: str = typer.Option(..., "--data", help="Image folder (class per sub-folder) or timm dataset spec."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    arch: Optional[str] = typer.Option(None, "--arch", help="timm architecture of a bare .safetensors file."),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    base: Optional[str] = typer.Option(None, "--base", help="For a LoRA adapter: the model it applies onto, when "
                                       "its adapter_config.json names none found here (a folder or hf-hub:...)."),
):
    """Evaluate a model on labelled data: top-1, NLL, ECE."""
    import json

    from zoo.api.evaluate import evaluate

    with progress() as bars:
        metrics = evaluate(model, data, device=device, arch=arch, plugins=state.plugins, progress=bars,
                           base=base)
    if json_out:
        typer.echo(json.dumps(metrics.as_dict()))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model} on {data}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.as_dict().items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)
