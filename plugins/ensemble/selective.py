"""Selective classification and the cascade's exit windows, as Xia & Bouganis define them (ICCV 2023,
"Window-Based Early-Exit Cascades for Uncertainty Estimation"; code: Guoxoug/window-early-exit).

- **Score**, **risk–coverage curve**, **AURC**: as ``zoo.kit.measure.selective`` defines them (shared with every
  strategy that reports selective classification).
- **Operating threshold τ** on the validation data for a target:
  - ``risk@R``: the threshold whose risk is closest to R, ignoring the least-covered 1% of the curve,
    where the risk of a few samples is noise (the paper's code ignores the first 500 of ImageNet's
    50,000 validation images; 1% is that share, at least one sample);
  - ``coverage@C``: the threshold whose coverage is closest to C;
  - ``tpr@P`` (OOD detection at a true-positive rate on in-distribution data): the score that P of the
    validation samples reach, which is what the paper's ROC threshold amounts to, since the TPR depends
    on in-distribution scores alone.

  Where the paper's code takes ``thresholds[k]`` for the curve's k-th point (the score of the
  (k+1)-th sample), zoo takes the score of the k-th, so that "score ≥ τ" selects exactly k.
- **Window**: τ's quantile q among the validation scores, then the scores at quantiles q − w and q + w
  (the paper: w = 0.1, "10 percent either side of τ"). A sample whose score lies inside the window
  goes on to the next stage; above or below it, it exits. Where q − w < 0 or q + w > 1 the window is
  open on that side (the paper clamps to the lowest and highest score, which lets those two samples
  exit): an infinite window then sends every sample on, and the cascade is the full ensemble.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zoo
from zoo.kit.measure import risk_coverage, scores  # noqa: F401  (the cascade uses them as selective.*)

if TYPE_CHECKING:  # pragma: no cover
    import torch

_TARGET = re.compile(r"^(risk|coverage|tpr)@(\d+(?:\.\d+)?)%?$")


@dataclass(frozen=True)
class Target:
    kind: str  # risk, coverage or tpr
    value: float  # a fraction

    def __str__(self) -> str:
        return f"{self.kind}@{self.value * 100:g}%"


def parse_target(text: str) -> Target:
    m = _TARGET.match(text.strip())
    if not m:
        raise zoo.BadInput(f"option target={text!r}: write risk@5%, coverage@80% or tpr@95% (selective "
                           "classification at a risk or a coverage, or OOD detection at a true-positive rate)")
    value = float(m.group(2)) / 100
    if not 0 < value < 1:
        raise zoo.BadInput(f"option target={text!r}: the percentage must lie between 0 and 100")
    return Target(m.group(1), value)


def threshold(correct: torch.Tensor, score: torch.Tensor, target: Target) -> float:
    """τ for ``target`` on the validation data (see the module's docstring)."""
    import torch

    n = len(score)
    if target.kind == "tpr":
        return float(torch.quantile(score.double(), 1 - target.value))
    risk, coverage, ordered = risk_coverage(correct, score)
    if target.kind == "risk":
        skip = max(1, n // 100)
        reachable = risk[skip:]
        k = int(torch.argmin((reachable - target.value).abs())) + skip
        if float(reachable.min()) > target.value:
            best = int(torch.argmin(reachable)) + skip
            raise zoo.BadInput(f"option target={target}: no threshold reaches a risk of {target.value:.1%} on the "
                               f"validation data; the lowest risk it reaches is {float(risk[best]):.1%}, at coverage "
                               f"{float(coverage[best]):.1%} (and {float(risk[-1]):.1%} at full coverage)")
    else:
        k = int(torch.argmin((coverage - target.value).abs()))
    k = max(k, 1)
    return float(ordered[k - 1])


#: the window of ``window=0``: lower bound above upper bound, so no score lies inside and no sample goes on
EMPTY = (1.0, -1.0)


def window(score: torch.Tensor, tau: float, half_width: float) -> tuple[float | None, float | None]:
    """The scores at τ's quantile ∓ ``half_width``; None where the window is open on that side; EMPTY for 0."""
    import torch

    from scipy.stats import percentileofscore

    if half_width == 0:
        return EMPTY
    q = percentileofscore(score.double().numpy(), tau) / 100.0
    lo = None if (math.isinf(half_width) or q - half_width <= 0) else float(
        torch.quantile(score.double(), q - half_width))
    hi = None if (math.isinf(half_width) or q + half_width >= 1) else float(
        torch.quantile(score.double(), q + half_width))
    return lo, hi


def inside(score: torch.Tensor, bounds: tuple[float | None, float | None]) -> torch.Tensor:
    """Which samples go on: their score lies inside the window (bounds included, as the paper's exit
    test ``score > hi or score < lo`` leaves them; a window whose bounds are crossed, EMPTY, holds none)."""
    import torch

    lo, hi = bounds
    keep = torch.ones_like(score, dtype=torch.bool)
    if lo is not None:
        keep &= score >= lo
    if hi is not None:
        keep &= score <= hi
    return keep


def disagreement(predictions: list[torch.Tensor]) -> float:
    """The members' diversity: the share of samples on which two members' top-1 differ, averaged over
    every pair (reported, never optimised: "Pathologies of Predictive Diversity in Deep Ensembles")."""
    pairs = [(a, b) for i, a in enumerate(predictions) for b in predictions[i + 1:]]
    if not pairs:
        return 0.0
    return float(sum((a != b).double().mean() for a, b in pairs) / len(pairs))
