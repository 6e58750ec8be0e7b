"""``zoo finetune``: fine-tune one member on an image folder and write the result as a member.

The recipe (LP, FT, LP-FT; timm's losses, Mixup and schedule) is the kit's (zoo.kit.train.recipe);
this module resolves the member, loads the data, runs it and writes the output folder.

With ``lora`` (``--lora r=8,...``, zoo.kit.train.lora) the output is a PEFT adapter folder instead
(``adapter_config.json`` + ``adapter_model.safetensors``, written by PEFT's ``save_pretrained``) with zoo's
README.md and zoo.json beside it. Its ``base_model_name_or_path`` names the base so that zoo can apply it again:
a Hub base by its repo id; a local base by its path relative to the adapter folder when both lie inside the
current directory (the user's project, as ``zoo.kit._infra.scrub_paths`` publishes paths), else by its folder
name alone — no path of this machine is written — and then ``--base`` must name it (``zoo combine``).
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
             recipe_file: dict | None = None, lora: str | Any = None):
    """Fine-tune ``member_spec`` on the image folder ``train_data`` and write the result to ``out``.

    ``snapshots``: also write the weights after every fine-tuning epoch as members ``SNAPSHOTS/epoch-N``
    (each with the training history up to that epoch in its zoo.json): checkpoints to average (``mwa``).
    ``recipe_file``: the recipe this run is a step of (``zoo run``), stored in zoo.json.
    ``lora``: ``"r=8,alpha=16,..."`` (or a ``LoraSpec``): train a PEFT LoRA adapter and the classifier, and
    write an adapter folder (snapshots too); see the module docstring."""
    from zoo.api.combine import load_member, save
    from zoo.kit._infra import output_folder as output
    from zoo.kit.data import data_config, load_split
    from zoo.kit.train.device import resolve_device
    from zoo.kit._infra.progress import Silent
    from zoo.kit.strategy import Combined

    recipe = recipe or Recipe()
    recipe.check()
    spec = _lora_spec(lora, recipe)
    progress = progress or Silent()
    log = log or (lambda message: None)
    out = Path(out)
    output.check_out(out, force)
    ckpt_dir = out.parent / f".{out.name}.finetune"
    # a LoRA run records its --lora beside the recipe: --resume continues only the same adapter
    settings = {**asdict(recipe), "lora": spec.as_dict()} if spec is not None else asdict(recipe)
    state = checkpoint.resume_state(ckpt_dir / CHECKPOINT, settings, resume, what="fine-tune", key="recipe")
    if snapshots is not None:
        snapshots = Path(snapshots)
        _check_snapshots(snapshots, out, recipe, state, force)

    classes = class_names(train_data)
    if num_classes is not None and num_classes != len(classes):
        raise BadInput(f"--num-classes {num_classes} but {train_data} has {len(classes)} class folders")
    host = _host.load(list(plugins))
    member = load_member(member_spec, arch=arch, allow_pickle=allow_pickle, plugins=plugins)
    dev = resolve_device(device)
    from zoo.kit._infra import distributed

    rank, world = distributed.setup(dev)  # under torchrun: each process takes its share of every batch
    cfg = data_config(member.pretrained_cfg)
    train = load_split(train_data, cfg, label_names=classes, num_classes=len(classes), progress=progress)
    held_out = load_split(eval_data, cfg, label_names=classes, num_classes=len(classes),
                          progress=progress) if eval_data else None
    if spec is not None:
        return _finetune_lora(member, spec, train, held_out, classes, recipe, settings, out, dev, host,
                              progress=progress, log=log, ckpt_dir=ckpt_dir, state=state, snapshots=snapshots,
                              force=force, eval_data=eval_data, train_data=train_data, recipe_file=recipe_file,
                              rank=rank, world=world)

    on_epoch = None
    if snapshots is not None:
        def on_epoch(epoch: int, weights: dict, rows: list[dict]) -> None:
            if rank != 0:
                return
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
    if rank != 0:
        return result  # rank 0 writes
    if history:
        result.figures["training.png"] = training_curves(history)
    save(result, out, host=host, force=force, eval_data=eval_data, train_data=train_data, device=dev.type,
         arch=arch, **({"recipe_file": recipe_file} if recipe_file else {}),
         **({"world_size": world} if world > 1 else {}))
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


def _lora_spec(lora, recipe: Recipe):
    """``--lora``'s value parsed and checked against the recipe, before any work (None without ``--lora``)."""
    if lora is None or lora == "":
        return None
    from zoo.kit.train.lora import LoraSpec, parse_lora

    spec = lora if isinstance(lora, LoraSpec) else parse_lora(lora)
    if recipe.mode != "ft":
        raise BadInput(f"--lora trains an adapter and the classifier together; --mode {recipe.mode} does not apply "
                       "(leave --mode at ft)")
    if recipe.bn not in ("auto", "frozen"):
        raise BadInput(f"--lora --bn {recipe.bn}: an adapter cannot carry BatchNorm statistics, so LoRA keeps the "
                       "base's (frozen); leave --bn at auto")
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise BadInput("--lora trains a PEFT adapter, and peft is not installed: pip install 'zoo[peft]'")
    return spec


