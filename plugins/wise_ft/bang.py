"""BANG, balanced averaging (Lin et al., ICLR 2024, "Spurious Feature Diversification Improves OOD
Generalization"): WiSE-FT whose fine-tuned end is calibrated first.

WiSE-FT's weak spot is an over-confident fine-tuned end that dominates the average out of
distribution. BANG fine-tunes with label smoothing and/or Mixup, then interpolates. The
paper's exact ε, Mixup α and averaging α could not be confirmed, so all three are options
with defaults of our choosing (ε=0.1, Mixup α=0.2, α=0.5).

Given one member (the pretrained model) and ``--train-data``, the whole recipe runs: a
linear probe (the head-compatible start, θ₀), LP-FT with label smoothing and Mixup (θ₁),
then WiSE-FT between them. Given two members (a start and an already calibrated fine-tune),
only the averaging runs. ε=0 without Mixup is exactly WiSE-FT on an LP and an LP-FT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import zoo
from zoo.kit.card import Section
from zoo.kit.train import Recipe
from zoo.kit.strategy import compose, part
from zoo.plugins.wise_ft.sweep import WiseFT


class Bang(zoo.Strategy):
    name = "bang"
    summary = "balanced averaging: calibrate the fine-tune (label smoothing, Mixup), then WiSE-FT"
    min_members = 1

    @dataclass
    class Own:
        ft_bn: Literal["auto", "train", "frozen", "recompute"] = zoo.option(
            "auto", "BatchNorm statistics while fine-tuning, as zoo finetune --bn (auto: frozen)")

    #: the fine-tune's options are zoo finetune's (the recipe), the averaging's are wise-ft's
    Options = compose(
        (Recipe, ["label_smoothing", "mixup", "epochs", "lr", "lp_epochs"]), Own,
        (WiseFT.Options, ["alphas", "pick", "bn", "bn_batches"]),
        defaults={"label_smoothing": 0.1, "mixup": 0.2},
        helps={"label_smoothing": "label smoothing ε of the fine-tune (paper value unconfirmed)",
               "mixup": "Mixup α of the fine-tune, 0 for none (paper value unconfirmed)",
               "pick": "the averaging α: alpha=X (paper value unconfirmed), best-id, best-ood or best-avg, "
                       "as for wise-ft"})

    def combine(self, members, options, ctx: zoo.Context) -> zoo.Combined:
        if len(members) == 1:
            ends, config, training = _make_ends(members[0], options, ctx)
        elif len(members) == 2:
            ends, config, training = list(members), None, {}
            ctx.log("bang: two members given: averaging only (the second should be a calibrated fine-tune "
                    "of the first)")
        else:
            raise zoo.BadInput(f"bang takes one member (the pretrained model: the whole recipe runs) or two (a start "
                               f"and its calibrated fine-tune: only the averaging); got {len(members)}")
        wise = part(options, WiseFT.Options, fisher=False)
        result = WiseFT().combine(ends, wise, ctx)
        result.config = config
        sweep = {p["alpha"]: p for p in result.report["sweep"] if p.get("kept")}
        result.report["bang"] = {"made_ends": len(members) == 1, "label_smoothing": options.label_smoothing,
                                 "mixup": options.mixup, "training": training}
        if 0.0 in sweep and 1.0 in sweep and "ood_top1" in sweep[0.0]:
            result.card_sections.insert(0, _ends_section(sweep[0.0], sweep[1.0], result.report["picked_alpha"],
                                                         sweep.get(result.report["picked_alpha"])))
        return result


def _make_ends(member, options, ctx: zoo.Context):
    """θ₀: a linear probe of ``member``; θ₁: LP-FT with label smoothing and Mixup. In memory."""
    from zoo.kit.train import Recipe, class_names, fit

    if not ctx.train_data:
        raise zoo.BadInput("bang with one member trains both ends: pass --train-data (or give two members, a start "
                           "and its calibrated fine-tune, to only average them)")
    classes = class_names(ctx.train_data)
    train = ctx.split("train", member, labels=classes)
    lp = Recipe(mode="lp", lp_epochs=options.lp_epochs, seed=ctx.seed)
    ft = Recipe(mode="lp-ft", lp_epochs=options.lp_epochs, epochs=options.epochs, lr=options.lr,
                label_smoothing=options.label_smoothing, mixup=options.mixup, bn=options.ft_bn, seed=ctx.seed)
    ends, training = [], {}
    for name, recipe in (("linear-probe", lp), ("calibrated-fine-tune", ft)):
        sd, config, history = fit(member, train, classes, recipe, ctx.device, progress=ctx.progress, log=ctx.log)
        ends.append(zoo.Member.in_memory(f"{member.name}:{name}", sd, config=config, spec=f"bang {name} of {member.spec}",
                                         like=member))
        training[name] = history
    return ends, ends[0].config, training


def _ends_section(start: dict, tuned: dict, picked: float, chosen: dict | None) -> Section:
    rows = [("α=0 (linear probe)", start), ("α=1 (calibrated fine-tune)", tuned)]
    if chosen is not None and picked not in (0.0, 1.0):
        rows.append((f"α={picked:g} (output)", chosen))
    return Section(
        "BANG: the ends on shifted data", "An over-confident fine-tuned end (confidence well above its accuracy, "
        "high ECE) dominates a weight average; BANG calibrates it before averaging.",
        columns=["", "shifted top-1", "mean confidence", "ECE"],
        rows=[[label, p["ood_top1"], p["ood_confidence"], p["ood_ece"]] for label, p in rows])
