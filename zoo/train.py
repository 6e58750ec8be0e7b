"""Fine-tune a member on an image folder: linear probe (LP), full fine-tune (FT) or LP then FT.

The output is a member like any other (a timm / Hub repo), so it is a WiSE-FT end, a soup
ingredient, a stitching anchor. Everything that timm already does is taken from timm: the
model and its new head (``reset_classifier``), preprocessing (``timm.data``), Mixup and the
losses (``timm.data.Mixup``, ``timm.loss``), the cosine schedule with warmup
(``timm.scheduler.CosineLRScheduler``).

- LP fits only the classifier, on features computed once with the backbone frozen in eval
  mode (BatchNorm statistics untouched): the head then matches the pretrained features,
  which is what makes the LP start a good WiSE-FT end (Kumar et al., LP-FT).
- FT trains every parameter with AdamW; label smoothing and Mixup calibrate it (BANG).
- FT runs on the one training loop (``zoo.training``); a checkpoint is written after every
  epoch next to ``--out`` (``.NAME.finetune/``);
  ``resume=True`` continues it and gives the same weights as a run never interrupted. The
  output folder appears only when the run is complete.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from zoo import checkpoint
from zoo.errors import BadInput

CHECKPOINT = "checkpoint.pt"
BN_BATCHES = 50  # bn=recompute: batches of training data for the final BatchNorm statistics


@dataclass
class Recipe:
    mode: Literal["lp", "ft", "lp-ft"] = "ft"
    epochs: int = 3
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    batch_size: int = 64
    label_smoothing: float = 0.0
    mixup: float = 0.0
    lp_epochs: int = 20
    lp_lr: float = 1e-2
    augment: bool = False  # timm's training transform, decoded afresh every epoch
    hflip: float = 0.5
    crop_scale: float = 0.08
    auto_augment: str = ""
    # auto = frozen for lp-ft (the probed head keeps the statistics it was fit on; measured on Lite0 →
    # MNIST: train-mode statistics took LP-FT from 91% to 54% ID, frozen to 94%), train otherwise
    bn: Literal["auto", "train", "frozen", "recompute"] = "auto"
    seed: int = 0

    def check(self) -> None:
        if self.mode not in ("lp", "ft", "lp-ft"):
            raise BadInput(f"--mode {self.mode!r}: choose lp, ft or lp-ft")
        for name in ("epochs", "lp_epochs", "batch_size"):
            if getattr(self, name) < (0 if name == "epochs" else 1):
                raise BadInput(f"--{name.replace('_', '-')} must be positive")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise BadInput("--label-smoothing must be in [0, 1)")
        if self.mixup < 0 or self.lr <= 0 or self.lp_lr <= 0 or self.warmup_epochs < 0:
            raise BadInput("--mixup, --lr, --lp-lr and --warmup-epochs must be positive")
        if not (0.0 <= self.hflip <= 1.0 and 0.0 < self.crop_scale <= 1.0):
            raise BadInput("--hflip must be in [0, 1] and --crop-scale in (0, 1]")
        if self.bn not in ("auto", "train", "frozen", "recompute"):
            raise BadInput(f"--bn {self.bn!r}: choose auto, train, frozen or recompute")
        if self.auto_augment and not self.augment:
            raise BadInput("--auto-augment is part of the training transform: pass --augment too")


    @property
    def bn_handling(self) -> str:
        """The BatchNorm handling ``bn`` stands for once ``auto`` is resolved."""
        if self.bn != "auto":
            return self.bn
        return "frozen" if self.mode == "lp-ft" else "train"


FinetuneRecipe = Recipe  # the name it has at the top level: zoo.FinetuneRecipe


def finetune(member_spec: str, train_data: str, out: str | Path, *, recipe: Recipe | None = None,
             num_classes: int | None = None, eval_data: str | None = None, resume: bool = False,
             force: bool = False, device: str = "auto", arch: str | None = None, allow_pickle: bool = False,
             progress: Any = None, log=None):
    """Fine-tune ``member_spec`` on the image folder ``train_data`` and write the result to ``out``."""
    from zoo import api, output
    from zoo.data import data_config, load_split
    from zoo.device import resolve_device
    from zoo.progress import Silent
    from zoo.strategy import Combined

    recipe = recipe or Recipe()
    recipe.check()
    progress = progress or Silent()
    log = log or (lambda message: None)
    out = Path(out)
    output.check_out(out, force)
    ckpt_dir = out.parent / f".{out.name}.finetune"
    state = checkpoint.resume_state(ckpt_dir / CHECKPOINT, asdict(recipe), resume, what="fine-tune", key="recipe")

    classes = class_names(train_data)
    if num_classes is not None and num_classes != len(classes):
        raise BadInput(f"--num-classes {num_classes} but {train_data} has {len(classes)} class folders")
    member = api.load_member(member_spec, arch=arch, allow_pickle=allow_pickle)
    dev = resolve_device(device)
    cfg = data_config(member.pretrained_cfg)
    train = load_split(train_data, cfg, label_names=classes, num_classes=len(classes), progress=progress)
    held_out = load_split(eval_data, cfg, label_names=classes, num_classes=len(classes),
                          progress=progress) if eval_data else None

    sd, config, history = fit(member, train, classes, recipe, dev, progress=progress, log=log,
                              ckpt_dir=ckpt_dir, state=state)
    result = Combined(state_dict=sd, config=config, report={"history": history, "classes": classes},
                      strategy="finetune", options=asdict(recipe), members=[member.provenance()])
    if held_out is not None:
        from zoo.metrics import evaluate_model

        model = model_for(member, len(classes))
        model.load_state_dict(sd)
        result.metrics = evaluate_model(model.eval(), held_out, dev).as_dict()
    if history:
        result.figures["training.png"] = _plot(history)
    api.save(result, out, force=force, eval_data=eval_data, train_data=train_data)
    if ckpt_dir.exists():
        import shutil

        shutil.rmtree(ckpt_dir)
    return result


def fit(member, train, classes: list[str], recipe: Recipe, device, *, progress, log, ckpt_dir: Path | None = None,
        state: dict | None = None) -> tuple[dict, dict, list[dict]]:
    """Train ``member`` on the split ``train`` as ``recipe`` says: (state dict, timm config, history).

    With ``ckpt_dir``, a checkpoint after every fine-tuning epoch; ``state`` is one to resume.
    """
    import torch

    torch.manual_seed(recipe.seed)
    model = model_for(member, len(classes), classes).to(device)
    history: list[dict] = []
    if state is None and recipe.mode in ("lp", "lp-ft"):
        history = _linear_probe(model, train, recipe, device, progress)
    if recipe.mode in ("ft", "lp-ft") and recipe.epochs:
        history = _fine_tune(model, _epochs_of(member, train, recipe, device), len(train), recipe, device, progress,
                             ckpt_dir, state, log, history)
        if recipe.bn_handling == "recompute":
            from zoo.batchnorm import recompute_bn_stats

            recompute_bn_stats(model, train, BN_BATCHES, device, batch_size=recipe.batch_size, seed=recipe.seed)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return sd, config_for(member, classes), history


def config_for(member, classes: list[str]) -> dict:
    """The member's timm config, relabelled for ``classes`` everywhere timm reads a class count."""
    config = dict(member.config)
    config["num_classes"] = len(classes)
    config["label_names"] = classes
    if "num_classes" in config.get("model_args", {}):
        # timm's loader passes model_args to the constructor: a stale count there makes it build the old
        # head and silently drop the trained one when the shapes differ
        config["model_args"] = {**config["model_args"], "num_classes": len(classes)}
    pretrained_cfg = {**member.pretrained_cfg, "num_classes": len(classes), "label_names": classes}
    if classes != member.label_names:
        pretrained_cfg.pop("label_descriptions", None)  # they describe the member's classes, not these
    config["pretrained_cfg"] = pretrained_cfg
    return config


