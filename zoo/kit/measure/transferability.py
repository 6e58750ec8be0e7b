"""The transferability-metric contract: what a metric receives and what it returns.

A metric scores how well a member suits a target task from one forward pass over the
target data, without fine-tuning it; higher is better. Plugins add metrics through the
``zoo_transferability_metrics`` hook, built-in ones (``zoo.plugins.transfer.metrics``,
``zoo.plugins.transfer.team``) come the very same way::

    import zoo

    def mean_margin(t: zoo.TargetView) -> float:
        top2 = np.sort(t.probs, axis=1)[:, -2:]
        return float((top2[:, 1] - top2[:, 0]).mean())

    @zoo.hookimpl
    def zoo_transferability_metrics():
        return [zoo.TransferMetric("margin", "mean top-1 minus top-2 source probability",
                                   mean_margin, needs="predictions")]

A ``kind="member"`` metric is ``fn(view) -> float``; a ``kind="team"`` metric scores a
set of members, ``fn(views, weights) -> float``, where ``weights`` are the user's
``--weight NAME=VALUE`` settings (the metric documents which it reads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np

from zoo.kit.strategy.errors import BadInput


@dataclass
class TargetView:
    """One member's view of the target data: float64 arrays, rows in the same order for every member."""

    member: str
    features: np.ndarray  # (N, D) pooled pre-logits features
    probs: np.ndarray | None  # (N, Z) softmax over the member's own (source) classes; None without a head
    labels: np.ndarray  # (N,) target class indices 0..C-1
    num_classes: int  # C, the number of target classes
    source_features: np.ndarray | None = None  # (M, D) the member's features of its own training data, if known
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TransferMetric:
    """A named transferability score; higher means the member (or team) should transfer better."""

    name: str
    summary: str
    fn: Callable[..., float]
    needs: Literal["features", "predictions", "both"] = "features"
    kind: Literal["member", "team"] = "member"
    #: the paper or code the definition follows, shown by ``zoo select --list-metrics``
    reference: str = ""


def check_views(views: list[TargetView]) -> None:
    """Refuse target data or features no metric can score: one class, NaN or constant features."""
    for v in views:
        if v.num_classes < 2 or len(np.unique(v.labels)) < 2:
            raise BadInput(f"target data has {len(np.unique(v.labels))} class(es); transferability needs at "
                           "least two labelled classes (one sub-folder per class)")
        if not np.isfinite(v.features).all():
            raise BadInput(f"member {v.member}: its features on the target data contain NaN or infinity; "
                           "check the member's weights (zoo eval MEMBER --data ...)")
        if np.ptp(v.features, axis=0).max() == 0:
            raise BadInput(f"member {v.member}: its features are identical for every target image, so no "
                           "metric can rank it; check its weights and preprocessing")
        if v.probs is not None and not np.isfinite(v.probs).all():
            raise BadInput(f"member {v.member}: its predictions on the target data contain NaN or infinity")
