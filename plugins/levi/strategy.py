"""``--strategy levi``: a pre-trained member ensembled layer by layer with a small model trained from scratch
on ``--train-data`` (Roh et al. 2024; the network in ``zoo.plugins.levi.net``).

What the paper fixes, and what zoo had to choose (the paper's text was read through its abstract and
summaries; its code is not public):
- the pre-trained model is kept fixed (``pretrained=frozen``, the default; ``finetune`` trains it too);
- the small task-specific model is randomly initialised and trained from scratch (``small``: any timm
  architecture; default ``resnet10t``);
- adapting layers read the concatenated intermediate outputs of both models and are trained with one
  loss over the levels. zoo's choices: ``levels`` depths from the top (the pre-logits features and the
  last blocks' outputs, pooled), one linear adapting layer per level (``hidden`` > 0: an MLP), the loss
  the mean of the levels' cross-entropies, the prediction the mean of their logits.

Training is the kit's loop (AdamW, cosine schedule, a checkpoint every epoch, ``--resume``, torchrun).
With the pre-trained model frozen and no augmentation, its views of the training images are computed
once and reused every epoch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import zoo
from zoo.kit.train import Recipe, state_on_cpu
from zoo.kit.strategy import compose

if TYPE_CHECKING:  # pragma: no cover
    import torch



class Levi(zoo.Strategy):
    name = "levi"
    member_formats = ("timm",)  # reaches into timm's modules: other formats are converted first
    summary = "ensemble a frozen pre-trained model layer by layer with a small model trained from scratch (LEVI)"
    min_members = 1
    max_members = 1
    needs = ("train",)
    relation = "finetune"

    @dataclass
    class Own:
        small: str = zoo.option("resnet10t", "the small task-specific model: a timm architecture, trained from scratch")
        levels: int = zoo.option(2, "depths ensembled, from the top: the pre-logits features and the outputs of the "
                                "last levels − 1 blocks of both models", min=1, max=4)
        hidden: int = zoo.option(0, "hidden units of each adapting layer (0: one linear layer)", min=0)
        pretrained: Literal["frozen", "finetune"] = zoo.option(
            "frozen", "the pre-trained model: frozen (the paper's) or trained with the rest")

    #: the training's options are zoo finetune's (the recipe), LEVI's own first
    Options = compose(Own, (Recipe, ["epochs", "lr", "weight_decay", "warmup_epochs", "batch_size"]),
                      defaults={"epochs": 5}, bounds={"epochs": (1, None)},
                      helps={"epochs": "training epochs", "batch_size": "batch size (global, split across processes)"})

    @classmethod
    def check(cls, options) -> None:
        import timm

        if not timm.is_model(options.small):
            raise zoo.BadInput(f"option small={options.small!r}: timm has no such architecture (see timm.list_models())")

    def combine(self, members, options, ctx):
        import torch

        import timm

        from zoo.kit.data import data_config
        from zoo.kit.train import (CHECKPOINT, LoopOptions, Step, autocast, class_names, ddp, resume_state, share,
                                   to_device, train, unwrap)
        from zoo.plugins.levi import net as levi

        base = members[0]
        classes = class_names(ctx.train_data)
        cfg = data_config(base.pretrained_cfg)
        big = base.create_model()
        frozen = options.pretrained == "frozen"
        for p in big.parameters():
            p.requires_grad_(not frozen)
        small = timm.create_model(options.small, pretrained=False, num_classes=len(classes))
        try:
            net = levi.LEVINet(big, small, classes=len(classes), levels=options.levels, hidden=options.hidden,
                               input_size=tuple(cfg["input_size"]))
        except (RuntimeError, TypeError, NotImplementedError) as e:
            raise zoo.BadInput(f"option levels={options.levels}: {base.architecture} or {options.small} does not give "
                               f"{options.levels} levels of features ({e}); try levels=1") from None
        net.frozen_big = frozen
        net = net.to(ctx.device)
        split = ctx.split("train", base, labels=classes)
        n, world = len(split), ctx.world_size
        if n < world:
            raise zoo.BadInput(f"--train-data has {n} image(s), fewer than the {world} processes")
        cached = _big_views(net, split, ctx) if frozen else None
        model = ddp(net)
        ckpt = ctx.checkpoint_dir / CHECKPOINT if ctx.checkpoint_dir is not None else None
        state = resume_state(ckpt, asdict(options), ctx.resume, what="LEVI training", key="options") \
            if ckpt is not None else None

        def step(batch):
            shared = share(*batch)  # under torchrun, this process's part of the global batch
            if shared is None:
                return None
            idx, images, labels = shared
            images, labels = to_device(images, ctx.device), labels.to(ctx.device)
            given = [v[idx].to(ctx.device) for v in cached] if cached is not None else None
            with autocast(ctx.device, True):  # AMP on CUDA, as the kit's other trainers (the CPU: float32)
                levels = model(images, big_views=given, per_level=True)
            loss = torch.stack([torch.nn.functional.cross_entropy(lg.float(), labels) for lg in levels]).mean()
            correct = int((levels.mean(0).argmax(1) == labels).sum())
            return Step(loss, n=len(idx), correct=correct)

        def batches(epoch, gen):
            for idx in torch.randperm(n, generator=gen).split(options.batch_size):
                yield idx, split.images[idx], split.targets[idx]

        loop = LoopOptions(epochs=options.epochs, lr=options.lr, steps_per_epoch=-(-n // options.batch_size),
                           weight_decay=options.weight_decay, warmup_epochs=options.warmup_epochs, label="levi")
        history = train(model, step, batches, loop, device=ctx.device,
                        generator=torch.Generator().manual_seed(ctx.seed + 1),
                        checkpoint_dir=ctx.checkpoint_dir, state=state,
                        save_extra={"options": asdict(options)}, progress=ctx.progress, log=ctx.log)
        net = unwrap(model).eval()
        report, metrics = {"history": history, "classes": classes, "small": options.small}, None
        from zoo.kit.measure import macs_per_image, predict, selective_metrics

        macs = float(macs_per_image(net, tuple(cfg["input_size"])))
        report["macs_per_image"] = macs
        rows = []
        for kind, source in (("eval", ctx.eval_data), ("ood", ctx.ood_data)):
            if not source:
                continue
            held = ctx.split(kind, base, labels=classes)
            logits = predict(net, held, ctx.device, batch_size=ctx.batch_size)  # one pass for every metric
            measured = ctx.metrics_of(logits, held.targets).as_dict()
            measured.update(selective_metrics(logits.float().softmax(1), held.targets), macs_per_image=macs)
            report[f"{kind}_levels_top1"] = _levels_top1(net, held, ctx)  # each adapting layer alone
            rows.append(["held-out" if kind == "eval" else "shifted", *(measured[k] for k in _CARD_KEYS)])
            if kind == "eval":
                metrics = measured
            else:
                report["ood"] = measured
        config = levi.to_config(net, _spec(base), {"architecture": options.small, "num_classes": len(classes)},
                                pretrained_cfg=dict(base.pretrained_cfg), label_names=classes, frozen=frozen)
        from zoo.kit.card import training_curves

        out = zoo.Combined(state_dict=state_on_cpu(net), config=config, metrics=metrics, report=report, usage=_USAGE)
        out.figures["training.png"] = training_curves(history)
        if rows:
            from zoo.kit.card import Section

            out.card_sections.append(Section(
                "LEVI: measured", f"{macs / 1e6:.3f} M multiply–accumulates per image (both models and the adapting "
                "layers; torch's flop counter). AURC: area under the risk–coverage curve (maximum-softmax "
                "confidence); coverage@risk5%: the share of images kept at 5% errors among them.",
                columns=["data", "top-1", "NLL", "ECE", "AURC", "coverage@risk5%"], rows=rows))
        return out


_CARD_KEYS = ("top1", "nll", "ece", "aurc", "coverage@risk5%")


def _spec(member) -> dict:
    return {"name": member.name, "architecture": member.architecture, "num_classes": member.num_classes,
            "model_args": member.model_args, "pretrained_cfg": member.pretrained_cfg}


def _big_views(net, split, ctx) -> list[torch.Tensor]:
    """The frozen pre-trained model's views of every training image, computed once (in split order)."""
    import torch

    from zoo.plugins.levi.net import views
    from zoo.kit.train import to_device

    out: list[list[torch.Tensor]] = [[] for _ in range(net.levels)]
    task = ctx.progress.task("pre-trained views of the training images", total=-(-len(split) // ctx.batch_size))
    with torch.inference_mode():
        for images, _ in split.batches(ctx.batch_size):
            for level, v in enumerate(views(net.big, to_device(images, ctx.device), net.levels)):
                out[level].append(v.float().cpu())
            task.advance()
    task.close()
    return [torch.cat(v) for v in out]


def _levels_top1(net, split, ctx) -> list[float]:
    """Each adapting layer's own held-out top-1 (the prediction averages their logits)."""
    import torch

    from zoo.kit.train import to_device

    right = torch.zeros(net.levels)
    with torch.inference_mode():
        for images, labels in split.batches(ctx.batch_size):
            for level, lg in enumerate(net(to_device(images, ctx.device), per_level=True)):
                right[level] += (lg.argmax(1).cpu() == labels).sum()
    return (right / len(split)).tolist()


_USAGE = """A LEVI network: a pre-trained model and a small model trained from scratch, ensembled layer by layer
(not one timm architecture). It loads with zoo, from the folder or the Hub:

```python
import zoo
net = zoo.load("hf-hub:ORG/NAME")   # or the folder
logits = net(images)                # images: the pre-trained model's preprocessing (this repo's pretrained_cfg)
```"""