def _epochs_of(member, train, recipe: Recipe, device):
    """A function (generator, drop_last) → one epoch of (images, targets) batches.

    Without augmentation: the decoded split, shuffled. With it: the image folder again through
    timm's training transform (random resized crop, flip, colour jitter, AutoAugment/RandAugment),
    decoded by worker processes whose seeds and order come from ``generator`` — so a resumed run
    sees the same crops as an uninterrupted one.
    """
    if not recipe.augment:
        return lambda gen, drop_last: train.batches(recipe.batch_size, shuffle=True, generator=gen)
    from zoo.data import augmented_loader, data_config

    options = {"hflip": recipe.hflip, "scale": (recipe.crop_scale, 1.0), "auto_augment": recipe.auto_augment or None}
    return lambda gen, drop_last: augmented_loader(train.source, data_config(member.pretrained_cfg), train.classes,
                                                   options, batch_size=recipe.batch_size, generator=gen,
                                                   drop_last=drop_last, device=device)


def model_for(member, n_classes: int, classes: list[str] | None = None):
    """``member`` as a timm model with a head for ``n_classes`` (a new one, timm-initialised, if it differs)."""
    model = member.create_model()
    if member.num_classes != n_classes or (classes is not None and (member.label_names or []) != classes):
        model.reset_classifier(n_classes)
    return model


def class_names(train_data: str) -> list[str]:
    """The class folders of an image folder, sorted (as timm's ImageFolder orders them)."""
    path = Path(train_data).expanduser()
    if not path.is_dir():
        raise BadInput(f"--train-data {train_data}: no such folder; fine-tuning takes an image folder "
                       "with one sub-folder per class")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise BadInput(f"--train-data {train_data}: found {len(classes)} class folder(s); need at least two")
    return classes


