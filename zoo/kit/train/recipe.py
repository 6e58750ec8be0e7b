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
- FT runs on the one training loop (``zoo.kit.train.loop``); a checkpoint is written after every
  epoch next to ``--out`` (``.NAME.finetune/``);
  ``resume=True`` continues it and gives the same weights as a run never interrupted. The
  output folder appears only when the run is complete.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from zoo.kit.train import checkpoint
from zoo.kit.train.device import state_on_cpu
from zoo.kit.strategy.errors import BadInput
from zoo.kit.strategy.options import option

CHECKPOINT = "checkpoint.pt"
BN_BATCHES = 50  # bn=recompute: batches of training data for the final BatchNorm statistics


@dataclass
class Recipe:
    """How to fine-tune: ``zoo finetune``'s flags (``--lp-epochs`` for ``lp_epochs``) and ``zoo.finetune``'s
    recipe, declared here once; strategies that fine-tune (bang) take their options from these fields."""

    mode: Literal["lp", "ft", "lp-ft"] = option(
        "ft", "lp: linear probe only; ft: fine-tune everything; lp-ft: linear probe, then fine-tune from it.")
    epochs: int = option(3, "Fine-tuning epochs.", min=0)
    lr: float = option(1e-3, "Peak AdamW learning rate (cosine schedule with warmup).", min=0)
    weight_decay: float = option(0.05, "AdamW weight decay.", min=0)
    warmup_epochs: float = option(0.5, "Linear warmup, in epochs.", min=0)
    batch_size: int = option(64, "Batch size.", min=1)
    label_smoothing: float = option(0.0, "Label smoothing ε (timm's loss).", min=0, max=0.99)
    mixup: float = option(0.0, "Mixup α (timm's Mixup); 0 turns it off.", min=0)
    lp_epochs: int = option(20, "Linear-probe epochs (on features computed once).", min=1)
    lp_lr: float = option(1e-2, "Linear-probe learning rate.", min=0)
    augment: bool = option(False, "Fine-tune through timm's training transform (random resized crop, flip, colour "
                           "jitter), decoding the images every epoch; off: the decoded eval-transformed images, faster.")
    hflip: float = option(0.5, "With --augment: horizontal flip probability (0 for digits or text).", min=0, max=1)
    crop_scale: float = option(0.08, "With --augment: smallest random crop, as a fraction of the image area.", min=0, max=1)
    auto_augment: str = option("", "With --augment: a timm policy, e.g. rand-m9-mstd0.5 (RandAugment) or "
                               "original (AutoAugment).")
    # auto = frozen when the fine-tune starts from a linear probe (the probed head keeps the statistics it
    # was fit on; measured on Lite0 → MNIST: train-mode statistics took LP-FT from 91% to 54% ID, frozen to
    # 94%), train otherwise
    bn: Literal["auto", "train", "frozen", "recompute"] = option(
        "auto", "BatchNorm statistics while fine-tuning: train (updated as usual), frozen (the start's kept: a "
        "linear-probed head keeps the features it was fit on), recompute (updated, then re-estimated on the "
        "training data at the end); auto: frozen when the fine-tune starts from a linear probe (--mode lp-ft, "
        "or a member made by --mode lp, for the same classes), train otherwise.")
    seed: int = option(0, "Random seed.")

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


    def bn_for(self, member, classes: list[str]) -> str:
        """The BatchNorm handling ``bn`` stands for once ``auto`` is resolved for fine-tuning ``member`` on
        ``classes``: frozen when the fine-tune starts from a linear probe — LP-FT's own, or a member whose
        zoo.json says ``zoo finetune --mode lp`` made it and whose head is kept (the same classes) — since
        that head was fit on the statistics the member has; train otherwise."""
        if self.bn != "auto":
            return self.bn
        return "frozen" if self.mode == "lp-ft" or (self.mode == "ft" and linear_probed(member, classes)) else "train"


def linear_probed(member, classes: list[str]) -> bool:
    """``member`` is a linear probe (its zoo.json records ``zoo finetune --mode lp``) whose head fits ``classes``."""
    made = member.recipe()
    if not made or made.get("strategy") != "finetune" or (made.get("options") or {}).get("mode") != "lp":
        return False
    return member.num_classes == len(classes) and (member.label_names or []) == list(classes)


