"""`zoo align`: one member's units permuted to line up with a reference's (the `align` strategy), added to
the `zoo` command by the plugin's ``zoo_commands`` hook."""

from __future__ import annotations

from typing import List, Optional

import typer


def add_align(app: typer.Typer, cli) -> None:
    """Add `zoo align` to ``app``; ``cli`` is what ``zoo_commands`` gives (it runs the strategy as `zoo combine`
    does). Bad input is raised as ``zoo.BadInput`` by the strategy, and zoo prints it."""

    @app.command("align")
    def align(
        member: str = typer.Argument(..., help="The member to permute: hf-hub:ORG/NAME\\[@REV], a folder, or a "
                                     ".safetensors file."),
        to: str = typer.Option(..., "--to", help="The reference it is lined up with (same architecture and "
                               "width)."),
        out: str = typer.Option(..., "--out", help="Output folder: an ordinary timm repo computing what MEMBER "
                                "computes."),
        report: bool = typer.Option(False, "--report", help="Also measure the loss barrier along the path "
                                    "between the reference and the member, before and after alignment (needs "
                                    "--eval-data; --train-data adds both paths with BatchNorm statistics "
                                    "recomputed)."),
        eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Held-out data: image folder or timm "
                                                "dataset spec (the function check runs on its first images)."),
        train_data: Optional[str] = typer.Option(None, "--train-data", help="Training data: the images --method "
                                                 "activations records, and --report's BatchNorm recompute."),
        method: Optional[str] = typer.Option(None, "--method", help="How units are paired: weights (default; Git "
                                             "Re-Basin's weight matching) or activations (by the correlation of their "
                                             "activations on --train-data)."),
        option: List[str] = typer.Option([], "--option", "-o", help="Option key=value of the align strategy "
                                          "(max_sweeps, first_sweep, points, bn_batches, activation_images; see "
                                          "`zoo strategies`)."),
        force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        arch: Optional[str] = typer.Option(None, "--arch", help="timm architecture of bare .safetensors members."),
        allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pickled checkpoints "
                                          "(weights_only)."),
        seed: int = typer.Option(0, "--seed", help="Random seed (the sweeps' order, the function check)."),
    ):
        """Permute MEMBER's hidden units to line up with --to's, by weight matching (Git Re-Basin) or by their
        activations on --train-data (--method activations), and write it.

        The result computes exactly what MEMBER computes (checked before anything is written); merged with the
        reference (zoo combine --strategy soup, ties, ...) it no longer averages unrelated units."""
        from rich.console import Console

        from zoo.kit.strategy import parse_pairs

        options = {**parse_pairs(option), **({"report": "true"} if report else {}),
                   **({"method": method} if method is not None else {})}
        result = cli.combine("align", [to, member], eval_data=[eval_data] if eval_data else None,
                             train_data=train_data, options=options, out=out, force=force, device=device, arch=arch,
                             allow_pickle=allow_pickle, seed=seed)
        answer = Console(soft_wrap=True)  # the command's answer: on stdout, --quiet or not
        r = result.report
        moved = sum(g["units_moved"] for g in r["groups"].values())
        total = sum(g["size"] for g in r["groups"].values())
        how = f"by activation matching (mean correlation of paired units {r['correlation_before']:.3f} → " \
              f"{r['correlation_after']:.3f})" if r["method"] == "activations" else f"in {r['sweeps']} sweeps"
        answer.print(f"aligned {r['member']} to {r['reference']}: {moved} of {total} units moved {how}; outputs "
                     f"unchanged (within {r['output_difference']:.1e})", highlight=False)
        for path in r.get("paths", []):
            for variant, c in path["curves"].items():
                answer.print(f"  {variant:<26} loss barrier {c['loss_barrier']:.4f}   top-1 drop "
                             f"{c['top1_drop'] * 100:.2f} pts   top-1 at α=0.5 {c['midpoint_top1'] * 100:.2f}%",
                             highlight=False)
        cli.console().print(f"wrote {out}", highlight=False)
