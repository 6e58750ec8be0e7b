"""Transferability metrics, checked by the properties docs/algorithms.md states and by small cases done by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zoo.kit.strategy.errors import BadInput
from zoo.plugins.transfer import team, metrics as tm
from zoo.kit.measure.transferability import TargetView, check_views


def view(features=None, labels=None, probs=None, num_classes=None, name="m"):
    labels = np.asarray(labels)
    f = np.zeros((len(labels), 1)) if features is None else np.asarray(features, dtype=np.float64)
    return TargetView(member=name, features=f, probs=None if probs is None else np.asarray(probs, dtype=np.float64),
                      labels=labels, num_classes=num_classes or int(labels.max()) + 1)


@pytest.fixture(scope="module")
def digits():
    """Real features: scikit-learn's digits pixels (64-dim), their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data[:600].astype(np.float64), d.target[:600]


# ---- LogME --------------------------------------------------------------------------------------
def logme_reference(f, y):
    """The evidence maximised by plain fixed-point iteration in the original (non-SVD) form, per class.

    A Bayesian linear model y ~ N(f w, 1/β), w ~ N(0, 1/α): the same evidence LogME maximises,
    computed with matrices instead of the SVD trick, to check the fast code's algebra.
    """
    n, d = f.shape
    out = []
    for c in range(int(y.max()) + 1):
        t = (y == c).astype(np.float64)
        alpha = beta = 1.0
        for _ in range(11):
            tau = alpha / beta
            a_mat = alpha * np.eye(d) + beta * f.T @ f
            m = beta * np.linalg.solve(a_mat, f.T @ t)  # the posterior mean at the current (α, β)
            gamma = d - alpha * np.trace(np.linalg.inv(a_mat))
            m2, res2 = m @ m, ((t - f @ m) ** 2).sum()
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            # thuml's code sums log(α + βσ) over f's nonzero singular values only: with N < D, the
            # D − rank zero directions' log α terms are left out of log det A
            logdet = (np.linalg.slogdet(alpha * np.eye(d) + beta * f.T @ f)[1]
                      - (d - np.linalg.matrix_rank(f)) * math.log(alpha))
            ev = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - 0.5 * logdet
                  - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi)) / n
            if abs(alpha / beta - tau) / tau <= 1e-3:
                break
        out.append(ev)
    return float(np.mean(out))


def test_logme_is_invariant_to_sample_order_and_rotations(digits):
    f, y = digits
    base = tm.logme(view(f, y))
    perm = np.random.default_rng(0).permutation(len(y))
    assert tm.logme(view(f[perm], y[perm])) == pytest.approx(base, abs=1e-9)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(f.shape[1], f.shape[1])))
    assert tm.logme(view(f @ q, y)) == pytest.approx(base, abs=1e-6)


