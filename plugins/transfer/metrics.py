"""Built-in transferability metrics of one member: LogME, LEEP, NCE, H-score (plain and shrinkage), GBC.

Each follows its paper's definition as docs/algorithms.md states it; all work in float64 and
return a score where higher means "should transfer better". Registered through the
``zoo`` entry-point group exactly like an outside plugin.
"""

from __future__ import annotations

import math

import numpy as np

import zoo


EPS = 1e-5  # LogME's guard in the fixed-point updates (thuml/LogME)
GBC_DIMS = 64
GBC_VAR_FLOOR = 1e-4


def joint_distribution(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """P(y, z) = (1/N) Σ_{i: y_i = y} θ_i(z), shape (C, Z)."""
    onehot = np.zeros((len(labels), num_classes))
    onehot[np.arange(len(labels)), labels] = 1.0
    return onehot.T @ probs / len(labels)


# ---- LogME (You et al. 2021) -------------------------------------------------------------------
def _spectrum(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """σ = the squared singular values of f (its rank's worth) and u, f's left singular vectors (N × rank).

    From the eigendecomposition of the smaller Gram matrix (fᵀf or ffᵀ) rather than an SVD of f:
    the same quantities, several times faster for the N ≈ D shapes zoo select meets. Directions with
    σ ≤ σ_max·max(N, D)·eps are dropped (the rank of f, as numpy's matrix_rank decides it).
    """
    n, d = f.shape
    gram = f.T @ f if n > d else f @ f.T
    sigma, vec = np.linalg.eigh(gram)
    keep = sigma > sigma.max() * max(n, d) * np.finfo(np.float64).eps
    sigma, vec = sigma[keep], vec[:, keep]
    return sigma, (f @ vec) / np.sqrt(sigma) if n > d else vec


def logme(t) -> float:
    """Mean over target classes of the maximum log evidence of a Bayesian linear model on the features.

    As thuml/LogME computes it: log det sums over f's nonzero singular values, so with fewer images
    than feature dimensions the zero directions' (D − N)/2·log α is left out of the exact evidence.
    """
    f = np.asarray(t.features, dtype=np.float64)
    n, d = f.shape
    sigma, u = _spectrum(f)
    scores = []
    for c in range(t.num_classes):
        y = (t.labels == c).astype(np.float64)
        x2 = (u.T @ y) ** 2
        res_x2 = (y ** 2).sum() - x2.sum()
        alpha = beta = 1.0
        for _ in range(11):
            tau = alpha / beta
            gamma = (sigma / (sigma + tau)).sum()
            m2 = (sigma * x2 / (tau + sigma) ** 2).sum()
            res2 = (x2 / (1 + sigma / tau) ** 2).sum() + res_x2
            alpha = gamma / (m2 + EPS)
            beta = (n - gamma) / (res2 + EPS)
            evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta)
                        - 0.5 * np.log(alpha + beta * sigma).sum()
                        - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi)) / n
            if abs(alpha / beta - tau) / tau <= 1e-3:
                break
        scores.append(evidence)
    return float(np.mean(scores))


