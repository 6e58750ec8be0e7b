"""``zoo finetune``: fine-tune one member on an image folder and write the result as a member.

The recipe (LP, FT, LP-FT; timm's losses, Mixup and schedule) is the kit's (zoo.kit.train.recipe);
this module resolves the member, loads the data, runs it and writes the output folder.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from zoo import host as _host
from zoo.kit.train import checkpoint
from zoo.kit.strategy.errors import BadInput
from zoo.kit.train.recipe import CHECKPOINT, Recipe, class_names, config_for, fit, model_for
from zoo.kit.card.figures import training_curves


def finetune(member_spec: str, train_data: str, out: str | Path, *, recipe: Recipe | None = None,
             num_classes: int | None = None, eval_data: str | None = None, resume: bool = False,
             force: bool = False, device: str = "auto", arch: str | None = None, allow_pickle: bool = False,
             progress: Any = None, log=None, plugins: Sequence[str] = (), snapshots: str | Path | None = None,
             recipe_file: dict | None = None):
    """Fine-tune ``member_spec`` on the image folder ``train_data`` and write the result to ``out``.

    ``snapshots``: also write the weights after every fine-tuning epoch as members ``SNAPSHOTS/epoch-N``
    (each with the training history up to that epoch in its zoo.json): checkpoints to average (``mwa``).
    ``recipe_file``: the recipe this run is a step of (``zoo run``), stored in zoo.json."""
    from zoo.api.combine import load_member, save
    from zoo.kit._infra import output_folder as output
    from zoo.kit.data import data_config, load_split
    from zoo.kit.train.device import resolve_device
    from zoo.kit._infra.progress import Silent
    from zoo.kit.strategy import Combined

    recipe = recipe or Recipe()
    recipe.check()
    progress = progress or Silent()
    log = log or (lambda message: None)
    out = Path(out)
    output.check_out(out, force)
    ckpt_dir = out.parent / f".{out.name}.finetune"
    state = checkpoint.resume_state(ckpt_dir / CHECKPOINT, asdict(recipe), resume, what="fine-tune", key="recipe")
    if snapshots is not None:
        snapshots = Path(snapshots)
        _check_snapshots(snapshots, out, recipe, state, force)

    classes = class_names(train_data)
    if num_classes is not None and num_classes != len(classes):
        raise BadInput(f"--num-classes {num_classes} but {train_data} has {len(classes)} class folders")
    host = _host.load(list(plugins))
    member = load_member(member_spec, arch=arch, allow_pickle=allow_pickle, plugins=plugins)
    dev = resolve_device(device)
    cfg = data_config(member.pretrained_cfg)
    train = load_split(train_data, cfg, label_names=classes, num_classes=len(classes), progress=progress)
    held_out = load_split(eval_data, cfg, label_names=classes, num_classes=len(classes),
                          progress=progress) if eval_data else None

    on_epoch = None
    if snapshots is not None:
        def on_epoch(epoch: int, weights: dict, rows: list[dict]) -> None:
            pinned = member.provenance()
            snap = Combined(state_dict=weights, config=config_for(member, classes),
                            report={"history": rows, "classes": classes}, strategy="finetune",
                            options=asdict(recipe), members=[pinned], relation="finetune",
                            license=pinned["license"], like=member)
            save(snap, snapshots / f"epoch-{epoch}", host=host, force=True, train_data=train_data,
                 snapshot_of=out.name, device=dev.type)

    sd, config, history = fit(member, train, classes, recipe, dev, progress=progress, log=log,
                              ckpt_dir=ckpt_dir, state=state, on_epoch=on_epoch)
    pinned = member.provenance()
    result = Combined(state_dict=sd, config=config,
                      report={"history": history, "classes": classes, "bn": recipe.bn_for(member, classes)},
                      strategy="finetune", options=asdict(recipe), members=[pinned],
                      relation="finetune", license=pinned["license"], like=member)
    if held_out is not None:
        from zoo.kit.measure.metrics import evaluate_model

        model = model_for(member, len(classes))
        model.load_state_dict(sd)
        result.metrics = evaluate_model(model.eval(), held_out, dev, extra=host.metrics()).as_dict()
    if history:
        result.figures["training.png"] = training_curves(history)
    save(result, out, host=host, force=force, eval_data=eval_data, train_data=train_data, device=dev.type,
         arch=arch, **({"recipe_file": recipe_file} if recipe_file else {}))
    if ckpt_dir.exists():
        import shutil

        shutil.rmtree(ckpt_dir)
    return result


def _check_snapshots(snapshots: Path, out: Path, recipe: Recipe, state: dict | None, force: bool) -> None:
    """Before any work: ``--snapshots`` lies outside ``--out``, and replaces no ``epoch-N`` folder that is
    there unless ``force`` (as ``--out``). A resumed run's own snapshots, up to the one written just before
    the checkpoint it resumes from was, are its own to replace."""
    if snapshots.resolve() == out.resolve() or out.resolve() in snapshots.resolve().parents:
        raise BadInput(f"--snapshots {snapshots}: give a folder outside --out (the output is one timm repo)")
    if force or recipe.mode == "lp":
        return
    first = int(state["epoch"]) + 2 if state is not None else 1
    for epoch in range(first, recipe.epochs + 1):
        folder = snapshots / f"epoch-{epoch}"
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise BadInput(f"--snapshots {snapshots}: {folder} exists and is not empty, and this run would replace "
                           "it; choose another folder or pass --force to replace it")