@pytest.mark.parametrize("n, d", [(80, 6), (30, 45)])  # both sides of the Gram-matrix shortcut
def test_logme_matches_the_evidence_written_without_the_svd(n, d):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(n, d))
    y = (f[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(int)
    assert tm.logme(view(f, y)) == pytest.approx(logme_reference(f, y), rel=1e-9)


def test_logme_prefers_features_that_carry_the_labels(digits):
    f, y = digits
    noise = np.random.default_rng(0).normal(size=f.shape)
    assert tm.logme(view(f, y)) > tm.logme(view(noise, y)) + 0.1


# ---- LEEP / NCE ---------------------------------------------------------------------------------
def test_leep_by_hand():
    # two images, source softmax over 2 labels; target labels 0, 1
    probs = np.array([[0.8, 0.2], [0.4, 0.6]])
    labels = np.array([0, 1])
    joint = np.array([[0.4, 0.1], [0.2, 0.3]])  # P(y, z) = (1/2) Σ θ_i(z) over rows with y_i = y
    cond = joint / joint.sum(axis=0)  # P(y | z): columns [2/3, 1/3], [1/4, 3/4]
    expected = 0.5 * (math.log(0.8 * cond[0, 0] + 0.2 * cond[0, 1]) + math.log(0.4 * cond[1, 0] + 0.6 * cond[1, 1]))
    assert tm.leep(view(labels=labels, probs=probs)) == pytest.approx(expected, abs=1e-12)


def test_leep_perfect_one_hot_is_zero_and_random_is_log_one_over_c():
    labels = np.repeat(np.arange(5), 40)
    perfect = np.eye(5)[labels]
    assert tm.leep(view(labels=labels, probs=perfect)) == pytest.approx(0.0, abs=1e-12)
    uniform = np.full((len(labels), 7), 1 / 7)
    assert tm.leep(view(labels=labels, probs=uniform)) == pytest.approx(math.log(1 / 5), abs=1e-12)


def test_nce_is_zero_when_the_label_is_a_function_of_the_source_label_and_by_hand_otherwise():
    z = np.array([0, 0, 1, 2, 2, 3])
    labels = np.array([1, 1, 0, 1, 1, 0])  # y = f(z)
    probs = np.eye(4)[z] * 0.7 + 0.3 / 4  # argmax is z
    assert tm.nce(view(labels=labels, probs=probs)) == pytest.approx(0.0, abs=1e-12)
    mixed = np.array([0, 1, 0, 1])  # z = 0 for all: H(Y|Z) = H(Y) = log 2
    assert tm.nce(view(labels=mixed, probs=np.tile([0.9, 0.1], (4, 1)))) == pytest.approx(-math.log(2))


# ---- H-score ------------------------------------------------------------------------------------
def test_hscore_by_hand_in_one_dimension():
    f = np.array([[0.0], [2.0], [10.0], [12.0]])
    labels = np.array([0, 0, 1, 1])
    # class means 1 and 11 → cov(g) = var([1,1,11,11]) = 100/3; cov(f) = var([0,2,10,12]) = 104/3
    assert tm.hscore(view(f, labels)) == pytest.approx(100 / 104, abs=1e-12)


@pytest.mark.parametrize("n, d", [(200, 12), (40, 90)])
def test_hscore_equals_the_pseudo_inverse_formula(n, d):
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 5
    f = rng.normal(size=(n, d)) + rng.normal(size=(5, d))[labels]
    g = np.stack([f[labels == c].mean(axis=0) for c in labels])
    direct = np.trace(np.linalg.pinv(np.cov(f, rowvar=False), rcond=1e-15) @ np.cov(g, rowvar=False))
    assert tm.hscore(view(f, labels)) == pytest.approx(direct, rel=1e-6)


def test_hscore_shrinkage_agrees_with_plain_when_shrinkage_is_small_and_stays_finite_when_d_exceeds_n(digits):
    f, y = digits
    rng = np.random.default_rng(0)
    well = f + rng.normal(scale=2.0, size=f.shape)  # full rank, N ≫ D
    plain, shrunk = tm.hscore(view(well, y)), tm.hscore_shrinkage(view(well, y))
    assert shrunk == pytest.approx(plain, rel=0.1)
    wide = rng.normal(size=(40, 300))  # D > N: plain H-score overfits (≈ C−1 for any labels)
    labels = np.arange(40) % 4
    assert tm.hscore(view(wide, labels)) > 2.5
    assert 0 <= tm.hscore_shrinkage(view(wide, labels)) < 1.0


# ---- GBC ----------------------------------------------------------------------------------------
def test_gbc_separated_classes_near_zero_and_identical_classes_minus_c_times_c_minus_one():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    centres = np.eye(4, 8) * 100
    separated = centres[labels] + rng.normal(size=(200, 8))
    assert tm.gbc(view(separated, labels)) == pytest.approx(0.0, abs=1e-6)
    same = np.tile(rng.normal(size=(50, 8)), (4, 1))  # every class the same sample
    assert tm.gbc(view(same, labels)) == pytest.approx(-4 * 3, abs=1e-9)


def test_bhattacharyya_by_hand():
    # equal variances: D_B = |Δμ|² / (8σ²)
    assert tm.bhattacharyya_spherical(np.zeros(2), 2.0, np.array([4.0, 0.0]), 2.0, 2) == pytest.approx(1.0)
    # equal means: D_B = d/2 · log(((v1+v2)/2) / sqrt(v1 v2))
    assert tm.bhattacharyya_spherical(np.zeros(3), 1.0, np.zeros(3), 4.0, 3) == pytest.approx(1.5 * math.log(1.25))


# ---- team metrics -------------------------------------------------------------------------------
def test_ms_leep_and_e_leep_of_one_member_are_its_leep():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    probs = rng.dirichlet(np.ones(5), size=60)
    v = view(labels=labels, probs=probs)
    assert team.ms_leep([v], {}) == pytest.approx(tm.leep(v), abs=1e-12)
    assert team.e_leep([view(labels=labels, probs=probs)], {}) == pytest.approx(tm.leep(v), abs=1e-12)


def test_e_leep_sees_what_two_members_know_together():
    # each member alone tells only one bit of a 4-class label; together they determine it
    labels = np.repeat(np.arange(4), 25)
    bit0, bit1 = np.eye(2)[labels % 2], np.eye(2)[labels // 2]
    a, b = view(labels=labels, probs=bit0, name="a"), view(labels=labels, probs=bit1, name="b")
    assert tm.leep(a) == pytest.approx(math.log(0.5))
    assert team.e_leep([a, b], {}) == pytest.approx(0.0, abs=1e-12)
    assert team.ms_leep([a, b], {}) == pytest.approx(math.log(0.5))  # averaging predictors cannot


def test_osborn_terms():
    labels = np.repeat(np.arange(2), 30)
    exact = view(labels=labels, probs=np.eye(2)[labels], name="exact")
    blind = view(labels=labels, probs=np.full((60, 2), 0.5), name="blind")
    assert team.member_terms(exact)["task"] == pytest.approx(0.0, abs=1e-12)
    assert team.member_terms(blind)["task"] == pytest.approx(1.0)  # H(Y|Z) = H(Y) = log 2, normalised
    assert team.cohesion([exact]) == 0.0
    assert team.cohesion([exact, view(labels=labels, probs=np.eye(2)[labels], name="twin")]) == pytest.approx(1.0)
    no_weights = {"domain": 0.0, "task": 0.0, "cohesion": 0.0}
    assert team.osborn([exact, blind], no_weights) == 0.0
    assert team.osborn([exact], {}) > team.osborn([blind], {})


def test_osborn_domain_term_is_small_for_the_same_distribution_and_large_for_a_shifted_one():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 100)
    target = rng.normal(size=(200, 5)) + 3 * labels[:, None]
    near = view(target, labels, probs=np.eye(2)[labels])
    near.source_features = rng.normal(size=(200, 5)) + 3 * labels[:, None]
    near.extra["source_labels"] = labels
    far = view(target, labels, probs=np.eye(2)[labels])
    far.source_features = near.source_features + 20.0
    far.extra["source_labels"] = labels
    d_near, d_far = team.member_terms(near)["domain"], team.member_terms(far)["domain"]
    assert d_near < 0.1 < 0.5 < d_far
    # the OT coupling matches source class c to target class c: the labels correspond one to one
    assert team.member_terms(near)["task"] < 0.1


# ---- bad input ----------------------------------------------------------------------------------
def test_views_refuse_one_class_nan_and_constant_features():
    labels = np.zeros(10, dtype=int)
    with pytest.raises(BadInput, match="at least two"):
        check_views([view(np.ones((10, 2)), labels, num_classes=1)])
    labels = np.arange(10) % 2
    bad = np.random.default_rng(0).normal(size=(10, 3))
    bad[3, 1] = np.nan
    with pytest.raises(BadInput, match="NaN"):
        check_views([view(bad, labels, name="broken")])
    with pytest.raises(BadInput, match="identical for every target image"):
        check_views([view(np.ones((10, 3)), labels, name="flat")])