# ---- LEEP (Nguyen et al. 2020) and NCE (Tran et al. 2019) ----------------------------------------
def eep(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The expected empirical predictor: (N, C) target-class probabilities Σ_z P(y|z) θ_i(z)."""
    joint = joint_distribution(probs, labels, num_classes)
    cond = joint / np.maximum(joint.sum(axis=0, keepdims=True), np.finfo(np.float64).tiny)  # P(y|z)
    return probs @ cond.T


def leep(t) -> float:
    """Mean log-likelihood of the target labels under the EEP built from the member's source softmax."""
    pred = eep(t.probs, t.labels, t.num_classes)
    return float(np.mean(np.log(pred[np.arange(len(t.labels)), t.labels])))


def conditional_entropy(joint: np.ndarray) -> float:
    """H(Y | Z) in nats for a joint P(z, y) given as a (Z, C) array summing to 1."""
    pz = joint.sum(axis=1, keepdims=True)
    nz = joint > 0
    return float(-(joint[nz] * np.log((joint / np.where(pz > 0, pz, 1.0))[nz])).sum())


def nce(t) -> float:
    """Negative conditional entropy −H(Y|Z) of target labels given the member's argmax source label."""
    hard = np.eye(t.probs.shape[1])[np.asarray(t.probs).argmax(axis=1)]
    return -conditional_entropy(joint_distribution(hard, t.labels, t.num_classes).T)


# ---- H-score (Bao et al. 2019) and its shrinkage version (Ibrahim et al. 2022) -------------------
def hscore(t) -> float:
    """tr(cov(f)⁺ cov(g)), g = the class-conditional mean of f; unbiased covariances.

    Computed without a D×D pseudo-inverse: with f centred as U S Vᵀ and P the class-averaging
    operator (g = P f), tr(cov(f)⁺ cov(g)) = tr(V S⁻² Vᵀ fᵀPᵀP f) = ‖P U‖²_F = Σ_c n_c ‖mean of U's
    rows in class c‖² — the (N−1) factors cancel. Equal to the pinv formula (tested) and much faster.
    """
    f = np.asarray(t.features, dtype=np.float64)
    _, u = _spectrum(f - f.mean(axis=0))
    return float(sum((t.labels == c).sum() * (u[t.labels == c].mean(axis=0) ** 2).sum()
                     for c in np.unique(t.labels)))


def hscore_shrinkage(t) -> float:
    """H-score with cov(f) shrunk by Ledoit–Wolf: tr(Σ_α⁺ (1−α) cov(g)); stable when D is near N."""
    from sklearn.covariance import LedoitWolf

    from scipy.linalg import cho_factor, cho_solve

    f = np.asarray(t.features, dtype=np.float64)
    lw = LedoitWolf(assume_centered=False, store_precision=False).fit(f)  # its precision (a pinv) is unused
    # cov(g) (biased, as sklearn's Σ) = Σ_c p_c (μ_c − μ)(μ_c − μ)ᵀ, so tr(Σ⁻¹ cov g) = Σ_c p_c mᵀ Σ⁻¹ m:
    # a Cholesky solve against C vectors (Σ_α is positive definite) instead of a D×D pseudo-inverse
    classes, counts = np.unique(t.labels, return_counts=True)
    means = np.stack([f[t.labels == c].mean(axis=0) for c in classes]) - f.mean(axis=0)
    solved = cho_solve(cho_factor(lw.covariance_), means.T)
    return float((1 - lw.shrinkage_) * ((counts / len(f)) * (means.T * solved).sum(axis=0)).sum())


# ---- GBC (Pandy et al. 2022) ----------------------------------------------------------------------
def bhattacharyya_spherical(mu1, var1, mu2, var2, dims: int) -> float:
    """Bhattacharyya distance between N(μ1, var1·I) and N(μ2, var2·I) in ``dims`` dimensions."""
    var = (var1 + var2) / 2
    return float(((mu1 - mu2) ** 2).sum() / (8 * var) + dims / 2 * math.log(var / math.sqrt(var1 * var2)))


def gbc(t) -> float:
    """−Σ_{c≠c'} exp(−D_B(c, c')) over class Gaussians (spherical) in a 64-dim PCA of the features."""
    from sklearn.decomposition import PCA

    f = np.asarray(t.features, dtype=np.float64)
    dims = min(GBC_DIMS, f.shape[1], f.shape[0])
    if dims < f.shape[1]:
        f = PCA(n_components=dims, svd_solver="randomized", random_state=0).fit_transform(f)
    stats = []
    for c in np.unique(t.labels):
        rows = f[t.labels == c]
        var = rows.var(axis=0).mean() if len(rows) > 1 else 0.0
        stats.append((rows.mean(axis=0), max(float(var), GBC_VAR_FLOOR)))
    total = 0.0
    for i, (mu1, v1) in enumerate(stats):
        for j, (mu2, v2) in enumerate(stats):
            if i != j:
                total += math.exp(-bhattacharyya_spherical(mu1, v1, mu2, v2, f.shape[1]))
    return -total


METRICS = [
    zoo.TransferMetric("logme", "log marginal evidence of a Bayesian linear model on the features", logme,
                       reference="You et al. 2021, thuml/LogME"),
    zoo.TransferMetric("leep", "log expected empirical prediction from the source softmax", leep,
                       needs="predictions", reference="Nguyen et al. 2020"),
    zoo.TransferMetric("nce", "negative conditional entropy of target labels given the argmax source label", nce,
                       needs="predictions", reference="Tran et al. 2019"),
    zoo.TransferMetric("hscore", "H-score: tr(cov(f)⁺ cov(E[f|y]))", hscore, reference="Bao et al. 2019"),
    zoo.TransferMetric("hscore-shrinkage", "H-score with a Ledoit–Wolf shrunk feature covariance", hscore_shrinkage,
                       reference="Ibrahim et al. 2022"),
    zoo.TransferMetric("gbc", "Gaussian Bhattacharyya coefficient between classes (PCA-64, spherical)", gbc,
                       reference="Pandy et al. 2022"),
]
