"""Stitching (SN-Net, Pan et al. CVPR 2023): one network that runs at many accuracy–cost points.

The members are the anchors: one family (timm VisionTransformer, or EfficientNet) at several
widths and depths, one label space. zoo orders them small to large by parameter count, enumerates
the configurations (``zoo.plugins.stitch.snnet``: window 2, stride 1, nearest pairs), initialises every stitching
layer by least squares on one batch of ``--train-data``, then trains everything with one
configuration drawn uniformly per batch (AdamW, lr 5e-5, cosine). Every configuration's FLOPs
(``torch.utils.flop_counter``) and parameters are counted, and with ``--eval-data`` its held-out
accuracy measured. The output loads with ``zoo.load(FOLDER)``; ``zoo stitch list`` and
``zoo stitch export`` read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import zoo
from zoo.kit.data import common_labels
from zoo.kit.train import state_on_cpu



class Stitch(zoo.Strategy):
    name = "stitch"
    member_formats = ("timm",)  # reaches into timm's modules: other formats are converted first
    summary = "stitch a model family (small → large) into one network with many accuracy–FLOPs configurations (SN-Net)"
    min_members = 2

    @dataclass
    class Options:
        window: int = zoo.option(2, "stitching window over paired block ids (SN-Net: 2); the stitches inside one "
                                 "window share a stitching layer", min=1)
        stride: int = zoo.option(1, "stride of the window (SN-Net: 1)", min=1)
        epochs: int = zoo.option(3, "training epochs after the least-squares init (0: the init alone)", min=0)
        lr: float = zoo.option(5e-5, "AdamW learning rate (SN-Net: 5e-5), cosine schedule", min=0.0)
        weight_decay: float = zoo.option(0.05, "AdamW weight decay (DeiT's recipe, which SN-Net trains with)", min=0.0)
        batch_size: int = zoo.option(64, "training batch size; one configuration is drawn per batch", min=1)
        label_smoothing: float = zoo.option(0.1, "label smoothing of the training loss", min=0.0, max=1.0)
        init_images: int = zoo.option(100, "images in the one batch the stitching layers are solved on (SN-Net: 100)",
                                      min=1)
        input_size: int = zoo.option(0, "the side every configuration sees (0: the smallest anchor's, from its "
                                     "pretrained config); one input feeds every configuration", min=0)
        bn: Literal["frozen", "train"] = zoo.option(
            "frozen", "CNN anchors: frozen keeps BatchNorm statistics (a layer shared by many configurations "
            "would otherwise average the statistics of all of them); train updates them")

    def combine(self, members, options, ctx):
        from zoo.plugins.stitch import io as snnet_io
        from zoo.plugins.stitch import loop as stitch_loop
        from zoo.plugins.stitch.snnet import SNNet

        if ctx.world_size > 1:
            raise zoo.BadInput("strategy 'stitch' trains in one process; run it without torchrun")
        if not ctx.train_data:
            raise zoo.BadInput("strategy 'stitch' needs --train-data DIR: the stitching layers are solved on one batch "
                               "of it and trained on it (one sub-folder of images per class)")
        labels = common_labels(members, role="anchors", why="every configuration ends in one anchor's head, so "
                               "stitch members of one task (fine-tune them on it first: zoo finetune)")
        pretrained_cfg = _shared_preprocessing(members, options.input_size)
        models = [m.create_model() for m in members]
        order = sorted(range(len(members)), key=lambda i: sum(p.numel() for p in models[i].parameters()))
        members, models = [members[i] for i in order], [models[i] for i in order]
        input_size = tuple(pretrained_cfg["input_size"])
        net = SNNet.build(models, [m.name for m in members], input_size=input_size, window=options.window,
                          stride=options.stride)
        ctx.log("anchors, small to large: " + ", ".join(m.name for m in members))
        stitched = sum(c.stitched for c in net.configs)
        ctx.log(f"{len(net.configs)} configurations: {len(members)} anchors and {stitched} stitches over "
                f"{len(net.stitch)} stitching layers")
        run = stitch_loop.Run(net=net, members=members, labels=labels, pretrained_cfg=pretrained_cfg,
                              options=options, ctx=ctx)
        history, residual = stitch_loop.train(run)
        net.count_flops(input_size, progress=ctx.progress)
        report = {"anchors": [m.name for m in members], "init_residual": residual, "history": history,
                  "input_size": list(input_size)}
        metrics = None
        if ctx.eval_data:
            measured = stitch_loop.evaluate(run)
            ctx.log(f"held-out figures below are configuration {net.active}'s (the default) of {len(net.configs)}; "
                    "`zoo stitch list OUT` shows them all")
            metrics = {**measured[net.active].as_dict(), "default_config": net.active,
                       "configurations": len(net.configs),
                       "pareto_configurations": len(stitch_loop.pareto(net))}
        config = snnet_io.to_config(net, anchors=[snnet_io.anchor_config(m) for m in members],
                                    pretrained_cfg=pretrained_cfg, label_names=labels)
        combined = zoo.Combined(state_dict=state_on_cpu(net), config=config,
                                metrics=metrics, report=report, usage=_USAGE)
        if ctx.eval_data:
            combined.figures["frontier.png"] = stitch_loop.plot_frontier(net)
        if history:
            from zoo.kit.card import training_curves

            combined.figures["training.png"] = training_curves(history)
        combined.card_sections.append(stitch_loop.card_section(net))
        return combined


_USAGE = """A stitched network (SN-Net): not one timm architecture but several anchors joined by stitching
layers, so it loads with zoo and runs at any of its configurations:

```python
import zoo
net = zoo.load("hf-hub:ORG/NAME")   # or the folder
net.select(max_gflops=0.3)          # the most accurate configuration within a budget (or by id: net.select(17))
logits = net(images)
```

`zoo stitch export FOLDER --config ID --out one/` writes one configuration alone (an anchor as an ordinary
timm folder)."""


def _shared_preprocessing(members, input_size: int) -> dict:
    """One preprocessing for every configuration: the anchors' (which must agree on mean, std and
    interpolation) at ``input_size`` (default: the smallest input any anchor was trained at)."""
    from zoo.kit.data import data_config

    cfgs = [data_config(m.pretrained_cfg) for m in members]
    for m, c in zip(members[1:], cfgs[1:]):
        for key in ("mean", "std"):
            if tuple(c[key]) != tuple(cfgs[0][key]):
                raise zoo.BadInput(f"anchors {members[0].name} and {m.name} normalise images differently ({key} "
                                   f"{tuple(cfgs[0][key])} vs {tuple(c[key])}); one input feeds every configuration, "
                                   "so stitch anchors of one family")
    side = input_size or min(c["input_size"][-1] for c in cfgs)
    base = min(zip(members, cfgs), key=lambda mc: mc[1]["input_size"][-1])[0].pretrained_cfg
    base = {k: v for k, v in base.items() if k not in ("test_input_size", "test_crop_pct")}
    return {**base, "input_size": [3, side, side]}
