"""TSV-M, Iso-C and Iso-CTS (plugins/merges/tsv.py, isotropic.py): each against its definition written out
here with torch.linalg.svd (docs/algorithms.md), on the digits-demo zoo's fine-tunes and through `zoo combine`,
then --multi-task, and bad input. Then model breadcrumbs and DELLA (breadcrumbs.py, della.py), mergekit's
sparsifications, against their definitions on the same members."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from zoo.plugins.merges import breadcrumbs, della, isotropic, tsv

MATRIX = "classifier.weight"  # the digits model's one 2-D tensor: [10, 256], r = 10
CONV = "conv_head.weight"  # [256, 64, 1, 1]
ONE_D = ("classifier.bias", "bn2.weight", "blocks.3.0.bn1.bias")


def _args(members):
    return sum((["-m", str(m)] for m in members), [])


def _sd(folder):
    return load_file(str(folder / "model.safetensors"))


def _orth(a: torch.Tensor) -> torch.Tensor:
    """The orthonormal polar factor of a, from its SVD a = P S Qᵀ: P Qᵀ."""
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def _tsv_written_out(taus: list[torch.Tensor]) -> torch.Tensor:
    """TSV-M of one matrix, in float64: each τᵢ's top ⌊r/N⌋ triplets concatenated, U and Vᵀ orthonormalised."""
    taus = [t.double() for t in taus]
    k = min(taus[0].shape) // len(taus)
    svds = [torch.linalg.svd(t, full_matrices=False) for t in taus]
    u = torch.cat([u[:, :k] for u, _, _ in svds], dim=1)
    s = torch.cat([s[:k] for _, s, _ in svds])
    vh = torch.cat([vh[:k] for _, _, vh in svds], dim=0)
    return (_orth(u) @ torch.diag(s) @ _orth(vh)).float()


def _iso_c_written_out(taus: list[torch.Tensor]) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(sum(t.double() for t in taus), full_matrices=False)
    return (s.mean() * u @ vh).float()


def _iso_cts_written_out(taus: list[torch.Tensor], common: int, per: int) -> torch.Tensor:
    """Iso-CTS of one matrix with ``common`` common directions and ``per`` of each task's own."""
    taus = [t.double() for t in taus]
    u, s, vh = torch.linalg.svd(sum(taus), full_matrices=False)
    us, ss, vhs = [u[:, :common]], [s[:common]], [vh[:common]]
    for t in taus:
        outside = t - u[:, :common] @ u[:, :common].T @ t
        ui, si, vhi = torch.linalg.svd(outside, full_matrices=False)
        us.append(ui[:, :per]), ss.append(si[:per]), vhs.append(vhi[:per])
    level = torch.cat(ss).mean()
    return (level * _orth(torch.cat(us, dim=1)) @ _orth(torch.cat(vhs, dim=0))).float()


@pytest.fixture(scope="module")
def three(digits_zoo, ingredients):
    """The base and three fine-tunes' state dicts, and their paths."""
    base = digits_zoo / "members" / "base"
    return {"base": base, "members": ingredients[:3], "b": _sd(base), "thetas": [_sd(m) for m in ingredients[:3]]}


# ---- the definitions, on real members -------------------------------------------------------------

@pytest.mark.parametrize("method", ["tsv", "iso-c", "iso-cts"])
def test_command_merges_matrices_by_svd_and_averages_every_other_tensor(tmp_path, three, zoo_cli, method):
    out = tmp_path / method
    zoo_cli("combine", "-s", method, "--base", three["base"], *_args(three["members"]), "--out", out)
    got, b, thetas = _sd(out), three["b"], three["thetas"]
    taus = [t[MATRIX] - b[MATRIX] for t in thetas]
    # 3 members, r = 10: TSV keeps 3 triplets each; Iso-CTS: int(0.8·10) = 8 common moved to 7, 1 per task
    want = {"tsv": lambda: _tsv_written_out(taus), "iso-c": lambda: _iso_c_written_out(taus),
            "iso-cts": lambda: _iso_cts_written_out(taus, common=7, per=1)}[method]()
    assert torch.allclose(got[MATRIX] - b[MATRIX], want, atol=1e-6)
    assert not torch.allclose(got[MATRIX] - b[MATRIX], sum(taus) / 3, atol=1e-3)  # not the plain mean
    # convolutions (the papers' code: not matrices) and 1-D tensors: the mean of the task vectors
    for k in (CONV, *ONE_D):
        assert torch.allclose(got[k] - b[k], sum(t[k] - b[k] for t in thetas) / 3, atol=1e-6), k
    # BatchNorm's statistics: the members' mean (α = 1)
    assert torch.allclose(got["bn2.running_var"], sum(t["bn2.running_var"] for t in thetas) / 3, atol=1e-6)
    assert json.loads((out / "zoo.json").read_text())["options"]["scale"] == 1.0


