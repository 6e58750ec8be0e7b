"""`zoo inspect`: barriers, task-vector cosines, landscape metrics and agreement of members, with advice; added
to the `zoo` command by the plugin's ``zoo_commands`` hook."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

#: what --out holds
REPORT, FIGURE = "inspect.json", "barriers.png"


def add_inspect(app: typer.Typer, cli) -> None:
    @app.command("inspect")
    def inspect(
        member: List[str] = typer.Option(..., "--member", "-m", help="A member: hf-hub:ORG/NAME\\[@REV], a folder, "
                                         "or a .safetensors file (repeat; at least two, one architecture)."),
        base: Optional[str] = typer.Option(None, "--base", help="The model the members were fine-tuned from: adds "
                                           "task-vector norms and pairwise cosines."),
        eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Held-out data (required): image folder "
                                                "or timm dataset spec; barriers, landscape and agreement are "
                                                "measured on it."),
        train_data: Optional[str] = typer.Option(None, "--train-data", help="Training data: BatchNorm statistics "
                                                 "recomputed at each interior point of the paths (members with "
                                                 "BatchNorm), as zoo align --report does."),
        out: Optional[str] = typer.Option(None, "--out", help="Folder to write inspect.json and the barrier "
                                          "heat-map barriers.png into."),
        as_json: bool = typer.Option(False, "--json", help="Print everything measured as JSON on stdout."),
        points: int = typer.Option(5, "--points", min=3, help="α points on each path, both ends included."),
        batches: int = typer.Option(2, "--batches", min=1, help="Batches of --eval-data for sharpness and trace."),
        batch_size: int = typer.Option(64, "--batch-size", min=1, help="Their size."),
        iterations: int = typer.Option(20, "--iterations", min=1, help="Most power iterations (sharpness)."),
        samples: int = typer.Option(10, "--samples", min=2, help="Rademacher vectors (Hutchinson's trace)."),
        force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        arch: Optional[str] = typer.Option(None, "--arch", help="timm architecture of bare .safetensors members."),
        allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pickled checkpoints "
                                          "(weights_only)."),
        seed: int = typer.Option(0, "--seed", help="Random seed (power iteration's start, Rademacher vectors)."),
    ):
        """Will these members merge? Measure, before merging, on --eval-data: the loss barrier along the linear
        path between every pair (what zoo align --report measures), with --base the task vectors' norms and
        pairwise cosines, each member's sharpness (top Hessian eigenvalue) and Hessian trace, and how often
        members agree; then advice in plain words (thresholds in docs/usage.md)."""
        from zoo.kit.members import check_out
        from zoo.kit.train import resolve_device

        from zoo.plugins.inspect import measure

        measure.check_request(len(member), eval_data)  # before anything is loaded
        if out:
            check_out(Path(out), force)
        dev = resolve_device(device)
        members, base_member = cli.load_members(member, base=base, arch=arch, allow_pickle=allow_pickle)
        settings = measure.Settings(points=points, batches=batches, batch_size=batch_size, iterations=iterations,
                                    samples=samples, seed=seed)
        with cli.progress() as bars:
            report = measure.inspect_members(members, base_member, eval_data=eval_data, train_data=train_data,
                                             device=dev, settings=settings, progress=bars)
        if out:
            _write(Path(out), report, force)
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            _print(report)
        if out:
            cli.console().print(f"wrote {out}", highlight=False)


def _write(out: Path, report: dict, force: bool) -> None:
    from zoo.kit.card import pyplot
    from zoo.kit.members import atomic_folder

    from zoo.plugins.inspect import heatmap

    fig = heatmap.figure(report["members"], report["barriers"])
    try:
        with atomic_folder(out, force) as tmp:
            (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")
            fig.savefig(tmp / FIGURE, dpi=120)
    finally:
        pyplot().close(fig)


def _print(report: dict) -> None:
    from rich.console import Console

    say = Console(soft_wrap=True).print  # the command's answer: on stdout, --quiet or not
    say(f"{len(report['members'])} members of {report['architecture']}, {report['eval_images']} held-out images",
        highlight=False)
    bn = " (BatchNorm recomputed)" if report["batchnorm_recomputed"] else ""
    for key, c in report["barriers"].items():
        say(f"  barrier {key.replace('|', ' ↔ '):<40} {c['loss_barrier']:.4f}{bn}   top-1 drop "
            f"{c['top1_drop'] * 100:.2f} pts   agreement {report['agreement'][key] * 100:.1f}%", highlight=False)
    tv = report.get("task_vectors")
    if tv:
        for name, n in tv["norms"].items():
            say(f"  task vector {name:<34} norm {n:.4g}", highlight=False)
        for key, c in tv["cosines"].items():
            say(f"  cosine {key.replace('|', ' ↔ '):<40} {'—  (a zero task vector)' if c is None else f'{c:+.3f}'}",
                highlight=False)
    for name, m in report["landscape"].items():
        say(f"  {name:<30} top-1 {m['top1'] * 100:.1f}%   sharpness {m['sharpness']['value']:.4g}   Hessian trace "
            f"{m['hessian_trace']['value']:.4g} ± {m['hessian_trace']['stderr']:.2g}", highlight=False)
    for line in report["advice"]:
        say(f"advice: {line}", highlight=False)