def _linear_probe(model, train, recipe: Recipe, device, progress) -> list[dict]:
    """Fit only the classifier, on features of the frozen backbone computed once."""
    import torch
    import torch.nn.functional as F

    model.eval()
    feats = []
    with torch.no_grad():
        for images, _ in train.batches(256):
            x = model.forward_features(images.to(device))
            feats.append(model.forward_head(x, pre_logits=True).float())
    feats = torch.cat(feats)
    targets = train.targets.to(device)
    head = model.get_classifier()
    opt = torch.optim.AdamW(head.parameters(), lr=recipe.lp_lr, weight_decay=recipe.weight_decay)
    gen = torch.Generator().manual_seed(recipe.seed)
    # LP-FT: the head is fit to the fine-tune's own loss, so the fine-tune starts at the head's optimum
    smoothing = recipe.label_smoothing if recipe.mode == "lp-ft" else 0.0
    task = progress.task("linear probe", total=recipe.lp_epochs)
    history = []
    for epoch in range(recipe.lp_epochs):
        total, correct, loss_sum = 0, 0, 0.0
        for idx in torch.randperm(len(feats), generator=gen).split(recipe.batch_size):
            logits = head(feats[idx.to(device)])
            loss = F.cross_entropy(logits, targets[idx.to(device)], label_smoothing=smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == targets[idx.to(device)]).sum())
            total += len(idx)
        history.append({"phase": "lp", "epoch": epoch + 1, "loss": loss_sum / total, "train_top1": correct / total})
        task.advance()
    task.close()
    return history


def _fine_tune(model, epoch_batches, n_train: int, recipe: Recipe, device, progress, ckpt_dir: Path | None,
               state, log, history: list[dict]) -> list[dict]:
    """Train every parameter (zoo.training); a checkpoint after each epoch. Returns the whole history (LP epochs too)."""
    import numpy as np
    import torch
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    from zoo import training
    from zoo.device import autocast, to_device

    n_classes = model.num_classes
    mixup = Mixup(mixup_alpha=recipe.mixup, label_smoothing=recipe.label_smoothing, num_classes=n_classes) \
        if recipe.mixup > 0 else None
    if mixup:
        criterion = SoftTargetCrossEntropy()  # Mixup folds the label smoothing into its soft targets
    elif recipe.label_smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=recipe.label_smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()
    drop_last = mixup is not None and n_train >= 2 * recipe.batch_size  # timm's Mixup wants even batches
    steps_per_epoch = n_train // recipe.batch_size if drop_last else -(-n_train // recipe.batch_size)
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    np.random.seed(recipe.seed)  # timm's Mixup draws from numpy's global generator (checkpointed: numpy_rng)

    def batches(epoch, gen):
        for images, targets in epoch_batches(gen, drop_last):
            if drop_last and len(targets) < recipe.batch_size:
                return
            yield images, targets

    def step(batch):
        images, targets = batch
        images, targets = to_device(images, device), targets.to(device)
        hard = targets
        if mixup is not None and len(targets) % 2 == 0:
            images, targets = mixup(images, targets)
        elif mixup is not None:  # an odd final batch: soft targets without mixing
            targets = _smooth(targets, n_classes, recipe.label_smoothing)
        with autocast(device, True):
            logits = model(images)
            loss = criterion(logits.float(), targets)
        return training.Step(loss, n=len(hard), correct=int((logits.argmax(1) == hard).sum()))

    # the start's running statistics stay with bn=frozen; BatchNorm's scale and shift still learn
    options = training.Options(epochs=recipe.epochs, lr=recipe.lr, steps_per_epoch=steps_per_epoch,
                               weight_decay=recipe.weight_decay, warmup_epochs=recipe.warmup_epochs,
                               freeze_bn=recipe.bn_handling == "frozen", label="fine-tune",
                               history_tag={"phase": "ft"})
    return training.train(model, step, batches, options, device=device, generator=gen, checkpoint_dir=ckpt_dir,
                          state=state, save_extra={"recipe": asdict(recipe)}, numpy_rng=True, history=history,
                          progress=progress, log=log)


def _smooth(targets, n_classes: int, eps: float):
    import torch

    off = eps / n_classes
    return torch.full((len(targets), n_classes), off, device=targets.device).scatter_(
        1, targets[:, None], 1.0 - eps + off)


def _plot(history: list[dict]):
    from zoo.plots import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=110)
    for phase, color in (("lp", "tab:gray"), ("ft", "tab:blue")):
        rows = [h for h in history if h["phase"] == phase]
        if rows:
            axes[0].plot([h["epoch"] for h in rows], [h["loss"] for h in rows], "-o", ms=3, color=color,
                         label=phase.upper())
            axes[1].plot([h["epoch"] for h in rows], [h["train_top1"] * 100 for h in rows], "-o", ms=3,
                         color=color, label=phase.upper())
    axes[0].set_title("training loss")
    axes[1].set_title("training top-1 (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
