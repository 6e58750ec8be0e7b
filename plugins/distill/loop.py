"""Distillation on the one training loop (``zoo.kit.train.loop``): data, teacher targets, the loss step, evaluation.

One ``Run`` holds what the step needs. The order of the training images comes from a seeded
``torch.Generator`` that the loop checkpoints with the model, optimizer, scheduler and
discriminator after every epoch, so ``--resume`` continues exactly. Under torchrun each process
takes its contiguous share of every global batch and DistributedDataParallel averages the
gradients; rank 0 writes the checkpoints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import zoo
from zoo.kit.card import Section
from zoo.kit.train import resume_state

CHECKPOINT = "checkpoint.pt"


@dataclass
class Run:
    teachers: list
    student: Any  # the timm model
    student_member: Any  # the member it started from, or None (fresh weights)
    classes: list[str]
    options: Any
    ctx: Any
    model_args: dict = field(default_factory=dict)
    maps: list = field(default_factory=list)  # per teacher: its classes → the student's (None: the same)

    def __post_init__(self):
        from zoo.kit.train import ddp

        ctx = self.ctx
        if not ctx.train_data:
            raise zoo.BadInput("strategy 'distill' needs --train-data DIR: the images the student learns the "
                               "teachers' predictions on (one sub-folder per class)")
        n = len(self.classes)
        # a fresh student is preprocessed like the first teacher
        start = self.student_member if self.student_member is not None else self.teachers[0]
        self.student_cfg = {**start.pretrained_cfg, "num_classes": n, "label_names": self.classes}
        self.split = ctx.split("train", self.student_cfg, labels=self.classes)
        self.model = ddp(self.student.to(ctx.device))  # under torchrun: DistributedDataParallel

    def unwrapped(self):
        from zoo.kit.train import unwrap

        return unwrap(self.model)

    def config(self) -> dict:
        if self.student_member is not None:
            from zoo.kit.train import config_for

            return config_for(self.student_member, self.classes)
        model = self.unwrapped()
        arch = model.pretrained_cfg["architecture"]
        config = {"architecture": arch, "num_classes": len(self.classes), "num_features": model.num_features,
                  "label_names": self.classes, "pretrained_cfg": {**self.student_cfg, "architecture": arch}}
        if self.model_args:
            config["model_args"] = self.model_args
        return config


def _teacher_logits_cached(run: Run):
    """Each teacher's logits on the training images, in the student's split order (zoo.features cache)."""
    import torch

    from zoo.kit.measure import extract

    out = []
    for t in run.teachers:
        got = extract(t, run.ctx.train_data, run.classes, run.ctx.device, progress=run.ctx.progress)
        if not torch.equal(got.labels, run.split.targets):
            raise zoo.ZooError(f"teacher {t.name}: its view of {run.ctx.train_data} is in another order than the "
                               "student's; this is a bug in zoo, please report it")
        out.append(got.logits)
    return out


def _live_teachers(run: Run):
    """(teacher models in eval mode, each teacher's decoded training split) for teacher_outputs=live."""
    from zoo.kit.data import data_config

    models, splits = [], []
    mine = data_config(run.student_cfg)
    for t in run.teachers:
        models.append(t.create_model().to(run.ctx.device).eval())
        if run.options.augment:
            if data_config(t.pretrained_cfg) != mine:
                raise zoo.BadInput(f"augment: teacher {t.name} preprocesses differently from the student "
                                   f"({data_config(t.pretrained_cfg)} vs {mine}); augmented images are made once "
                                   "per step for all of them, so they must share one preprocessing — or train "
                                   "without augment (teachers then see the images their own way)")
            continue
        splits.append(run.ctx.split("train", t, labels=run.classes))  # its own preprocessing
    return models, splits


def train(run: Run) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from zoo.kit.train import LoopOptions, Step, autocast, ddp, share, to_device, train as train_loop
    from zoo.plugins.distill.losses import discriminator, kd_loss, meal_v2_loss, teacher_target

    opts, ctx, device = run.options, run.ctx, run.ctx.device
    world = ctx.world_size
    ckpt = ctx.checkpoint_dir / CHECKPOINT if ctx.checkpoint_dir is not None else None
    state = resume_state(ckpt, asdict(opts), ctx.resume, what="distillation", key="options") \
        if ckpt is not None else None

    live = opts.teacher_outputs == "live" or (opts.teacher_outputs == "auto" and opts.augment)
    if live:
        teachers = _live_teachers(run)
    else:
        target_all = teacher_target(_teacher_logits_cached(run), opts.loss, opts.temperature, run.maps)
        teachers = None
    n = len(run.split)
    if n < world:
        raise zoo.BadInput(f"--train-data has {n} image(s), fewer than the {world} processes")
    model = run.model
    disc = disc_opt = None
    stateful = {}
    if opts.discriminator and opts.loss == "meal-v2":
        disc = discriminator(len(run.classes)).to(device)
        disc_ddp = ddp(disc)
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=opts.lr, betas=(0.5, 0.999))
        stateful = {"discriminator": disc, "discriminator_optimizer": disc_opt}

    def step(batch):
        shared = share(*batch)  # under torchrun, this process's part of the global batch
        if shared is None:
            return None  # a last batch too small to give every process an image
        idx, images, labels = shared
        images, labels = to_device(images, device), labels.to(device)
        if teachers is None:
            target = target_all[idx].to(device)
        else:
            with torch.inference_mode(), autocast(device, True):
                inputs = [images] * len(teachers[0]) if opts.augment else \
                    [to_device(s.images[idx], device) for s in teachers[1]]
                logits_t = [m(x).float() for m, x in zip(teachers[0], inputs)]
            target = teacher_target(logits_t, opts.loss, opts.temperature, run.maps).clone()
        with autocast(device, True):
            logits = model(images).float()
        if opts.loss == "kd":
            loss = kd_loss(logits, target, labels, opts.temperature, opts.alpha)
        else:
            loss = meal_v2_loss(logits, target)
        correct = int((logits.argmax(1) == labels).sum())
        if disc is None:
            return Step(loss, n=len(idx), correct=correct)
        # the student also tries to make its outputs pass for the teachers'
        fooled = disc(logits.softmax(dim=1))
        loss = loss + F.binary_cross_entropy_with_logits(fooled, _side(len(idx), real=True, device=device))

        def discriminator_step():  # once the student has stepped: the discriminator learns to tell them apart
            d_in = torch.cat([target, logits.detach().softmax(dim=1)])
            d_sides = torch.cat([_side(len(idx), True, device), _side(len(idx), False, device)])
            d_loss = F.binary_cross_entropy_with_logits(disc_ddp(d_in), d_sides)
            disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_opt.step()
            return {"discriminator_loss": d_loss.item()}

        return Step(loss, n=len(idx), correct=correct, after=discriminator_step)

    options = LoopOptions(epochs=opts.epochs, lr=opts.lr, steps_per_epoch=-(-n // opts.batch_size),
                          weight_decay=opts.weight_decay, optimizer=opts.optimizer,
                          warmup_epochs=opts.warmup_epochs, label="distil", top1_note=" (labels)")
    return train_loop(model, step, lambda epoch, gen: _batches(run, gen), options, device=device,
                      generator=torch.Generator().manual_seed(ctx.seed + 1), checkpoint_dir=ctx.checkpoint_dir,
                      state=state, stateful=stateful, save_extra={"options": asdict(opts)},
                      progress=ctx.progress, log=ctx.log)


def _batches(run: Run, gen):
    """One epoch of (indices, images, labels) global batches, in an order drawn from ``gen``.

    Without augmentation: the decoded split, indexed. With it: the image folder through timm's
    training transform (``zoo.kit.data.augmented_loader``; the workers' seeds come from ``gen`` too, so
    a resumed run sees the same crops). Every process draws the same batches and keeps its share.
    """
    import torch

    opts = run.options
    if not opts.augment:
        for idx in torch.randperm(len(run.split), generator=gen).split(opts.batch_size):
            yield idx, run.split.images[idx], run.split.targets[idx]
        return
    from zoo.kit.data import augmented_loader, data_config

    loader = augmented_loader(run.ctx.train_data, data_config(run.student_cfg), run.classes,
                              {"hflip": opts.hflip, "scale": (opts.crop_scale, 1.0)}, batch_size=opts.batch_size,
                              generator=gen, drop_last=False, device=run.ctx.device)
    for images, labels in loader:
        yield torch.arange(len(labels)), images, labels


def _side(n: int, real: bool, device):
    """BCE targets for the discriminator's two outputs: (1, 0) for teacher rows, (0, 1) for student rows."""
    import torch

    row = torch.tensor([1.0, 0.0] if real else [0.0, 1.0], device=device)
    return row.expand(n, 2)


def evaluate(run: Run) -> tuple[dict, dict]:
    """Held-out metrics of the student, of each teacher and of the teachers' ensemble (mean softmax), all
    through the context, so that plugins' metrics (``zoo_metrics``) are measured for each."""
    import torch

    from zoo.kit.measure import predict
    from zoo.plugins.distill.losses import teacher_target

    ctx = run.ctx
    split = ctx.split("eval", run.student_cfg, labels=run.classes)
    student = ctx.evaluate_module(run.unwrapped().eval(), split).as_dict()
    teachers, probs = {}, []
    for i, t in enumerate(run.teachers):
        t_split = ctx.split("eval", t, labels=run.classes)  # its own preprocessing
        p = teacher_target([predict(t.create_model(), t_split, ctx.device)], "meal-v2", 1.0, run.maps[i:i + 1])
        teachers[t.name] = ctx.metrics_of(p.clamp_min(1e-12).log(), t_split.targets).as_dict()
        probs.append(p)
    ensemble = ctx.metrics_of(torch.stack(probs).mean(0).clamp_min(1e-12).log(), t_split.targets).as_dict()
    return student, {"student": student, "ensemble": ensemble, "teachers": teachers}


def summary_section(evaluation: dict) -> Section:
    rows = [["ensemble of the teachers (mean softmax)", f"{evaluation['ensemble']['top1'] * 100:.2f}"]]
    rows += [[f"teacher `{name}`", f"{m['top1'] * 100:.2f}"] for name, m in evaluation["teachers"].items()]
    rows.append(["**student**", f"**{evaluation['student']['top1'] * 100:.2f}**"])
    return Section("Distillation", "Held-out top-1 of the teachers, their ensemble and the distilled student:",
                   columns=["model", "top-1 (%)"], rows=rows, level=2)
