"""`zoo combine`: members + a strategy → one model written to --out."""

from __future__ import annotations

from typing import List, Optional

import typer

from zoo.cli.app import app, console, run_strategy, wrote


@app.command()
def combine(
    strategy: str = typer.Option(..., "--strategy", "-s", help="Strategy name (see `zoo strategies`)."),
    member: List[str] = typer.Option([], "--member", "-m",
                                     help="A member: hf-hub:ORG/NAME\\[@REV], a folder, or a .safetensors file."),
    zoo_name: Optional[str] = typer.Option(None, "--zoo", help="A named zoo (registry/zoos) or a zoo .toml."),
    members_from: Optional[str] = typer.Option(None, "--members-from", help="Members listed in a zoo .toml, "
                                               "e.g. a zoo select output's zoo.toml (its data is not used)."),
    base: Optional[str] = typer.Option(None, "--base", help="The model the members were fine-tuned from, for "
                                       "strategies that merge task vectors (ties); any member spec."),
    eval_data: List[str] = typer.Option([], "--eval-data", help="Held-out data: image folder (class per "
                                        "sub-folder) or timm dataset spec; with --multi-task, NAME=DIR per "
                                        "member (repeatable)."),
    train_data: Optional[str] = typer.Option(None, "--train-data", help="Training data (e.g. for recompute_bn)."),
    ood_data: Optional[str] = typer.Option(None, "--ood-data", help="Shifted (out-of-distribution) data, for "
                                           "strategies that report robustness (wise-ft)."),
    option: List[str] = typer.Option([], "--option", "-o", help="Strategy option key=value (repeatable)."),
    out: str = typer.Option(..., "--out", help="Output folder (a Hub repo in the members' format: timm or "
                            "transformers; see --format)."),
    format: Optional[str] = typer.Option(None, "--format", help="The output's format: timm, transformers (or a "
                                         "plugin's). Members in another format are converted to it exactly "
                                         "(ViT/DeiT, ResNet, ConvNeXt, Swin). Default: the members' (the first "
                                         "member's when they differ)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
    push: Optional[str] = typer.Option(None, "--push", help="Also upload the result to ORG/NAME."),
    private: bool = typer.Option(False, "--private", help="With --push: create the repo private."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    arch: Optional[str] = typer.Option(None, "--arch", help="timm architecture of bare .safetensors members."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pickled checkpoints (loaded with "
                                      "weights_only=True). Off by default: pickles can run code."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="For strategies that train (distill, bang): "
                                         "the same as --option epochs=N."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted training strategy (distill) "
                                "of the same --out from its last checkpoint (same options)."),
    multi_task: bool = typer.Option(False, "--multi-task", help="Members are fine-tunes of --base on different "
                                    "tasks: merge all but their heads (with a merge method: task-arithmetic, "
                                    "ties, ...) and write one timm repo per member, with its own head, under "
                                    "--out."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="The output's floating-point dtype: float32, "
                                        "float16 or bfloat16. Default: the members' where they agree, else "
                                        "float32 (members in different precisions are merged in float32)."),
    max_shard_size: str = typer.Option("20GB", "--max-shard-size", help="Split model.safetensors into shards "
                                       "with an index past this size. timm's hf-hub: loader reads a single "
                                       "model.safetensors, so shard only when you must."),
):
    """Combine members into one model with a strategy and write it to --out."""
    from zoo.kit.strategy.errors import BadInput
    from zoo.kit.strategy.options import parse_pairs

    options = parse_pairs(option)
    if epochs is not None:
        if "epochs" in options and options["epochs"] != str(epochs):
            raise BadInput(f"--epochs {epochs} and --option epochs={options['epochs']} disagree; give one")
        options["epochs"] = str(epochs)
    result = run_strategy(
        strategy, member, zoo=zoo_name, members_from=members_from, base=base, eval_data=eval_data or None,
        train_data=train_data, ood_data=ood_data, options=options, out=out, force=force, push=push, private=private,
        device=device, arch=arch, allow_pickle=allow_pickle, seed=seed, max_shard_size=max_shard_size, resume=resume,
        multi_task=multi_task, dtype=dtype, format=format)
    say = console()
    say.print(wrote(out, result.metrics), highlight=False)
    if result.report.get("pushed"):
        say.print(f"pushed: {result.report['pushed']}", highlight=False)