def test_iso_c_flattens_the_spectrum_of_the_summed_task_vectors(three):
    b, thetas = three["b"], three["thetas"]
    merged = isotropic.iso_c.function([t[MATRIX] for t in thetas], b[MATRIX], key=MATRIX, scale=1.0, convs=False)
    got = torch.linalg.svdvals((merged - b[MATRIX]).double())
    summed = torch.linalg.svdvals(sum(t[MATRIX] - b[MATRIX] for t in thetas).double())
    assert torch.allclose(got, torch.full_like(got, float(summed.mean())), rtol=1e-4)
    assert summed.max() / summed.min() > 2  # the summed task vector's spectrum was not flat to begin with


def test_iso_cts_keeps_every_direction_isotropic_and_scale_moves_along_it(three):
    b, thetas = three["b"], three["thetas"]
    tensors = [t[MATRIX] for t in thetas]
    merged = isotropic.iso_cts.function(tensors, b[MATRIX], key=MATRIX, scale=1.0, common_fraction=0.8, convs=False)
    got = torch.linalg.svdvals((merged - b[MATRIX]).double())
    assert torch.allclose(got, torch.full_like(got, float(got.mean())), rtol=1e-4)
    half = isotropic.iso_cts.function(tensors, b[MATRIX], key=MATRIX, scale=0.5, common_fraction=0.8, convs=False)
    assert torch.allclose(half - b[MATRIX], 0.5 * (merged - b[MATRIX]), atol=1e-6)


@pytest.mark.parametrize("rank, common, n, want", [
    (10, 0.8, 3, (7, 1)), (10, 0.8, 5, (10, 0)), (10, 0.8, 2, (8, 1)), (10, 0.5, 3, (4, 2)), (10, 1.0, 3, (10, 0)),
    (10, 0.0, 4, (2, 2)),  # round(10/4) = 2: Python rounds half to even, as the reference code does
    (7, 0.0, 2, (1, 3)),  # round(7/2)·2 = 8 > 7 would not fit: one direction fewer per member
])
def test_iso_cts_common_subspace_leaves_a_multiple_of_n(rank, common, n, want):
    assert isotropic.split(rank, n, common) == want


def test_tsv_of_one_member_is_that_member(three):
    """N = 1: k = r, every triplet kept, the polar factors of U and Vᵀ are themselves: τ comes back."""
    b, (theta, *_) = three["b"], three["thetas"]
    for key, convs in ((MATRIX, False), (CONV, True), ("blocks.1.0.conv_exp.weight", True)):
        got = tsv.tsv.function([theta[key]], b[key], key=key, stats=None, scale=1.0, convs=convs)
        assert torch.allclose(got, theta[key], atol=1e-6), key


def test_convs_option_merges_kernels_as_out_by_in_k_k_matrices(three):
    b, thetas = three["b"], three["thetas"]
    key = "blocks.2.0.conv_exp.weight"  # [96, 24, 3, 3] → [96, 216]
    taus = [(t[key] - b[key]).reshape(96, 216) for t in thetas]
    got = tsv.tsv.function([t[key] for t in thetas], b[key], key=key, stats=None, scale=1.0, convs=True)
    assert torch.allclose((got - b[key]).reshape(96, 216), _tsv_written_out(taus), atol=1e-6)
    got = isotropic.iso_c.function([t[key] for t in thetas], b[key], key=key, scale=1.0, convs=True)
    assert torch.allclose((got - b[key]).reshape(96, 216), _iso_c_written_out(taus), atol=1e-6)


