"""Distillation: fold the members (teachers) into one student — Hinton KD or MEAL V2.

- ``loss=meal-v2`` (Shen & Savvides; szq0214/MEAL-V2): the target is the mean of the teachers'
  softmax, labels are not used; the loss is the soft-target cross-entropy (timm's
  ``SoftTargetCrossEntropy``). ``discriminator=true`` adds MEAL V2's discriminator on the outputs.
- ``loss=kd`` (Hinton et al.): α·T²·KL(mean teacher softmax(t/T) ‖ softmax(s/T)) with
  ``batchmean``, plus (1−α)·cross-entropy with the labels.

Teachers may differ in architecture and preprocessing: each sees the training images through its
own timm data config, the student through its own. Without augmentation the teachers' logits are
computed once and cached on disk (``zoo.kit.measure.features``); ``teacher_outputs=live`` runs them on every
batch instead. Under ``torchrun`` the student is wrapped in DistributedDataParallel and each
process takes its share of every global batch; rank 0 alone writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import zoo
from zoo.kit.data import common_labels, label_names
from zoo.kit.train import Recipe, state_on_cpu
from zoo.kit.strategy import compose

CHECKPOINT = "checkpoint.pt"


class Distill(zoo.Strategy):
    name = "distill"
    member_formats = ("timm",)  # teachers and student share timm's preprocessing and names: other formats are converted first
    summary = "distil the members (teachers) into one student: MEAL V2 (mean teacher softmax) or Hinton KD"
    min_members = 1
    relation = None  # the student is trained, not made of the teachers' weights: they are no base_model

    @dataclass
    class Own:
        student: str = zoo.option("", "the student: a timm architecture (fresh weights, the first teacher's "
                                  "preprocessing) or a member spec (its weights are the start; MEAL V2: a good "
                                  "start matters); default: the first teacher's architecture, fresh")
        loss: Literal["meal-v2", "kd"] = zoo.option("meal-v2", "meal-v2: mean teacher softmax, labels unused; "
                                                    "kd: Hinton's temperature-softened KL plus label cross-entropy")
        temperature: float = zoo.option(4.0, "kd: the temperature T", min=1e-3)
        alpha: float = zoo.option(0.9, "kd: weight of the distillation term (1−α on the labels)", min=0.0, max=1.0)
        discriminator: bool = zoo.option(False, "meal-v2: also train MEAL V2's discriminator on the outputs")
        optimizer: Literal["adamw", "sgd"] = zoo.option("adamw", "adamw, or sgd with momentum 0.9")
        teacher_outputs: Literal["auto", "cached", "live"] = zoo.option(
            "auto", "cached: teachers run once over the training data and their logits are kept on disk (fast, "
            "but every epoch sees the same images: no augmentation); live: teachers run on every batch under "
            "inference_mode (a teacher forward pass per step; needed with augment); auto: live with augment, "
            "cached otherwise")
        label_map: str = zoo.option("", "a JSON file {teacher name: {its label: student label, or null to drop}} for "
                                    "teachers whose labels differ; the student learns the first teacher's classes")

    #: the training's options are zoo finetune's (the recipe): their types, defaults and bounds, with the
    #: helps and defaults that differ for a student learning from teachers
    Options = compose(
        Own, (Recipe, ["epochs", "lr", "weight_decay", "warmup_epochs", "batch_size", "augment", "hflip",
                       "crop_scale"]),
        defaults={"weight_decay": 0.0}, bounds={"epochs": (1, None), "crop_scale": (0.01, 1.0)},
        helps={"epochs": "training epochs", "lr": "peak learning rate (cosine schedule with warmup)",
               "weight_decay": "weight decay (MEAL V2: the soft targets regularise; little or none)",
               "batch_size": "global batch size (split across torchrun processes)",
               "augment": "train through timm's training transform (random resized crop, flip, colour jitter); "
                          "teachers then run live on the same augmented images, so they and the student must "
                          "share one preprocessing",
               "hflip": "with augment: horizontal flip probability (0 for digits or text)",
               "crop_scale": "with augment: smallest random crop, as a fraction of the image"})

    def combine(self, members, options, ctx):
        from zoo.plugins.distill.loop import Run, train

        if options.augment and options.teacher_outputs == "cached":
            raise zoo.BadInput("teacher_outputs=cached keeps one output per image, but augment changes the images every "
                               "epoch: use teacher_outputs=live (or auto) with augment")
        if options.discriminator and options.loss != "meal-v2":
            raise zoo.BadInput("--option discriminator=true belongs to loss=meal-v2 (MEAL V2's discriminator); "
                               "drop it or use loss=meal-v2")
        classes, maps = _common_labels(members, options.label_map)
        student_member, student, model_args = _student(options.student, members, classes, ctx)
        run = Run(teachers=members, student=student, student_member=student_member, classes=classes,
                  options=options, ctx=ctx, model_args=model_args, maps=maps)
        history = train(run)
        sd = state_on_cpu(run.unwrapped())
        report = {"history": history, "classes": classes}
        from zoo.kit.card import training_curves
        from zoo.plugins.distill.loop import evaluate, summary_section

        metrics = None
        if ctx.eval_data:
            metrics, report["evaluation"] = evaluate(run)
        combined = zoo.Combined(state_dict=sd, config=run.config(), metrics=metrics, report=report)

        combined.figures["training.png"] = training_curves(
                history, top1_title="student training top-1 vs labels (%)")
        if "evaluation" in report:
            combined.card_sections.append(summary_section(report["evaluation"]))
        return combined


def _common_labels(members, label_map: str) -> tuple[list[str], list]:
    """The classes the student learns, and per teacher a Z×C matrix from its classes to them (None: the same).

    Without a label map every teacher must have the same labels (a different label space is refused,
    naming the two teachers). ``label_map`` is a JSON file {teacher name: {its label: student label or
    null}}: mapped labels are merged, null ones dropped; the student's classes are the first teacher's
    (after its own map).
    """
    import json

    import torch

    maps_in: dict = {}
    if label_map:
        try:
            maps_in = json.loads(open(label_map).read())
        except (OSError, ValueError) as e:
            raise zoo.BadInput(f"label_map {label_map}: cannot read it as JSON ({e})") from None
        unknown = set(maps_in) - {m.name for m in members}
        if unknown:
            raise zoo.BadInput(f"label_map names {sorted(unknown)}, which are not teachers here "
                               f"({', '.join(m.name for m in members)})")

    def mapping(m):
        table = maps_in[m.name]
        missing = [lab for lab in label_names(m) if lab not in table]
        if missing:
            raise zoo.BadInput(f"label_map for {m.name}: its labels {missing[:5]} are not mapped; map each label "
                               "to a student label, or to null to drop it")
        return table

    first = members[0]
    classes = list(dict.fromkeys(v for v in mapping(first).values() if v is not None)) \
        if first.name in maps_in else label_names(first)
    # the teachers without a map must have the student's classes
    common_labels([first, *(m for m in members[1:] if m.name not in maps_in)], labels=classes, role="teachers",
                  why="distil teachers of one task, or give --option label_map=FILE.json to map one onto the other")
    maps = []
    for m in members:
        if m.name not in maps_in:
            maps.append(None)
            continue
        table, matrix = mapping(m), torch.zeros(len(label_names(m)), len(classes))
        for z, lab in enumerate(label_names(m)):
            target = table[lab]
            if target is None:
                continue
            if target not in classes:
                raise zoo.BadInput(f"label_map for {m.name}: {lab!r} → {target!r}, which is not a student class "
                                   f"({', '.join(classes[:10])})")
            matrix[z, classes.index(target)] = 1.0
        maps.append(matrix)
    return classes, maps


def _student(spec: str, teachers, classes: list[str], ctx):
    """(member or None, timm model with a head for ``classes``, constructor arguments for its config)."""
    import timm

    from zoo.kit.train import model_for

    arch = spec or teachers[0].architecture
    if spec and (":" in spec or "/" in spec or spec.startswith(".")):
        member = ctx.load_member(spec)
        return member, model_for(member, len(classes), classes), member.model_args
    if not timm.is_model(arch):
        raise zoo.BadInput(f"student {arch!r}: timm knows no such architecture and it is not a member path; "
                           "give a timm model name (e.g. resnet18) or a member spec (hf-hub:ORG/NAME, a folder)")
    cfg = {**teachers[0].pretrained_cfg, "num_classes": len(classes)}
    args = _size_args(arch, cfg)
    model = timm.create_model(arch, pretrained=False, num_classes=len(classes), pretrained_cfg_overlay=cfg, **args)
    return None, model, args


def _size_args(arch: str, cfg: dict) -> dict:
    """img_size for architectures built for one input size (ViTs), from the preprocessing the student gets."""
    import timm

    size = cfg.get("input_size", (3, 224, 224))[-1]
    probe = timm.create_model(arch, pretrained=False, num_classes=0)
    patch_embed = getattr(probe, "patch_embed", None)
    built_for = getattr(patch_embed, "img_size", None)
    return {"img_size": size} if built_for is not None and tuple(built_for)[-1] != size else {}
