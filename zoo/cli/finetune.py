"""`zoo finetune`: fine-tune one member; the output is a member.

The recipe's flags (``--epochs``, ``--lr``, ``--bn`` …) are made from ``zoo.kit.train.recipe.Recipe``'s fields,
where each is declared once with its default and help; this module adds only the flags about the run.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Optional

import typer

from zoo.cli.app import app, console, progress, state, wrote
from zoo.kit.train.recipe import Recipe
from zoo.kit.strategy.options import describe


def _run_finetune(member: str, train_data: str, out: str, num_classes: Optional[int], linear_probe_first: bool,
                  eval_data: Optional[str], resume: bool, force: bool, device: str, arch: Optional[str],
                  snapshots: Optional[str] = None, lora: Optional[str] = None, **recipe_fields: Any) -> None:
    """Fine-tune a member (linear probe, full, or LP then FT, or a LoRA adapter with --lora); the output is a
    member."""
    from zoo.api.finetune import finetune as _finetune
    from zoo.kit.strategy.options import parse

    say = console()

    def recipe() -> Recipe:
        r = parse(Recipe, recipe_fields, strategy="finetune", flags=True)
        if linear_probe_first:
            r.mode = "lp-ft"
        return r

    with progress() as bars:
        result = _finetune(member, train_data, out, recipe=recipe(), num_classes=num_classes, eval_data=eval_data,
                           resume=resume, force=force, device=device, arch=arch, progress=bars, log=say.print,
                           plugins=state.plugins, snapshots=snapshots, lora=lora)
    say.print(wrote(out, result.metrics), highlight=False)

_RUN_FLAGS = [
    ("member", str, typer.Argument(..., help="The member to start from: hf-hub:ORG/NAME\\[@REV], a folder or a file.")),
    ("train_data", str, typer.Option(..., "--train-data", help="Image folder, one sub-folder per class.")),
    ("out", str, typer.Option(..., "--out", help="Output folder (a member: timm / Hub repo).")),
    ("num_classes", Optional[int], typer.Option(None, "--num-classes", help="Check: the number of classes (the "
                                                "class folders of --train-data define them).")),
    ("linear_probe_first", bool, typer.Option(False, "--linear-probe-first", help="Same as --mode lp-ft.")),
    ("eval_data", Optional[str], typer.Option(None, "--eval-data", help="Held-out folder: metrics in the card.")),
    ("resume", bool, typer.Option(False, "--resume", help="Continue an interrupted run of the same --out.")),
    ("force", bool, typer.Option(False, "--force", help="Replace a non-empty --out, and --snapshots' "
                                 "epoch-N folders.")),
    ("device", str, typer.Option("auto", "--device", help="auto, cpu or cuda.")),
    ("arch", Optional[str], typer.Option(None, "--arch", help="timm architecture of a bare .safetensors member.")),
    ("snapshots", Optional[str], typer.Option(None, "--snapshots", help="Also write the weights after every "
                                              "fine-tuning epoch as members DIR/epoch-N (to average them: "
                                              "zoo combine --strategy mwa).")),
    ("lora", Optional[str], typer.Option(None, "--lora", help="Train a PEFT LoRA adapter instead of every weight: "
                                         "r=N[,alpha=A,targets=NAME+NAME,dropout=P,rslora=true]. alpha defaults to "
                                         "2·r; targets are module names or their ends (PEFT's rule), joined with "
                                         "+; default: every linear layer and 1×1 convolution but the classifier. "
                                         "The classifier is trained and saved whole (modules_to_save); BatchNorm "
                                         "statistics stay the base's (an adapter cannot carry them). --out (and "
                                         "--snapshots' epoch-N) are PEFT adapter folders.")),
]


def _recipe_flag(info) -> tuple[str, Any, Any]:
    tp, help_text = info.type, info.help
    if typing.get_origin(tp) is typing.Literal:  # typer takes the choice as a string; parse() checks it
        help_text += f" One of: {', '.join(map(str, typing.get_args(tp)))}."
        tp = str
    return info.name, tp, typer.Option(info.default, "--" + info.name.replace("_", "-"), help=help_text)


def _command():
    """The command function with one parameter per flag, so typer builds --help and parsing from it."""
    flags = _RUN_FLAGS + [_recipe_flag(info) for info in describe(Recipe)]

    def finetune(**given: Any) -> None:
        _run_finetune(**given)

    finetune.__doc__ = _run_finetune.__doc__
    finetune.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=tp)
         for name, tp, default in flags])
    finetune.__annotations__ = {name: tp for name, tp, _ in flags}
    return finetune


app.command("finetune")(_command())
