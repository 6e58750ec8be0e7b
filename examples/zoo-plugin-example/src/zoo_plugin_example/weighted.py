"""Metrics-weighted averaging: members weighted by softmax(held-out accuracy / temperature)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import zoo
from zoo.kit.card import Section
from zoo.kit.tensors import check_compatible, weighted_sum


class WeightedSoup(zoo.Strategy):
    name = "weighted-soup"
    summary = "average members weighted by their held-out accuracy (softmax with a temperature)"
    min_members = 2

    @dataclass
    class Options:
        temperature: float = zoo.option(0.01, "softmax temperature on top-1 accuracy; large = uniform", min=1e-6)

    def combine(self, members, options, ctx):
        check_compatible(members)
        scores = [ctx.evaluate(m).top1 for m in members]
        top = max(scores)
        raw = [math.exp((s - top) / options.temperature) for s in scores]
        coeffs = [r / sum(raw) for r in raw]
        state = weighted_sum(members, coeffs, progress=ctx.progress)
        return zoo.Combined(
            state_dict=state,
            report={"coefficients": dict(zip([m.name for m in members], coeffs))},
            card_sections=[Section("Weights", "Each member's weight and held-out top-1:",
                                   columns=["member", "weight", "top-1"],
                                   rows=[[m.name, c, s] for m, c, s in zip(members, coeffs, scores)])],
        )


@zoo.hookimpl
def zoo_strategies():
    return [WeightedSoup]