def _finetune_lora(member, spec, train, held_out, classes: list[str], recipe: Recipe, settings: dict, out: Path,
                   dev, host, *, progress, log, ckpt_dir: Path, state, snapshots: Path | None, force: bool,
                   eval_data: str | None, train_data: str, recipe_file: dict | None, rank: int = 0, world: int = 1):
    """The LoRA run: the kit's fit with a PEFT model, then the adapter folder (and one per epoch with
    ``snapshots``), written by rank 0 under torchrun."""
    from zoo.kit.strategy import Combined

    if classes != list(member.label_names or []) or len(classes) != member.num_classes:
        log(f"--lora: a new classifier for {len(classes)} classes, saved whole in the adapter (the classes are in "
            "its zoo.json); PEFT loads it onto the base with its classifier reset to them, zoo applies it with "
            "those classes")

    def result_for(history: list[dict]) -> Combined:
        pinned = member.provenance()
        return Combined(state_dict={}, config=config_for(member, classes),
                        report={"history": history, "classes": classes, "bn": "frozen",
                                "lora": spec.as_dict()},
                        strategy="finetune", options=settings, members=[pinned], relation="adapter",
                        license=pinned["license"], like=member)

    on_epoch = None
    if snapshots is not None:
        def on_epoch(epoch: int, model, rows: list[dict]) -> None:
            if rank != 0:
                return
            quiet = log if epoch == 1 else (lambda message: None)  # say where the base is named once
            write_adapter(model, result_for(rows), member, snapshots / f"epoch-{epoch}", host=host, force=True,
                          log=quiet, train_data=train_data, snapshot_of=out.name, device=dev.type)

    model, _, history = fit(member, train, classes, recipe, dev, progress=progress, log=log, ckpt_dir=ckpt_dir,
                            state=state, on_epoch=on_epoch, lora=spec, settings=settings)
    result = result_for(history)
    if held_out is not None:
        from zoo.kit.measure.metrics import evaluate_model

        result.metrics = evaluate_model(model.eval(), held_out, dev, extra=host.metrics()).as_dict()
    if rank != 0:
        return result  # rank 0 writes
    if history:
        result.figures["training.png"] = training_curves(history)
    write_adapter(model, result, member, out, host=host, force=force, log=log, eval_data=eval_data,
                  train_data=train_data, device=dev.type, **({"recipe_file": recipe_file} if recipe_file else {}),
                  **({"world_size": world} if world > 1 else {}))
    if ckpt_dir.exists():
        import shutil

        shutil.rmtree(ckpt_dir)
    return result