def fit(member, train, classes: list[str], recipe: Recipe, device, *, progress, log, ckpt_dir: Path | None = None,
        state: dict | None = None, on_epoch=None, lora=None, settings: dict | None = None
        ) -> tuple[Any, dict, list[dict]]:
    """Train ``member`` on the split ``train`` as ``recipe`` says: (state dict, timm config, history).

    With ``ckpt_dir``, a checkpoint after every fine-tuning epoch; ``state`` is one to resume; ``settings``:
    what the checkpoint records for ``--resume`` to compare (default: the recipe).
    ``on_epoch(epoch, state_dict, history)``: after each fine-tuning epoch, the weights (a CPU copy) and
    the history so far (``zoo finetune --snapshots``).
    ``lora`` (a ``zoo.kit.train.lora.LoraSpec``): train a PEFT LoRA adapter and the classifier instead of every
    parameter (``recipe.mode`` ft), BatchNorm statistics kept; the first item returned is then the PEFT model,
    and ``on_epoch`` receives it in place of a state dict (to ``save_pretrained`` it).
    """
    import torch

    torch.manual_seed(recipe.seed)
    if lora is not None and recipe.mode != "ft":
        raise BadInput(f"--lora trains an adapter and the classifier together; --mode {recipe.mode} does not apply")
    bn = "frozen" if lora is not None else recipe.bn_for(member, classes)
    if lora is None and recipe.bn == "auto" and recipe.mode == "ft" and bn == "frozen":
        log(f"--bn auto: frozen, since {member.name} is a linear probe (its head was fit on the BatchNorm "
            "statistics it has); pass --bn train to update them")
    model = model_for(member, len(classes), classes)
    if lora is not None:
        from zoo.kit.train.lora import wrap_lora

        model = wrap_lora(model, lora, who=member.name)
    model = model.to(device)
    history: list[dict] = []
    if state is None and recipe.mode in ("lp", "lp-ft"):
        history = _linear_probe(model, train, recipe, device, progress)
    if recipe.mode in ("ft", "lp-ft") and recipe.epochs:
        history = _fine_tune(model, _epochs_of(member, train, recipe, device), len(train), recipe, device, progress,
                             ckpt_dir, state, log, history, on_epoch=on_epoch, freeze_bn=bn == "frozen",
                             settings=settings, adapter=lora is not None)
        if bn == "recompute":
            from zoo.kit.train.batchnorm import recompute_bn_stats

            recompute_bn_stats(model, train, BN_BATCHES, device, batch_size=recipe.batch_size, seed=recipe.seed)
    if lora is not None:
        return model.eval(), config_for(member, classes), history
    return state_on_cpu(model), config_for(member, classes), history


def config_for(member, classes: list[str]) -> dict:
    """The member's config, relabelled for ``classes`` everywhere its loader reads a class count (its format's
    ``output_config``)."""
    return member.format.output_config(member, label_names=classes)


def _epochs_of(member, train, recipe: Recipe, device):
    """A function (generator, drop_last) → one epoch of (images, targets) batches.

    Without augmentation: the decoded split, shuffled. With it: the image folder again through
    timm's training transform (random resized crop, flip, colour jitter, AutoAugment/RandAugment),
    decoded by worker processes whose seeds and order come from ``generator`` — so a resumed run
    sees the same crops as an uninterrupted one.
    """
    if not recipe.augment:
        return lambda gen, drop_last: train.batches(recipe.batch_size, shuffle=True, generator=gen)
    from zoo.kit.data import augmented_loader, data_config

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
    """Fit only the classifier, on features of the frozen backbone computed once (zoo.kit.train.loop)."""
    import torch

    model.eval()
    feats = []
    with torch.no_grad():
        for images, _ in train.batches(256):
            x = model.forward_features(images.to(device))
            feats.append(model.forward_head(x, pre_logits=True).float())
    # LP-FT: the head is fit to the fine-tune's own loss, so the fine-tune starts at the head's optimum
    smoothing = recipe.label_smoothing if recipe.mode == "lp-ft" else 0.0
    return probe_head(model.get_classifier(), torch.cat(feats), train.targets, recipe, device, progress,
                      smoothing=smoothing)