def test_tsv_with_more_members_than_the_rank_keeps_the_base_and_says_so(tmp_path, three, zoo_cli):
    """k = int(r/N) = 0 (the reference code's behaviour): the matrix is the base's, the rest still merged."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 40, generator=g)
    members = [base + torch.randn(3, 40, generator=g) for _ in range(4)]
    assert torch.equal(tsv.tsv.function(members, base, key="w", stats=None, scale=1.0, convs=False), base)
    # the digits models cut to 2 classes: a [2, 256] head (r = 2) and 3 members
    two = [_fewer_classes(m, tmp_path / f"two-{i}", 2) for i, m in enumerate([three["base"], *three["members"]])]
    out = tmp_path / "out"
    proc = zoo_cli("combine", "-s", "tsv", "--base", two[0], *_args(two[1:]), "--out", out)
    assert "keep the base's values" in proc.stdout + proc.stderr and "classifier.weight" in proc.stdout + proc.stderr
    assert json.loads((out / "zoo.json").read_text())["report"]["base_kept"] == [MATRIX]
    got, b, thetas = _sd(out), _sd(two[0]), [_sd(m) for m in two[1:]]
    assert torch.equal(got[MATRIX], b[MATRIX])
    assert torch.allclose(got["classifier.bias"] - b["classifier.bias"],
                          sum(t["classifier.bias"] - b["classifier.bias"] for t in thetas) / 3, atol=1e-7)


# ---- several tasks, bad input ---------------------------------------------------------------------

def _fewer_classes(src, dst, n):
    """``src`` restricted to its first ``n`` classes: the same backbone, another head ([n, 256])."""
    shutil.copytree(src, dst)
    sd = _sd(src)
    sd["classifier.weight"], sd["classifier.bias"] = sd["classifier.weight"][:n], sd["classifier.bias"][:n]
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["num_classes"] = config["model_args"]["num_classes"] = config["pretrained_cfg"]["num_classes"] = n
    config["label_names"] = config["label_names"][:n]
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_multi_task_keeps_heads_apart_and_bad_shapes_are_refused(tmp_path, three, zoo_cli):
    a, five = three["members"][0], _fewer_classes(three["members"][1], tmp_path / "five-classes", 5)
    out = tmp_path / "out"
    # another head: refused from the headers, before any SVD (the engine's check, for every merge method)
    proc = zoo_cli("combine", "-s", "tsv", "--base", three["base"], *_args([a, five]), "--out", out, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and err.startswith("error:") and "Traceback" not in err, err
    assert "member five-classes differ at tensor 'classifier.bias' in shape: [10] vs [5]" in err, err
    assert not out.exists()
    proc = zoo_cli("combine", "-s", "iso-cts", "--base", three["base"], *_args([a, five]), "-o", "common_fraction=2",
                   "--out", out, check=False)
    assert proc.returncode == 2 and "common_fraction=2.0" in proc.stderr and not out.exists()
    # --multi-task: the heads are kept apart, the backbone (convolutions as matrices here) merged once
    zoo_cli("combine", "-s", "tsv", "--base", three["base"], *_args([a, five]), "--multi-task", "-o", "convs=true",
            "--out", out)
    b, thetas = three["b"], [_sd(a), _sd(five)]
    heads = {name: _sd(out / name) for name in (a.name, five.name)}
    for name, theta in zip(heads, thetas):
        assert torch.equal(heads[name][MATRIX], theta[MATRIX]) and torch.equal(heads[name]["classifier.bias"],
                                                                               theta["classifier.bias"])
    taus = [(t[CONV] - b[CONV]).reshape(256, 64) for t in thetas]
    got = heads[five.name][CONV] - b[CONV]
    assert torch.allclose(got.reshape(256, 64), _tsv_written_out(taus), atol=1e-6)
    assert torch.equal(heads[a.name][CONV], heads[five.name][CONV])
    assert zoo.load(out / five.name).num_classes == 5


# ---- model breadcrumbs and DELLA, as mergekit defines them ------------------------------------------

KERNEL = "blocks.2.0.conv_exp.weight"  # [96, 24, 3, 3]: 20,736 entries


def test_breadcrumbs_keeps_the_magnitudes_below_the_outliers_and_adds_them(three):
    b, thetas = three["b"], three["thetas"]
    taus = [t[KERNEL] - b[KERNEL] for t in thetas[:2]]
    n = taus[0].numel()
    for tau in taus:
        got = breadcrumbs.crumbs(tau, 0.5, 0.01)
        largest_first = torch.sort(tau.abs().flatten(), descending=True).indices
        keep = torch.zeros(n, dtype=torch.bool)
        keep[largest_first[int(0.01 * n):int(0.01 * n) + int(0.5 * n)]] = True  # below the top 1%, half of all
        assert torch.equal(got.flatten(), torch.where(keep, tau.flatten(), 0.0))
    merged = breadcrumbs.breadcrumbs.function([t[KERNEL] for t in thetas[:2]], b[KERNEL], density=0.5, gamma=0.01,
                                              scale=0.5, weights=[1.0, 2.0])
    want = b[KERNEL] + 0.5 * (breadcrumbs.crumbs(taus[0], 0.5, 0.01) + 2 * breadcrumbs.crumbs(taus[1], 0.5, 0.01))
    assert torch.allclose(merged, want, atol=1e-7)
    # density 1 drops nothing (mergekit): task arithmetic at λ
    full = breadcrumbs.breadcrumbs.function([t[KERNEL] for t in thetas[:2]], b[KERNEL], density=1.0, gamma=0.01,
                                            scale=0.3, weights=None)
    assert torch.allclose(full, b[KERNEL] + 0.3 * (taus[0] + taus[1]), atol=1e-7)


def test_breadcrumbs_on_a_tensor_smaller_than_one_over_gamma_keeps_its_largest(three):
    """int(γ·n) = 0 outliers: the int(density·n) largest survive (as mergekit 0.1.5; its older slice
    [bottom:-0] kept none)."""
    tau = three["thetas"][0]["classifier.bias"] - three["b"]["classifier.bias"]  # 10 entries
    got = breadcrumbs.crumbs(tau, 0.9, 0.01)
    smallest = tau.abs().argmin()
    assert got[smallest] == 0 and int((got != 0).sum()) == 9
    assert torch.equal(got[got != 0], tau[got != 0])


def test_della_keeps_about_density_larger_magnitudes_more_often_and_the_l1_norm(three):
    b, theta = three["b"], three["thetas"][0]
    tau = theta[KERNEL] - b[KERNEL]  # ranked along dim 1, as mergekit: each kernel position's 24 input channels
    gen = lambda: della.generator(0, 0, KERNEL)  # noqa: E731
    got = della.magprune(tau, 0.5, 0.15, gen())
    kept = got != 0
    assert abs(float(kept.float().mean()) - 0.5) < 0.015  # 20,736 draws: σ = 0.0035
    assert torch.allclose(got.abs().sum(), tau.abs().sum(), rtol=1e-5)  # rescaled to τ's L1 norm
    ranks = tau.abs().argsort(dim=1).argsort(dim=1)  # 0 = smallest of its 24
    top, bottom = kept[ranks >= 18].float().mean(), kept[ranks < 6].float().mean()
    assert float(top) > 0.59 and float(bottom) < 0.41  # p = 0.35 + 0.3·rank/23: 0.617 and 0.383 expected
    raw = della.magprune(tau, 0.5, 0.15, gen(), rescale=False)
    assert torch.equal(raw != 0, kept) and torch.equal(raw[kept], tau[kept])  # the same draw; survivors as they were
    assert not torch.equal(della.magprune(tau, 0.5, 0.15, della.generator(0, 1, KERNEL)) != 0, kept)  # per member
    # a 1-D tensor is one row; a row of one entry (a [n, 1] matrix) keeps it with p = density
    bias = theta["bn2.weight"] - b["bn2.weight"]
    assert abs(float((della.magprune(bias, 0.5, 0.15, gen()) != 0).float().mean()) - 0.5) < 0.1
    column = tau.reshape(-1, 1)
    assert abs(float((della.magprune(column, 0.5, 0.15, gen()) != 0).float().mean()) - 0.5) < 0.015


def test_della_without_drop_is_the_weighted_mean_of_the_agreeing_task_vectors(three):
    b, thetas = three["b"], three["thetas"]
    w = [1.0, 2.0, 0.5]
    got = della.della.function([t[MATRIX] for t in thetas], b[MATRIX], key=MATRIX, density=1.0, epsilon=0.15,
                               scale=0.7, weights=w, rescale=True, seed=0)
    scaled = [wi * (t[MATRIX] - b[MATRIX]) for wi, t in zip(w, thetas)]
    total = sum(scaled)
    want = torch.zeros_like(total)
    for idx in range(total.numel()):  # entry by entry: the sign of the sum (+ for 0), the agreeing ones' mean
        i, j = divmod(idx, total.shape[1])
        sign = 1.0 if total[i, j] >= 0 else -1.0
        agree = [(s[i, j], wi) for s, wi in zip(scaled, w) if torch.sign(s[i, j]) == sign]
        want[i, j] = sum(s for s, _ in agree) / (sum(wi for _, wi in agree) or 1.0)
    assert torch.allclose(got, b[MATRIX] + 0.7 * want, atol=1e-6)


def test_della_command_is_its_function_with_the_seeded_draw_and_refuses_bad_epsilon(tmp_path, three, zoo_cli):
    out = tmp_path / "della"
    proc = zoo_cli("combine", "-s", "della", "--base", three["base"], *_args(three["members"]), "-o", "density=0.9",
                   "--out", out, check=False)
    assert proc.returncode == 2 and "density ± epsilon" in proc.stderr and not out.exists()
    zoo_cli("combine", "-s", "della", "--base", three["base"], *_args(three["members"]), "-o", "seed=3", "--out", out)
    got, b, thetas = _sd(out), three["b"], three["thetas"]
    for k in (MATRIX, KERNEL, "bn2.weight"):
        want = della.della.function([t[k] for t in thetas], b[k], key=k, density=0.5, epsilon=0.15, scale=1.0,
                                    weights=None, rescale=True, seed=3)
        assert torch.equal(got[k], want), k
