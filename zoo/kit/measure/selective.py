"""Selective classification metrics: how well a model's confidence separates its right answers from its wrong
ones (Geifman & El-Yaniv 2017; the definitions of Xia & Bouganis, ICCV 2023, whose code is
Guoxoug/window-early-exit).

- **Score**: the confidence a model's softmax has in its prediction: the maximum softmax probability
  (``msp``), or minus the entropy of the softmax (``entropy``); higher is more confident.
- **Risk–coverage curve**: samples sorted by score, most confident first; at coverage k/N the risk is
  the error rate of the k most confident (risk 0 at coverage 0). AURC is its area.
- **Coverage at a risk**: the largest coverage whose risk is at most the target.

Every strategy that reports these (ensembles, cascades, LEVI) computes them here, through
:func:`selective_metrics`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: the risk at which coverage is reported when a strategy has no target of its own
DEFAULT_RISK = 0.05


def scores(probs: torch.Tensor, kind: str = "msp") -> torch.Tensor:
    """The confidence of each row of ``probs`` (softmax outputs): higher is more confident."""
    if kind == "msp":
        return probs.max(dim=1).values
    p = probs.double().clamp_min(1e-12)
    return (p * p.log()).sum(dim=1).to(probs.dtype)  # −entropy


def risk_coverage(correct: torch.Tensor, score: torch.Tensor):
    """(risk, coverage) at every coverage 0, 1/N … 1 (length N + 1), and the sorted scores (length N)."""
    import torch

    order = score.argsort(descending=True)
    wrong = (~correct.bool())[order].double()
    n = len(score)
    risk = torch.cat([torch.zeros(1, dtype=torch.float64), wrong.cumsum(0) / torch.arange(1, n + 1)])
    coverage = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    return risk, coverage, score[order]


def aurc(correct: torch.Tensor, score: torch.Tensor) -> float:
    """The area under the risk–coverage curve (trapezoids over coverage 0 … 1)."""
    import torch

    risk, coverage, _ = risk_coverage(correct, score)
    return float(torch.trapezoid(risk, coverage))


def coverage_at_risk(correct: torch.Tensor, score: torch.Tensor, risk_target: float) -> float:
    """The largest coverage whose risk is at most ``risk_target`` (0 when none, coverage 0 aside)."""
    risk, coverage, _ = risk_coverage(correct, score)
    ok = (risk[1:] <= risk_target + 1e-12).nonzero()
    return float(coverage[1:][ok[-1]].item()) if len(ok) else 0.0


def selective_metrics(probs: torch.Tensor, targets: torch.Tensor, risk: float = DEFAULT_RISK) -> dict[str, float]:
    """AURC and the coverage at ``risk`` of softmax outputs ``probs`` (maximum-softmax scores)."""
    correct = probs.argmax(1).eq(targets)
    score = scores(probs)
    return {"aurc": aurc(correct, score), f"coverage@risk{risk * 100:g}%": coverage_at_risk(correct, score, risk)}
