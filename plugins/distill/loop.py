"""The distillation training loop: data, teacher targets, DDP, checkpoints and --resume, evaluation.

One ``Run`` holds what the loop needs. The order of the training images comes from a seeded
``torch.Generator`` whose state is checkpointed with the model, optimizer, scheduler and
discriminator after every epoch, so ``--resume`` continues exactly. Under torchrun each process
takes its contiguous share of every global batch and DistributedDataParallel averages the
gradients; rank 0 writes the checkpoints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from zoo.kit import card, checkpoint
from zoo.kit.errors import BadInput, ZooError

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
        import torch

        from zoo.kit.data import data_config, load_split

        ctx = self.ctx
        if not ctx.train_data:
            raise BadInput("strategy 'distill' needs --train-data DIR: the images the student learns the "
                           "teachers' predictions on (one sub-folder per class)")
        n = len(self.classes)
        # a fresh student is preprocessed like the first teacher
        start = self.student_member if self.student_member is not None else self.teachers[0]
        self.student_cfg = {**start.pretrained_cfg, "num_classes": n, "label_names": self.classes}
        self.split = load_split(ctx.train_data, data_config(self.student_cfg), label_names=self.classes,
                                num_classes=n, progress=ctx.progress)
        self.model = self.student.to(ctx.device)
        if ctx.world_size > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(self.model)

    def unwrapped(self):
        return getattr(self.model, "module", self.model)

    def config(self) -> dict:
        if self.student_member is not None:
            from zoo.kit.finetune import config_for

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

    from zoo.kit.features import extract

    out = []
    for t in run.teachers:
        got = extract(t, run.ctx.train_data, run.classes, run.ctx.device, progress=run.ctx.progress)
        if not torch.equal(got.labels, run.split.targets):
            raise ZooError(f"teacher {t.name}: its view of {run.ctx.train_data} is in another order than the "
                           "student's; this is a bug in zoo, please report it")
        out.append(got.logits)
    return out


def _live_teachers(run: Run):
    """(teacher models in eval mode, each teacher's decoded training split) for teacher_outputs=live."""
    from zoo.kit.data import data_config, load_split

    models, splits = [], []
    mine = data_config(run.student_cfg)
    for t in run.teachers:
        models.append(t.create_model().to(run.ctx.device).eval())
        if run.options.augment:
            if data_config(t.pretrained_cfg) != mine:
                raise BadInput(f"augment: teacher {t.name} preprocesses differently from the student "
                               f"({data_config(t.pretrained_cfg)} vs {mine}); augmented images are made once "
                               "per step for all of them, so they must share one preprocessing — or train "
                               "without augment (teachers then see the images their own way)")
            continue
        splits.append(load_split(run.ctx.train_data, data_config(t.pretrained_cfg), label_names=run.classes,
                                 num_classes=len(run.classes), progress=run.ctx.progress))
    return models, splits


def train(run: Run) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from timm.scheduler import CosineLRScheduler

    from zoo.kit.device import amp_step, autocast, grad_scaler, to_device
    from zoo.plugins.distill.losses import discriminator, kd_loss, meal_v2_loss, teacher_target

    opts, ctx, device = run.options, run.ctx, run.ctx.device
    rank, world = ctx.rank, ctx.world_size
    ckpt = ctx.checkpoint_dir / CHECKPOINT if ctx.checkpoint_dir is not None else None
    state = checkpoint.resume_state(ckpt, asdict(opts), ctx.resume, what="distillation", key="options") \
        if ckpt is not None else None

    live = opts.teacher_outputs == "live" or (opts.teacher_outputs == "auto" and opts.augment)
    if live:
        teachers = _live_teachers(run)
    else:
        target_all = teacher_target(_teacher_logits_cached(run), opts.loss, opts.temperature, run.maps)
        teachers = None
    n = len(run.split)
    if n < world:
        raise BadInput(f"--train-data has {n} image(s), fewer than the {world} processes")
    steps_per_epoch = -(-n // opts.batch_size)
    total = max(1, steps_per_epoch * opts.epochs)
    model = run.model
    params = [p for p in model.parameters() if p.requires_grad]
    if opts.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=opts.lr, momentum=0.9, weight_decay=opts.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    sched = CosineLRScheduler(opt, t_initial=total, warmup_t=int(opts.warmup_epochs * steps_per_epoch),
                              warmup_lr_init=opts.lr * 0.01, lr_min=opts.lr * 0.01, t_in_epochs=False)
    scaler = grad_scaler(device)
    disc = disc_ddp = disc_opt = None
    if opts.discriminator and opts.loss == "meal-v2":
        disc = discriminator(len(run.classes)).to(device)
        disc_ddp = torch.nn.parallel.DistributedDataParallel(disc) if world > 1 else disc
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=opts.lr, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(ctx.seed + 1)
    history: list[dict] = []
    start = 0
    if state is not None:
        start = checkpoint.restore_training(state, run.unwrapped(), opt, sched, scaler, gen)
        if disc is not None:
            disc.load_state_dict(state["discriminator"])
            disc_opt.load_state_dict(state["discriminator_optimizer"])
        history = list(state["history"])
        ctx.log(f"resuming from epoch {start} of {opts.epochs} ({ckpt.parent})")

    step = start * steps_per_epoch
    for epoch in range(start, opts.epochs):
        model.train()
        task = ctx.progress.task(f"distil epoch {epoch + 1}/{opts.epochs}", total=steps_per_epoch)
        sums = torch.zeros(4, dtype=torch.float64)  # loss·n, correct, n, discriminator loss·n
        for idx, images, labels in _batches(run, gen):
            if len(idx) < world:
                task.advance()
                continue  # a last batch too small to give every process an image
            mine = torch.arange(len(idx)).chunk(world)[rank] if world > 1 else torch.arange(len(idx))
            images, labels = to_device(images[mine], device), labels[mine].to(device)
            if teachers is None:
                target = target_all[idx[mine]].to(device)
            else:
                with torch.inference_mode(), autocast(device, True):
                    inputs = [images] * len(teachers[0]) if opts.augment else \
                        [to_device(s.images[idx[mine]], device) for s in teachers[1]]
                    logits_t = [m(x).float() for m, x in zip(teachers[0], inputs)]
                target = teacher_target(logits_t, opts.loss, opts.temperature, run.maps).clone()
            with autocast(device, True):
                logits = model(images).float()
            if opts.loss == "kd":
                loss = kd_loss(logits, target, labels, opts.temperature, opts.alpha)
            else:
                loss = meal_v2_loss(logits, target)
            if disc is not None:  # the student also tries to make its outputs pass for the teachers'
                fooled = disc(logits.softmax(dim=1))
                loss = loss + F.binary_cross_entropy_with_logits(fooled, _side(len(mine), real=True, device=device))
            step = amp_step(loss, opt, scaler, sched, step)
            if disc is not None:
                d_in = torch.cat([target, logits.detach().softmax(dim=1)])
                d_sides = torch.cat([_side(len(mine), True, device), _side(len(mine), False, device)])
                d_loss = F.binary_cross_entropy_with_logits(disc_ddp(d_in), d_sides)
                disc_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                disc_opt.step()
                sums[3] += d_loss.item() * len(mine)
            sums[0] += loss.item() * len(mine)
            sums[1] += int((logits.argmax(1) == labels).sum())
            sums[2] += len(mine)
            task.describe(f"distil epoch {epoch + 1}/{opts.epochs} · loss {sums[0] / sums[2]:.4f} · "
                          f"top-1 {sums[1] / sums[2]:.3f}")
            task.advance()
        task.close()
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(sums)
        history.append({"epoch": epoch + 1, "loss": float(sums[0] / sums[2]), "train_top1": float(sums[1] / sums[2]),
                        "lr": opt.param_groups[0]["lr"],
                        **({"discriminator_loss": float(sums[3] / sums[2])} if disc is not None else {})})
        ctx.log(f"epoch {epoch + 1}/{opts.epochs}: loss {history[-1]['loss']:.4f}, "
                f"train top-1 (labels) {history[-1]['train_top1']:.4f}")
        if ckpt is not None and rank == 0:
            checkpoint.save(ckpt, checkpoint.training_state(
                epoch + 1, run.unwrapped(), opt, sched, scaler, gen, history=history, options=asdict(opts),
                **({"discriminator": disc.state_dict(), "discriminator_optimizer": disc_opt.state_dict()}
                   if disc is not None else {})))
        from zoo.kit.distributed import barrier

        barrier()
    return history


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
    """Held-out metrics of the student, of each teacher and of the teachers' ensemble (mean softmax)."""
    import torch

    from zoo.kit.data import data_config, load_split
    from zoo.kit.metrics import evaluate_model, metrics_from_logits, predict

    ctx = run.ctx
    split = load_split(ctx.eval_data, data_config(run.student_cfg), label_names=run.classes,
                       num_classes=len(run.classes), progress=ctx.progress)
    student = evaluate_model(run.unwrapped().eval(), split, ctx.device).as_dict()
    from zoo.plugins.distill.losses import teacher_target

    teachers, probs = {}, []
    for i, t in enumerate(run.teachers):
        t_split = load_split(ctx.eval_data, data_config(t.pretrained_cfg), label_names=run.classes,
                             num_classes=len(run.classes), progress=ctx.progress)  # its own preprocessing
        p = teacher_target([predict(t.create_model(), t_split, ctx.device)], "meal-v2", 1.0, run.maps[i:i + 1])
        teachers[t.name] = metrics_from_logits(p.clamp_min(1e-12).log(), t_split.targets).as_dict()
        probs.append(p)
    ensemble = metrics_from_logits(torch.stack(probs).mean(0).clamp_min(1e-12).log(), t_split.targets).as_dict()
    return student, {"student": student, "ensemble": ensemble, "teachers": teachers}


def summary_section(evaluation: dict) -> card.Section:
    rows = [["ensemble of the teachers (mean softmax)", f"{evaluation['ensemble']['top1'] * 100:.2f}"]]
    rows += [[f"teacher `{name}`", f"{m['top1'] * 100:.2f}"] for name, m in evaluation["teachers"].items()]
    rows.append(["**student**", f"**{evaluation['student']['top1'] * 100:.2f}**"])
    return card.Section("Distillation", "Held-out top-1 of the teachers, their ensemble and the distilled student:",
                        columns=["model", "top-1 (%)"], rows=rows, level=2)