def probe_head(head, feats, targets, recipe: Recipe, device, progress, *, smoothing: float = 0.0) -> list[dict]:
    """Train the linear layer ``head`` on fixed features: ``recipe``'s ``lp_epochs`` at ``lp_lr`` (constant), its
    ``batch_size``, ``weight_decay`` and ``seed`` (the order of the batches), cross-entropy with label
    ``smoothing``. The linear probe of ``zoo finetune --mode lp`` and ``--strategy concat``'s head. Returns the
    history; ``head`` is left in eval mode."""
    import torch
    import torch.nn.functional as F

    from zoo.kit.train import loop as training

    feats, targets = feats.to(device), targets.to(device)
    gen = torch.Generator().manual_seed(recipe.seed)

    def batches(epoch, gen):
        yield from torch.randperm(len(feats), generator=gen).split(recipe.batch_size)

    def step(idx):
        idx = idx.to(device)
        logits = head(feats[idx])
        return training.Step(F.cross_entropy(logits, targets[idx], label_smoothing=smoothing), n=len(idx),
                             correct=int((logits.argmax(1) == targets[idx]).sum()))

    # the kit's one loop, with a constant learning rate and no checkpoints: the probe takes seconds
    options = training.LoopOptions(epochs=recipe.lp_epochs, lr=recipe.lp_lr, weight_decay=recipe.weight_decay,
                                   steps_per_epoch=-(-len(feats) // recipe.batch_size), schedule="constant", amp=False,
                                   label="linear probe", history_tag={"phase": "lp"})
    history = training.train(head, step, batches, options, device=device, generator=gen, progress=progress)
    head.eval()
    return history


def _fine_tune(model, epoch_batches, n_train: int, recipe: Recipe, device, progress, ckpt_dir: Path | None,
               state, log, history: list[dict], on_epoch=None, freeze_bn: bool = False, settings: dict | None = None,
               adapter: bool = False) -> list[dict]:
    """Train every parameter that requires grad (zoo.kit.train.loop); a checkpoint after each epoch. Returns the
    whole history (LP epochs too). ``adapter``: the model is a PEFT model over a frozen base; checkpoints hold
    its trained parameters alone and ``on_epoch`` receives the model itself."""
    import numpy as np
    import torch
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    from zoo.kit.train import loop as training
    from zoo.kit.train.device import autocast, to_device

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

    trained = training.ddp(model)  # under torchrun: each process takes its share of every global batch

    def step(batch):
        shared = training.share(*batch)
        if shared is None:  # a last batch smaller than the number of processes
            return None
        images, targets = shared
        images, targets = to_device(images, device), targets.to(device)
        hard = targets
        if mixup is not None and len(targets) % 2 == 0:
            images, targets = mixup(images, targets)
        elif mixup is not None:  # an odd final batch: soft targets without mixing
            targets = _smooth(targets, n_classes, recipe.label_smoothing)
        with autocast(device, True):
            logits = trained(images)
            loss = criterion(logits.float(), targets)
        return training.Step(loss, n=len(hard), correct=int((logits.argmax(1) == hard).sum()))

    # the start's running statistics stay with bn=frozen; BatchNorm's scale and shift still learn
    options = training.LoopOptions(epochs=recipe.epochs, lr=recipe.lr, steps_per_epoch=steps_per_epoch,
                                   weight_decay=recipe.weight_decay, warmup_epochs=recipe.warmup_epochs,
                                   freeze_bn=freeze_bn, label="LoRA fine-tune" if adapter else "fine-tune",
                                   checkpoint_trainable=adapter, history_tag={"phase": "ft"})
    rows = list(state["history"] if state is not None else history)

    def snapshot(epoch: int, row: dict) -> None:
        rows.append(row)
        if on_epoch is not None:
            on_epoch(epoch, model if adapter else state_on_cpu(model), list(rows))

    recorded = settings if settings is not None else asdict(recipe)  # what --resume compares
    return training.train(trained, step, batches, options, device=device, generator=gen, checkpoint_dir=ckpt_dir,
                          state=state, save_extra={"recipe": recorded}, numpy_rng=True, history=history,
                          on_epoch_end=snapshot, progress=progress, log=log)


def _smooth(targets, n_classes: int, eps: float):
    import torch

    off = eps / n_classes
    return torch.full((len(targets), n_classes), off, device=targets.device).scatter_(
        1, targets[:, None], 1.0 - eps + off)
