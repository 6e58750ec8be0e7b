"""``zoo select --validate``: how well did the metric rank the members? Ask a real linear probe.

Each member gets a linear probe — multinomial logistic regression (scikit-learn, L-BFGS) on its
standardised target features, the linear-probe protocol of the CLIP paper — scored on the
held-out ``--val-data``. Kendall's τ between metric score and probe accuracy says how well the
metric ranked them. With ``--ensemble`` the team's ensemble (mean of its probes' probabilities)
is scored too, next to the metric's top-k and the best single member.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PROBE_C = 1.0  # inverse L2 strength of the probe; features are standardised first
PROBE_MAX_ITER = 1000


def probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Class probabilities on ``val_x`` of a logistic-regression probe fit on ``train_x``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the accuracy is what is reported
        clf.fit(train_x, train_y)
    probs = np.zeros((len(val_x), int(train_y.max()) + 1))
    probs[:, clf.classes_] = clf.predict_proba(val_x)
    return probs


def kendall_tau(scores, accuracies) -> float:
    from scipy.stats import kendalltau

    if len(scores) < 2:
        return float("nan")
    return float(kendalltau(scores, accuracies).statistic)


def validate(members, views, rows, ranking, val_data: str, classes: list[str], device, *, batch_size: int,
             progress, team: dict[str, Any] | None) -> dict[str, Any]:
    from zoo.kit.measure.features import extract

    task = progress.task("linear probes", total=len(members))
    val_probs = {}
    val_labels = None
    for member, view, row in zip(members, views, rows):
        val = extract(member, val_data, classes, device, batch_size=batch_size, progress=progress)
        val_labels = val.labels.numpy()
        val_probs[row["spec"]] = probe(view.features, view.labels, val.features.double().numpy())
        row["probe_top1"] = float((val_probs[row["spec"]].argmax(1) == val_labels).mean())
        task.advance()
    task.close()
    scores = [r["score"] for r in ranking]
    accs = [r["probe_top1"] for r in ranking]
    out: dict[str, Any] = {"val_data": str(val_data), "tau": kendall_tau(scores, accs),
                           "best_by_probe": max(ranking, key=lambda r: r["probe_top1"])["spec"],
                           "best_by_metric": ranking[0]["spec"]}

    def ensemble_top1(specs) -> float:
        mean = np.mean([val_probs[s] for s in specs], axis=0)
        return float((mean.argmax(1) == val_labels).mean())

    if team is not None:
        k = team["k"]
        chosen = [s["spec"] for s in team["steps"]]
        for i, step in enumerate(team["steps"]):
            step["ensemble_probe_top1"] = ensemble_top1(chosen[:i + 1])
        by_probe = sorted(ranking, key=lambda r: -r["probe_top1"])
        out["ensembles"] = {
            "team": ensemble_top1(chosen),
            f"top-{k} by the metric": ensemble_top1([r["spec"] for r in ranking[:k]]),
            f"top-{k} by probe accuracy (oracle)": ensemble_top1([r["spec"] for r in by_probe[:k]]),
            "best single member (oracle)": by_probe[0]["probe_top1"],
        }
    return out
