"""Built-in team metrics for ``zoo select --ensemble``: OSBORN, and MS-LEEP / E-LEEP as baselines.

OSBORN ("Building a Winning Team", ICCV 2023) scores a *set* of members by three terms.
The paper's exact weights could not be recovered, so each term is computed as below and
weighted by an option (``--weight domain=1 --weight task=1 --weight cohesion=1``):

- domain difference D_m: the optimal-transport cost (POT's exact ``ot.emd``) between the
  member's features of its own training data and of the target data, as OTCE does, divided
  by the pooled features' mean squared pairwise distance so members of different
  architectures compare (0: same distribution). Needs the members' source data
  (``sources`` in a zoo file, or ``--source-data``); without it for every member the term is 0.
- task difference T_m: the conditional entropy H(Y_target | Y_source) / log C. With source
  data, the joint of source and target labels comes from the OT coupling (OTCE); without,
  from the member's own softmax on the target images (the joint LEEP builds).
- cohesiveness C(S): the mean over pairs of members of their expected agreement on the target
  labels, Σ_y p_a(y|x) p_b(y|x) averaged over the target images, where p is each member's
  expected empirical predictor (LEEP's EEP): members that agree make a confident ensemble.

OSBORN(S) = −w_d·mean_m D_m − w_t·mean_m T_m + w_c·C(S); higher is better.
"""

from __future__ import annotations

import math

import numpy as np

import zoo
from zoo.plugins.transfer.metrics import joint_distribution, conditional_entropy, eep

OT_SAMPLES = 512  # per side: exact OT on 512×512 costs milliseconds
E_LEEP_MAX_JOINT = 4096  # largest joint source-label space E-LEEP builds (N × this float64)
OSBORN_WEIGHTS = {"domain": 1.0, "task": 1.0, "cohesion": 1.0}


def _subsample(x: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(len(x)) if len(x) <= n else np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
    return x[idx], idx


def domain_and_coupling(view) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """D_m and the OT coupling between (subsampled) source and target features, with the rows kept."""
    import ot

    src, src_idx = _subsample(view.source_features, OT_SAMPLES, seed=0)
    tgt, tgt_idx = _subsample(view.features, OT_SAMPLES, seed=1)
    pooled = np.concatenate([src, tgt])
    spread = 2 * pooled.var(axis=0).sum()  # mean squared distance between two pooled points
    cost = ot.dist(src, tgt, metric="sqeuclidean") / max(spread, np.finfo(np.float64).tiny)
    a, b = np.full(len(src), 1 / len(src)), np.full(len(tgt), 1 / len(tgt))
    plan = ot.emd(a, b, cost)
    return float((plan * cost).sum()), plan, src_idx, tgt_idx


def task_difference(view, coupling=None) -> float:
    """H(Y_target | Y_source) / log C: 0 when the target label is a function of the source label."""
    if coupling is not None:
        plan, src_idx, tgt_idx = coupling
        ys, yt = view.extra["source_labels"][src_idx], view.labels[tgt_idx]
        joint = np.eye(int(ys.max()) + 1)[ys].T @ plan @ np.eye(view.num_classes)[yt]  # P(y_s, y_t)
    else:
        if view.probs is None:
            raise zoo.BadInput(f"member {view.member}: it has no classifier head, so OSBORN's task term needs its "
                               "source data (sources in the zoo file, or --source-data)")
        joint = joint_distribution(view.probs, view.labels, view.num_classes).T  # P(z, y), as LEEP builds it
    return conditional_entropy(joint) / math.log(view.num_classes)


def member_terms(view) -> dict[str, float]:
    """The per-member OSBORN terms, cached on the view (a greedy search asks for them many times)."""
    if "osborn" not in view.extra:
        if view.source_features is not None:
            d, plan, si, ti = domain_and_coupling(view)
            terms = {"domain": d, "task": task_difference(view, (plan, si, ti))}
        else:
            terms = {"domain": 0.0, "task": task_difference(view)}
        view.extra["osborn"] = terms
    return view.extra["osborn"]


def _eep_of(view) -> np.ndarray:
    if "eep" not in view.extra:
        view.extra["eep"] = eep(view.probs, view.labels, view.num_classes)
    return view.extra["eep"]


def cohesion(views) -> float:
    """Mean pairwise expected agreement of the members' EEP target predictions (0 for one member)."""
    pairs = [(a, b) for i, a in enumerate(views) for b in views[i + 1:]]
    if not pairs:
        return 0.0
    return float(np.mean([(_eep_of(a) * _eep_of(b)).sum(axis=1).mean() for a, b in pairs]))


def osborn(views, weights: dict[str, float]) -> float:
    w = {**OSBORN_WEIGHTS, **weights}
    terms = [member_terms(v) for v in views]
    return (-w["domain"] * float(np.mean([t["domain"] for t in terms]))
            - w["task"] * float(np.mean([t["task"] for t in terms]))
            + w["cohesion"] * cohesion(views))


def ms_leep(views, weights: dict[str, float]) -> float:
    """MS-LEEP: mean log-likelihood of the target labels under the average of the members' EEPs."""
    labels = views[0].labels
    avg = np.mean([_eep_of(v) for v in views], axis=0)
    return float(np.mean(np.log(avg[np.arange(len(labels)), labels])))


def _top_sources(probs: np.ndarray, keep: int) -> np.ndarray:
    """The source softmax with all but its ``keep`` most used classes merged into one 'other' column."""
    if probs.shape[1] <= keep:
        return probs
    top = np.argsort(-probs.sum(axis=0))[:keep - 1]
    rest = np.delete(probs, top, axis=1).sum(axis=1, keepdims=True)
    return np.concatenate([probs[:, top], rest], axis=1)


def e_leep(views, weights: dict[str, float]) -> float:
    """E-LEEP: LEEP over the joint source-label space, θ(z₁..z_K) = Π_k θ_k(z_k).

    When the joint space would exceed 4096 labels, each member keeps its most used source classes
    (the rest merged into one), so the joint stays within it.
    """
    keep = max(2, int(math.floor(E_LEEP_MAX_JOINT ** (1 / len(views)))))
    joint = None
    for v in views:
        p = _top_sources(v.probs, keep)
        joint = p if joint is None else (joint[:, :, None] * p[:, None, :]).reshape(len(p), -1)
    labels = views[0].labels
    pred = eep(joint, labels, views[0].num_classes)
    return float(np.mean(np.log(pred[np.arange(len(labels)), labels])))


TEAM_METRICS = [
    zoo.TransferMetric("osborn", "domain difference (OT), task difference, cohesiveness; weights as options",
                       osborn, needs="both", kind="team", reference="K B et al., ICCV 2023 (weights not recovered)"),
    zoo.TransferMetric("ms-leep", "LEEP of the averaged members' expected empirical predictors", ms_leep,
                       needs="predictions", kind="team", reference="Agostinelli et al. 2022"),
    zoo.TransferMetric("e-leep", "LEEP over the members' joint source-label space", e_leep,
                       needs="predictions", kind="team", reference="Agostinelli et al. 2022"),
]
