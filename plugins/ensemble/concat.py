"""``--strategy concat``: the members' pooled features concatenated, one linear head trained on
``--train-data`` with the members frozen (Zhang & Bottou, "Learning useful representations for shifting tasks
and distributions", 2023: several independently trained networks' representations side by side, one linear
head on top, transfer better under shift than one network).

The head is ``zoo finetune --mode lp``'s linear probe (``zoo.kit.train.probe_head``: ``lp_epochs`` at
``lp_lr``, constant, on features computed once), started the way that probe starts a new head (the seed, then
the members built, then a fresh ``nn.Linear``): with one member whose classes differ from the data's, the
output is that member's linear probe. Members may differ in architecture, input size and label space (each
preprocesses its own way; only their features are read); the head's classes are ``--train-data``'s, and
held-out or shifted data must name no other.

On ``--eval-data`` and ``--ood-data`` the card reports the output beside each member's own linear probe,
trained the same way on its part of the same features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import zoo
from zoo.kit.strategy import compose, part
from zoo.kit.train import Recipe, state_on_cpu


class Concat(zoo.Strategy):
    name = "concat"
    member_formats = ("timm",)  # reads timm's pre-logits features: other formats are converted first
    summary = "members' pooled features side by side, one linear head trained on --train-data (Zhang & Bottou 2023)"
    min_members = 1
    needs = ("train",)
    relation = "finetune"

    @dataclass
    class Own:
        pass

    Options = compose(Own, (Recipe, ["lp_epochs", "lp_lr", "batch_size", "weight_decay"]),
                      helps={"lp_epochs": "epochs of the head (on features computed once)",
                             "lp_lr": "the head's learning rate (constant)",
                             "batch_size": "batch size of the head's training",
                             "weight_decay": "AdamW weight decay of the head"})

    def combine(self, members, options, ctx):
        import torch

        from zoo.kit.data import data_config
        from zoo.kit.train import class_names, probe_head
        from zoo.plugins.ensemble import concat_net
        from zoo.plugins.ensemble.module import member_config
        from zoo.plugins.ensemble.strategy import _shared_input

        classes = class_names(ctx.train_data)
        recipe = part(options, Recipe, seed=ctx.seed)
        torch.manual_seed(ctx.seed)  # as zoo finetune: the seed, the models, then the new head
        models = [concat_net.headless(m.create_model()) for m in members]
        cfgs = [data_config(m.pretrained_cfg) for m in members]
        dims = [_width(model, cfg) for model, cfg in zip(models, cfgs)]
        net = concat_net.ConcatNet(models, cfgs, dims, len(classes)).to(ctx.device).eval()
        shared = _shared_input(members)
        train = ctx.split("train", shared, labels=classes)
        feats = _features(net, train, ctx, "the members' features of the training images")
        history = probe_head(net.head, feats, train.targets, recipe, ctx.device, ctx.progress)
        probes = []  # each member alone: its own linear probe on its part of the same features
        for lo, hi in _slices(dims):
            probe = torch.nn.Linear(hi - lo, len(classes)).to(ctx.device)
            probe_head(probe, feats[:, lo:hi], train.targets, recipe, ctx.device, ctx.progress)
            probes.append(probe)

        report = {"classes": classes, "dims": dims, "history": history, "head": asdict(recipe)}
        rows, metrics = [], None
        for kind, source in (("eval", ctx.eval_data), ("ood", ctx.ood_data)):
            if not source:
                continue
            where = "held-out" if kind == "eval" else "shifted"
            held = ctx.split(kind, shared, labels=classes)
            f = _features(net, held, ctx, f"the members' features of the {where} images")
            with torch.inference_mode():
                measured = ctx.metrics_of(net.head(f).float().cpu(), held.targets).as_dict()
                alone = {m.name: ctx.metrics_of(p(f[:, lo:hi]).float().cpu(), held.targets).as_dict()
                         for m, p, (lo, hi) in zip(members, probes, _slices(dims))}
            report[f"{kind}_members_alone"] = alone
            rows.append([where, "concat", sum(dims), measured["top1"], measured["nll"], measured["ece"]])
            rows += [[where, f"{name} alone", d, a["top1"], a["nll"], a["ece"]]
                     for (name, a), d in zip(alone.items(), dims)]
            if kind == "eval":
                metrics = measured
            else:
                report["ood"] = measured
        config = concat_net.to_config(net, [member_config(m) for m in members], pretrained_cfg=shared,
                                      label_names=classes)
        out = zoo.Combined(state_dict=state_on_cpu(net), config=config, metrics=metrics, report=report, usage=_USAGE)
        if rows:
            from zoo.kit.card import Section

            out.card_sections.append(Section(
                "Concatenated features: measured",
                "The output (every member's pooled features side by side, one linear head) beside each member "
                "alone: a linear probe of its own features, trained the same way on the same images.",
                columns=["data", "model", "features", "top-1", "NLL", "ECE"], rows=rows))
        return out


def _width(model, cfg) -> int:
    """The width of ``model``'s pooled pre-logits features (one forward pass of a blank image)."""
    import torch

    with torch.no_grad():
        x = torch.zeros(1, *cfg["input_size"])
        return int(model.eval().forward_head(model.forward_features(x), pre_logits=True).flatten(1).shape[1])


def _slices(dims: list[int]) -> list[tuple[int, int]]:
    ends = [sum(dims[:i + 1]) for i in range(len(dims))]
    return [(end - d, end) for end, d in zip(ends, dims)]


def _features(net, split, ctx, what: str):
    """``net``'s concatenated features of every image of ``split`` (in order), on the device."""
    import torch

    from zoo.kit.train import to_device

    out = []
    task = ctx.progress.task(what, total=-(-len(split) // ctx.batch_size))
    with torch.inference_mode():
        for images, _ in split.batches(ctx.batch_size):
            out.append(net.features(to_device(images, ctx.device)).float())
            task.advance()
    task.close()
    return torch.cat(out)


_USAGE = """The members' pooled features side by side and one linear head (not one timm architecture). It loads
with zoo, from the folder or the Hub:

```python
import zoo
net = zoo.load("hf-hub:ORG/NAME")   # or the folder
logits = net(images)                # images: this repo's pretrained_cfg (each member normalises its own way)
```"""