def base_reference(member, folder: Path) -> str:
    """What an adapter written to ``folder`` names as its base (``base_model_name_or_path``): the Hub repo id;
    for a local base, its path relative to ``folder`` when both lie inside the current directory, else its
    folder name (no path of this machine; ``--base`` then names it)."""
    import os

    if member.repo_id:
        return member.repo_id
    given = str(member.spec or "").removeprefix("local-dir:")
    # the path as the user gave it (a link into zoo's cache stays the link), else where the member was found
    where = Path(os.path.abspath(given if given and os.path.exists(given) else (member.root or given)))
    here = Path(os.path.abspath(folder))
    cwd = Path(os.path.abspath(os.getcwd()))
    if where.is_relative_to(cwd) and here.is_relative_to(cwd):
        return Path(os.path.relpath(where, here)).as_posix()
    return where.name


def write_adapter(model, result, member, out: Path, *, host, force: bool, log, eval_data: str | None = None,
                  device: str | None = None, **recipe_extra) -> Path:
    """Write the PEFT model ``model`` as an adapter folder (atomically): PEFT's ``save_pretrained`` files, its
    ``base_model_name_or_path`` the base's reference (:func:`base_reference`), zoo's README.md card (library
    peft, relation adapter) and zoo.json (the recipe, the history, the base pinned)."""
    import dataclasses

    from zoo import __version__
    from zoo.api import card, local_sources
    from zoo.api.combine import environment
    from zoo.kit._infra import output_folder as output
    from zoo.kit._infra.scrub_paths import published_json, scrub, scrub_text

    import os

    out = Path(out)
    reference = base_reference(member, out)
    if not member.repo_id and not os.path.exists(os.path.normpath(os.path.join(os.path.abspath(out), reference))):
        log(f"{out}: the base is named {reference!r} in adapter_config.json (a local base outside the current "
            "directory: no path of this machine is written); give it with --base to zoo combine")
    recipe = {"zoo_version": __version__, "strategy": result.strategy, "options": result.options,
              "members": result.members, **recipe_extra, "eval_data": eval_data, "metrics": result.metrics,
              "report": result.report, "environment": environment(device)}
    usage = (f"A PEFT LoRA adapter of `{reference}`. Apply it with zoo (`zoo.load(\"{out.resolve().name}\")`, "
             f"`zoo eval`, `zoo combine -m {out.resolve().name}`), or with PEFT: "
             f"`PeftModel.from_pretrained(base_model, \"{out.resolve().name}\")` on the base built with its "
             "classifier for these classes.")
    shown = dataclasses.replace(result, members=scrub(result.members), options=scrub(result.options), usage=usage)
    model_card = card.build(shown, name=out.resolve().name, eval_data=scrub(eval_data), extra_sections=[])
    model_card.data.library_name = "peft"
    # the Hub's model tree: an adapter of the Hub repo it applies onto; a local base has none to name (its own
    # lineage is not what the adapter applies onto)
    model_card.data.base_model = member.repo_id or None
    model_card.data.base_model_relation = "adapter" if member.repo_id else None
    peft_config = model.peft_config["default"]
    peft_config.base_model_name_or_path = reference
    peft_config.revision = member.revision if member.repo_id else None
    if isinstance(peft_config.target_modules, (set, frozenset)):  # PEFT writes a set in hash order: sorted, the
        peft_config.target_modules = sorted(peft_config.target_modules)  # file is the same on every run
    with output.atomic_folder(out, force) as tmp:
        model.save_pretrained(str(tmp), save_embedding_layers=False)  # LoRA of linear layers only
        (tmp / "zoo.json").write_text(published_json(recipe))
        for filename, fig in result.figures.items():
            fig.savefig(tmp / filename)
        model_card.content = scrub_text(model_card.content)
        model_card.save(tmp / "README.md")  # replaces the one save_pretrained writes
    written = out.resolve()
    local_sources.remember(written, recipe)
    return written
