"""The task-vector merges (plugins/merges): each method's defining checks (docs/algorithms.md), then the
commands users run on the digits-demo zoo, then bad input."""

from __future__ import annotations

import json
import math

import pytest

from conftest import refused
import torch
from safetensors.torch import load_file

import zoo
from zoo.plugins.merges import arithmetic, dare, fisher, model_stock, mwa, regmean, slerp, ties


def _call(method, tensors, base, key="blocks.0.conv.weight", **options):
    """One tensor through a merge method's function, with its option defaults (as zoo calls it)."""
    import dataclasses

    values = {f.name: f.default for f in dataclasses.fields(method.Options)} | options
    extra = {"key": key} if "key" in method.wants else {}
    if "stats" in method.wants:
        extra["stats"] = values.pop("stats", None)
    values.pop("stats", None)
    return method.function(tensors, base, **extra, **values)


def _finetunes(n=3, shape=(64, 33), seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + 0.1 * torch.randn(shape, generator=g) for _ in range(n)]


# ---- the defining checks -------------------------------------------------------------------------

def test_one_task_at_scale_one_gives_the_finetune():
    base, (ft,) = _finetunes(1)
    assert torch.allclose(_call(arithmetic.task_arithmetic, [ft], base, scale=1.0), ft, atol=1e-6)
    assert torch.allclose(_call(ties.ties, [ft], base, density=1.0, trim="tensor"), ft, atol=1e-6)
    # and a smaller λ moves along the task vector, not elsewhere
    half = _call(arithmetic.task_arithmetic, [ft], base, scale=0.5)
    assert torch.allclose(half, base + 0.5 * (ft - base), atol=1e-6)


def test_task_arithmetic_weights_each_task_vector():
    base, fts = _finetunes(2)
    got = _call(arithmetic.task_arithmetic, fts, base, scale=0.3, weights=[2.0, -1.0])
    assert torch.allclose(got, base + 0.3 * (2 * (fts[0] - base) - (fts[1] - base)), atol=1e-6)


def test_dare_with_drop_zero_is_task_arithmetic():
    base, fts = _finetunes(3)
    ta = _call(arithmetic.task_arithmetic, fts, base, scale=0.3)
    assert torch.equal(_call(dare.dare, fts, base, drop=0.0), ta)


def test_dare_drops_a_fraction_p_and_rescales_the_survivors():
    base, (ft,) = _finetunes(1, shape=(200, 100))
    got = _call(dare.dare, [ft], base, drop=0.9, scale=1.0)
    tv, kept = ft - base, got - base
    survived = kept != 0
    assert abs(survived.float().mean().item() - 0.1) < 0.01  # 20 000 entries: p̂ within 1 point of 0.9
    assert torch.allclose(kept[survived], tv[survived] / (1 - 0.9), atol=1e-5)


def test_dare_is_the_same_bytes_in_any_streaming_order():
    base, fts = _finetunes(2)
    keys = ["a.weight", "b.weight", "c.weight"]
    first = {k: _call(dare.dare, fts, base, key=k, drop=0.5) for k in keys}
    again = {k: _call(dare.dare, fts, base, key=k, drop=0.5) for k in reversed(keys)}
    assert all(torch.equal(first[k], again[k]) for k in keys)
    assert not torch.equal(first["a.weight"], first["b.weight"])  # each tensor has its own drop
    assert not torch.equal(first["a.weight"], _call(dare.dare, fts, base, key="a.weight", drop=0.5, seed=1))


def _ties_written_out(base, thetas, density, count=lambda d, n: int(round(d * n))):
    """TIES as the paper's three steps, per tensor, with a plain sort for the trim (of ``count(density, n)``
    entries: round(d·n) as the paper over the whole model; mergekit's max(1, ⌊d·n⌋) tensor by tensor)."""
    out = []
    for tv in (t - base for t in thetas):
        flat = tv.flatten().abs()
        k = count(density, flat.numel())
        threshold = flat.sort(descending=True).values[k - 1]
        out.append(torch.where(tv.abs() >= threshold, tv, torch.zeros_like(tv)))
    stacked = torch.stack(out)
    sign = torch.sign(stacked.sum(0))
    sign[sign == 0] = 1.0 if sign.sum() >= 0 else -1.0
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    return base + (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)


def test_ties_trims_elects_and_averages_the_agreeing_entries():
    base, fts = _finetunes(3)
    got = _call(ties.ties, fts, base, density=0.3, trim="tensor")
    assert torch.allclose(got, _ties_written_out(base, fts, 0.3, MERGEKIT), atol=1e-6)
    # an entry where the members disagree takes only the elected side's values
    base = torch.zeros(1)
    assert torch.allclose(_call(ties.ties, [torch.tensor([3.0]), torch.tensor([-1.0])], base, density=1.0,
                                trim="tensor"), torch.tensor([3.0]))


def test_tensor_wise_trim_keeps_mergekits_count(ingredients, digits_zoo):
    """trim=tensor keeps max(1, ⌊density·n⌋) entries of each tensor, as mergekit (sparsify.magnitude:
    int(density·n), at least one) — not round(density·n)."""
    # an 8-entry bias at density 0.2: mergekit keeps 1 (round would keep 2)
    base = torch.zeros(8)
    tv = torch.tensor([0.1, -0.8, 0.3, 0.05, -0.2, 0.6, 0.01, 0.4])
    assert torch.equal(zoo.keep_largest(tv, 0.2), torch.tensor([0.0, -0.8, 0, 0, 0, 0, 0, 0]))
    assert torch.equal(_call(ties.ties, [base + tv], base, density=0.2, trim="tensor"), zoo.keep_largest(tv, 0.2))
    # every tensor of a real member's task vector
    b = load_file(str(digits_zoo / "members" / "base" / "model.safetensors"))
    theta = load_file(str(ingredients[0] / "model.safetensors"))
    checked = 0
    for k, v in b.items():
        tv = (theta[k] - v).float()
        if not v.is_floating_point() or zoo.is_statistic(k) or tv.abs().unique().numel() < tv.numel():
            continue  # ties or unchanged entries would be kept together: the count is then not exact
        for density in (0.2, 0.3, 0.77):
            assert int((zoo.keep_largest(tv, density) != 0).sum()) == max(1, int(density * tv.numel())), (k, density)
        assert torch.equal(zoo.keep_largest(tv, 1.0), tv)
        checked += 1
    assert checked > 20


def test_ties_with_full_density_and_no_sign_conflict_is_task_arithmetic():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(50, 20, generator=g)
    fts = [base + torch.rand(50, 20, generator=g) for _ in range(3)]  # every τᵢ > 0: no conflict
    got = _call(ties.ties, fts, base, density=1.0, scale=0.9, trim="tensor")
    # the disjoint mean of agreeing entries is the mean: task arithmetic with λ/N
    assert torch.allclose(got, _call(arithmetic.task_arithmetic, fts, base, scale=0.9 / 3), atol=1e-6)


def _plain_trim_and_election(tvs, thresholds):
    """TIES's trim with model-wide thresholds, sign election and disjoint mean, one plain op at a time (the
    form before the in-place rewrite): the bytes ``ties`` must keep."""
    stacked = torch.stack([tv.masked_fill(tv.abs() < t, 0.0) for tv, t in zip(tvs, thresholds)])
    sign = stacked.sum(dim=0).sign_()
    sign.masked_fill_(sign == 0, 1.0 if sign.sum() >= 0 else -1.0)
    agree = torch.where(sign < 0, stacked < 0, stacked > 0)
    return stacked.mul(agree).sum(dim=0).div(agree.sum(dim=0, dtype=torch.int32).clamp(min=1))


def test_ties_merge_is_the_plain_forms_bytes_with_zeros_signed_zeros_and_ties():
    """The fused trim (hardshrink) and election (|τ̂ᵢ| where it agrees, one stack buffer) write the plain
    form's bytes: also where every τ̂ᵢ is trimmed, where τ is −0.0 on a base of ±0.0 (the zero's sign
    survives into base + merged), where sums cancel to 0, at a threshold of 0, and for one member."""
    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 3, 5):
        for shape in ((7,), (100, 3), (64, 33)):
            base = torch.randn(shape, generator=g) * 0.02
            base.view(-1)[::7] = 0.0
            base.view(-1)[1::7] = -0.0
            fts = []
            for i in range(n):
                tv = torch.randn(shape, generator=g) * 1e-3
                tv = (tv * 4096).round() / 4096  # a coarse grid: ties at the threshold, sums cancelling to 0
                tv.view(-1)[i::5] = 0.0
                fts.append(base + tv)
                fts[-1].view(-1)[::3] = -0.0  # θ = −0.0 on a base of ±0.0: τ = −0.0 or +0.0
            base.view(-1)[::3] = torch.where(torch.arange(base.numel())[::3] % 2 == 0, 0.0, -0.0)
            tvs = [t - base for t in fts]
            for thresholds in ([float(tv.abs().flatten().kthvalue(max(1, int(0.7 * tv.numel()))).values)
                                for tv in tvs], [0.0] * n, [1e-45] * n):
                got = _call(ties.ties, fts, base, stats=ties.Stack(thresholds), scale=0.7)
                expected = _plain_trim_and_election(tvs, thresholds).mul_(0.7).add_(base)
                assert torch.equal(got.view(torch.int32), expected.view(torch.int32)), (n, shape, thresholds)


MERGEKIT = lambda d, n: max(1, int(d * n))  # noqa: E731  mergekit's tensor-wise count (sparsify.magnitude)


def _members(tmp_path, n=3, seed=0):
    """In-memory members of three tensors of different sizes, and their base."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (40, 30), "b.weight": (7,), "c.running_var": (7,), "d.weight": (300,)}
    config = {"architecture": "test_efficientnet", "num_classes": 10}
    base_sd = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    base = zoo.Member.in_memory("base", base_sd, config=config)
    members = [zoo.Member.in_memory(f"ft{i}", {k: v + torch.randn(v.shape, generator=g) * (i + 1) * 0.1
                                               for k, v in base_sd.items()}, config=config) for i in range(n)]
    return base, members


def test_model_wide_trim_threshold_is_the_exact_kth_largest_magnitude(tmp_path, monkeypatch):
    import zoo.kit.tensors.stream as stream

    monkeypatch.setattr(stream, "CHUNK_BYTES", 64)  # many chunks: a tensor or two at a time
    base, members = _members(tmp_path)
    skip = zoo.is_statistic
    for density in (0.2, 0.5, 1.0):
        got = zoo.model_thresholds(members, base, density, skip=skip)
        for m, threshold in zip(members, got):
            flat = torch.cat([(m.state_dict()[k] - base.state_dict()[k]).flatten().abs()
                              for k in m.keys() if not skip(k)])
            k = int(round(density * flat.numel()))
            assert threshold == flat.sort(descending=True).values[k - 1].item()
            assert int((flat >= threshold).sum()) == k  # no ties in random floats: exactly k kept


def test_model_thresholds_of_real_members_are_torch_kthvalue_with_ties_and_density_one(ingredients, digits_zoo,
                                                                                     monkeypatch):
    """zoo.model_thresholds on the digits members (many chunks) is the k-th largest |τᵢ| torch finds over the
    concatenated model, also where many entries tie at it (τ rounded to a coarse grid) and at density 1."""
    import zoo.kit.tensors.stream as stream

    monkeypatch.setattr(stream, "CHUNK_BYTES", 256 << 10)
    base = zoo.load_member(str(digits_zoo / "members" / "base"))
    members = [zoo.load_member(str(m)) for m in ingredients[:2]]
    b = base.state_dict()
    keys = [k for k in base.keys() if base.is_float(k) and not zoo.is_statistic(k)]
    coarse = lambda key, i, tv: (tv * 256).round() / 256  # noqa: E731  a grid: thousands of equal magnitudes
    tvs = [[(m.state_dict()[k] - b[k]).float() for k in keys] for m in members]
    for transform, density in ((None, 0.2), (None, 1.0), (coarse, 0.3)):
        got = zoo.model_thresholds(members, base, density, transform=transform)
        for i in range(len(members)):
            flat = torch.cat([(transform(k, i, tv) if transform else tv).flatten() for k, tv in zip(keys, tvs[i])])
            flat = flat.abs()
            k = max(1, round(density * flat.numel()))
            expected = flat.kthvalue(flat.numel() - k + 1).values.item()
            assert got[i] == expected == flat.topk(k).values[-1].item(), (transform, density, i)
            kept = int((flat >= got[i]).sum())
            assert kept >= k and int((flat > got[i]).sum()) < k
            if transform is coarse and density < 1.0:
                assert kept > k  # ties at the threshold: all kept, as the per-tensor trim does


def test_ties_trims_over_the_whole_model_by_default(tmp_path):
    base, members = _members(tmp_path)
    ctx = zoo.Context()
    ctx.base = base
    opts = ties.ties.Options(density=0.2)
    assert opts.trim == "model"
    merged = ties.ties().combine(members, opts, ctx).state_dict
    # written out: the top 20% over the concatenation of every (non-statistic) tensor of each member
    keys = [k for k in base.keys() if not zoo.is_statistic(k)]
    cat = lambda sd: torch.cat([sd[k].flatten() for k in keys])  # noqa: E731
    b = cat(base.state_dict())
    expected = _ties_written_out(b, [cat(m.state_dict()) for m in members], 0.2)
    assert torch.allclose(cat(merged), expected, atol=1e-6)
    # a per-tensor trim keeps another set: the option matters
    per_tensor = ties.ties().combine(members, ties.ties.Options(density=0.2, trim="tensor"), ctx).state_dict
    assert not torch.allclose(cat(per_tensor), expected, atol=1e-6)
    # BatchNorm statistics are averaged, never extrapolated
    assert torch.allclose(merged["c.running_var"], torch.stack([m.state_dict()["c.running_var"]
                                                                for m in members]).mean(0), atol=1e-6)


def _stock(tensors, base, key="blocks.0.conv.weight"):
    ratio = model_stock.interpolation_ratio([t - base for t in tensors])
    return _call(model_stock.model_stock, tensors, base, key=key, stats={key: ratio})


def test_model_stock_of_identical_finetunes_is_the_finetune():
    base, (ft,) = _finetunes(1)
    assert torch.allclose(_stock([ft, ft.clone(), ft.clone()], base), ft, atol=1e-5)


def test_model_stock_ratio_follows_the_angle():
    base = torch.zeros(2)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])  # orthogonal: cos 0, t = 0: the base
    assert torch.allclose(_stock([a, b], base), base)
    c = torch.tensor([math.cos(math.pi / 3), math.sin(math.pi / 3)])  # 60°: cos ½, t = 2·½/(1+½) = ⅔
    assert torch.allclose(_stock([a, c], base), (2 / 3) * (a + c) / 2, atol=1e-6)


def test_batchnorm_statistics_move_as_far_as_the_weights_and_never_beyond_the_average(tmp_path):
    base, members = _members(tmp_path)
    ctx = zoo.Context()
    ctx.base = base
    b = base.state_dict()
    avg = torch.stack([m.state_dict()["c.running_var"] for m in members]).mean(0)
    # λ = 0: the base exactly, its statistics too
    zero = arithmetic.task_arithmetic().combine(members, arithmetic.task_arithmetic.Options(scale=0.0), ctx)
    assert all(torch.equal(zero.state_dict[k], b[k]) for k in b)
    # λ·N = 0.3·3 = 0.9 of the way to the members' average; λ = 1 stops at the average (no extrapolation)
    ta = arithmetic.task_arithmetic().combine(members, arithmetic.task_arithmetic.Options(), ctx).state_dict
    assert torch.allclose(ta["c.running_var"], b["c.running_var"] + 0.9 * (avg - b["c.running_var"]), atol=1e-6)
    far = arithmetic.task_arithmetic().combine(members, arithmetic.task_arithmetic.Options(scale=1.0), ctx)
    assert torch.allclose(far.state_dict["c.running_var"], avg, atol=1e-6)
    # Model Stock, where no c.weight exists: the statistic keeps its own ratio (the next test: its layer's)
    stock = model_stock.model_stock().combine(members, model_stock.model_stock.Options(), ctx)
    t = stock.report["ratios"]["c.running_var"]
    assert torch.allclose(stock.state_dict["c.running_var"], t * avg + (1 - t) * b["c.running_var"], atol=1e-6)


def test_model_stock_gives_batchnorm_statistics_their_layers_ratio(ingredients, digits_zoo):
    base = zoo.load_member(str(digits_zoo / "members" / "base"))
    members = [zoo.load_member(str(m)) for m in ingredients[:3]]
    ctx = zoo.Context()
    ctx.base = base
    stock = model_stock.model_stock().combine(members, model_stock.model_stock.Options(), ctx)
    ratios, b = stock.report["ratios"], base.state_dict()
    key = "bn1.running_var"
    t = ratios["bn1.weight"]
    assert ratios[key] != t  # its own angle would give another ratio
    avg = torch.stack([m.state_dict()[key] for m in members]).mean(0)
    assert torch.allclose(stock.state_dict[key], t * avg + (1 - t) * b[key], atol=1e-6)


def test_slerp_at_zero_and_one_gives_the_ends():
    _, (a, b) = _finetunes(2)
    assert torch.equal(_call(slerp.slerp, [a, b], None, t=0.0), a)
    assert torch.equal(_call(slerp.slerp, [a, b], None, t=1.0), b)
    # orthogonal unit vectors: halfway along the arc stays on the unit circle (a straight line would not)
    mid = _call(slerp.slerp, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], None, t=0.5)
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))
    # nearly parallel: linear interpolation
    near = _call(slerp.slerp, [a, a * 1.001], None, t=0.25)
    assert torch.allclose(near, 0.75 * a + 0.25 * a * 1.001)


def test_fisher_with_equal_fishers_is_the_average_and_weighs_otherwise():
    _, fts = _finetunes(2)
    with zoo.Spill() as spill:
        for i in range(2):
            spill.put(i, {"w": torch.full(fts[0].shape, 0.5)})
        avg = _call(fisher.fisher, fts, None, key="w", stats=spill)
        assert torch.allclose(avg, (fts[0] + fts[1]) / 2, atol=1e-6)
        spill.put(1, {"w": torch.full(fts[0].shape, 1.5)})  # member 1 three times as sure
        assert torch.allclose(_call(fisher.fisher, fts, None, key="w", stats=spill),
                              (0.5 * fts[0] + 1.5 * fts[1]) / 2, atol=1e-6)
        # a buffer has no Fisher: averaged
        assert torch.allclose(_call(fisher.fisher, fts, None, key="bn.running_mean", stats=spill),
                              (fts[0] + fts[1]) / 2, atol=1e-6)
    assert not spill.folder.exists()


def test_regmean_with_identical_members_is_the_member_and_otherwise_least_squares():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 8, generator=g)
    xs = [torch.randn(100, 8, generator=g) for _ in range(2)]
    grams_ = [x.T @ x / len(x) for x in xs]
    assert torch.allclose(regmean.regmean_merge([w, w.clone()], grams_, 0.9), w, atol=1e-5)
    # α = 1: W minimises Σᵢ ‖Xᵢ Wᵀ − Xᵢ Wᵢᵀ‖² — the least-squares fit on the stacked inputs
    ws = [torch.randn(5, 8, generator=g) for _ in range(2)]
    got = regmean.regmean_merge(ws, grams_, 1.0)
    x = torch.cat([xs[0] / math.sqrt(100), xs[1] / math.sqrt(100)]).double()
    y = torch.cat([xs[0] @ ws[0].T / math.sqrt(100), xs[1] @ ws[1].T / math.sqrt(100)]).double()
    assert torch.allclose(got.double(), torch.linalg.lstsq(x, y).solution.T, atol=1e-5)
    # a 1×1 convolution is the same map: its weight keeps its shape
    conv = regmean.regmean_merge([w[:, :, None, None]] * 2, grams_, 0.9)
    assert conv.shape == (5, 8, 1, 1) and torch.allclose(conv[:, :, 0, 0], w, atol=1e-5)


def test_regmean_grams_are_the_mean_outer_products_of_each_linear_input():
    import timm

    model = timm.create_model("test_vit", num_classes=3).eval()
    images = torch.randn(6, 3, *model.pretrained_cfg["input_size"][1:])

    class Split:
        def __len__(self):
            return len(images)

        def batches(self, batch_size):
            yield images, torch.zeros(len(images), dtype=torch.long)

    got = regmean.grams(model, Split(), 6, torch.device("cpu"))
    assert set(got) == set(regmean.linear_maps(model)) and "head.weight" in got
    seen = {}
    model.head.register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0].detach()))
    with torch.no_grad():
        model(images)
    x = seen["x"].reshape(-1, seen["x"].shape[-1]).double()
    assert torch.allclose(got["head.weight"].double(), x.T @ x / len(x), atol=1e-5)


def test_mwa_weights_follow_loss_or_step_with_one_penalty():
    assert mwa.mwa_weights([0.5, 0.25], "loss", 0.0) == [0.5, 0.5]  # p = 0: uniform
    assert mwa.mwa_weights([0.5, 0.25], "loss", 1.0) == pytest.approx([1 / 3, 2 / 3])
    assert mwa.mwa_weights([1, 2, 3], "step", 1.0) == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    sharp = mwa.mwa_weights([1, 2, 3], "step", 4.0)
    assert sharp[2] > 0.75 and sharp == sorted(sharp)  # a larger p: towards the last checkpoint
    _, fts = _finetunes(2)
    stats = {"weights": [0.25, 0.75]}
    assert torch.allclose(_call(mwa.mwa, fts, None, stats=stats), 0.25 * fts[0] + 0.75 * fts[1], atol=1e-6)


# ---- the commands, on the digits-demo zoo --------------------------------------------------------

def _args(members):
    return sum((["-m", str(m)] for m in members), [])


@pytest.fixture(scope="module")
def parity_run(tmp_path_factory, digits_zoo):
    """One `zoo finetune --snapshots` of the digits base on another task, the digits labelled even/odd
    (2 classes, so a new head): MWA averages its snapshots, the multi-task merge uses its output."""
    from conftest import run_zoo

    root = tmp_path_factory.mktemp("parity")
    data = _parity_data(digits_zoo, root / "data")
    out, snaps = root / "parity-ft", root / "snapshots"
    run_zoo("finetune", digits_zoo / "members" / "base", "--train-data", data / "train", "--epochs", "3", "--lr",
            "3e-3", "--snapshots", snaps, "--out", out)
    return {"data": data, "out": out, "snapshots": snaps}


def test_ties_command_writes_a_timm_model_with_the_base_in_card_and_zoo_json(tmp_path, ingredients, digits_zoo,
                                                                             val_dir, zoo_cli):
    import timm

    base = digits_zoo / "members" / "base"
    out = tmp_path / "ties"
    zoo_cli("combine", "--strategy", "ties", "--base", base, *_args(ingredients[:3]), "-o", "density=0.3",
            "--eval-data", val_dir, "--out", out)
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    recipe = json.loads((out / "zoo.json").read_text())
    assert recipe["strategy"] == "ties" and recipe["options"] == {"density": 0.3, "scale": 1.0, "trim": "model"}
    assert len(recipe["base"]["files"]["model.safetensors"]) == 64 and len(recipe["report"]["thresholds"]) == 3
    card = (out / "README.md").read_text()
    assert "base" in card and "density" in card and "0.3" in card
    # the weights are TIES of the files, trimmed over the whole model
    b = load_file(str(base / "model.safetensors"))
    thetas = [load_file(str(m / "model.safetensors")) for m in ingredients[:3]]
    keys = [k for k in b if b[k].is_floating_point() and not zoo.is_statistic(k)]
    cat = lambda sd: torch.cat([sd[k].float().flatten() for k in keys])  # noqa: E731
    expected = _ties_written_out(cat(b), [cat(t) for t in thetas], 0.3)
    assert torch.allclose(cat(model.state_dict()), expected, atol=1e-6)
    assert recipe["metrics"]["top1"] > 0.5


def test_a_sweep_keeps_the_best_value_on_held_out_data_and_plots_it(tmp_path, ingredients, digits_zoo, val_dir,
                                                                   zoo_cli):
    from figcheck import assert_png_is, lines

    from zoo.kit.card.figures import sweep_curve

    base = digits_zoo / "members" / "base"
    out = tmp_path / "ta"
    zoo_cli("combine", "-s", "task-arithmetic", "--base", base, *_args(ingredients[:3]), "-o", "scale=0.2:1.0:0.4",
            "--eval-data", val_dir, "--out", out)
    recipe = json.loads((out / "zoo.json").read_text())
    sweep = recipe["report"]["sweep"]
    top1 = {p["value"]: p["metrics"]["top1"] for p in sweep["points"]}
    assert sorted(top1) == [0.2, 0.6, 1.0]
    assert sweep["best"] == max(top1, key=top1.get) and recipe["options"]["scale"] == sweep["best"]
    assert recipe["metrics"]["top1"] == top1[sweep["best"]]
    # the output is task arithmetic at the kept value
    b = load_file(str(base / "model.safetensors"))
    thetas = [load_file(str(m / "model.safetensors")) for m in ingredients[:3]]
    merged = load_file(str(out / "model.safetensors"))
    k = "conv_stem.weight"
    assert torch.allclose(merged[k], b[k] + sweep["best"] * sum(t[k] - b[k] for t in thetas), atol=1e-6)
    fig = sweep_curve(sweep["points"], option="scale", picked=sweep["best"],
                      title="task-arithmetic: scale on held-out data")
    assert_png_is(out / "sweep-scale.png", fig)
    assert lines(fig)["held-out top-1"] == ([0.2, 0.6, 1.0], [top1[v] * 100 for v in (0.2, 0.6, 1.0)])
    assert "Sweep of scale" in (out / "README.md").read_text()


def test_fisher_and_regmean_run_on_training_data(tmp_path, ingredients, digits_zoo, val_dir, zoo_cli):
    train = digits_zoo / "data" / "train"
    for method, option in (("fisher", "samples=32"), ("regmean", "examples=64")):
        out = tmp_path / method
        zoo_cli("combine", "-s", method, *_args(ingredients[:2]), "-o", option, "--train-data", train,
                "--eval-data", val_dir, "--out", out)
        recipe = json.loads((out / "zoo.json").read_text())
        assert recipe["metrics"]["top1"] > 0.5, (method, recipe["metrics"])
        merged = load_file(str(out / "model.safetensors"))
        a, b = (load_file(str(m / "model.safetensors")) for m in ingredients[:2])
        # the classifier is weighted (not the plain mean); a depthwise conv is averaged by RegMean
        k = "classifier.weight"
        assert not torch.allclose(merged[k], (a[k] + b[k]) / 2, atol=1e-6), method
    dw = next(k for k, v in a.items() if v.dim() == 4 and v.shape[1] == 1 and v.shape[2] > 1)
    assert torch.allclose(merged[dw], (a[dw] + b[dw]) / 2, atol=1e-6)


def test_mwa_averages_the_snapshots_of_one_finetune_by_their_loss_or_step(tmp_path, parity_run, zoo_cli):
    snaps, ft, parity = parity_run["snapshots"], parity_run["out"], parity_run["data"]
    runs = [snaps / f"epoch-{i}" for i in (1, 2, 3)]
    last = json.loads((runs[-1] / "zoo.json").read_text())["report"]["history"]
    assert [r["epoch"] for r in last] == [1, 2, 3] and last[0]["step"] < last[1]["step"] < last[2]["step"]
    # the last snapshot is the run's output itself
    final, output = load_file(str(runs[-1] / "model.safetensors")), load_file(str(ft / "model.safetensors"))
    assert final.keys() == output.keys() and all(torch.equal(final[k], output[k]) for k in final)
    thetas = [load_file(str(r / "model.safetensors")) for r in runs]
    k = "classifier.weight"
    for by, metric in (("loss", "loss"), ("step", "step")):
        out = tmp_path / f"mwa-{by}"
        zoo_cli("combine", "-s", "mwa", *_args(runs), "-o", f"by={by}", "-o", "penalty=2", "--eval-data",
                parity / "val", "--out", out)
        report = json.loads((out / "zoo.json").read_text())["report"]["mwa"]
        assert report["metrics"] == [r[metric] for r in last] and report["source"] == "zoo.json training history"
        w = report["weights"]
        assert w == pytest.approx(mwa.mwa_weights([r[metric] for r in last], by, 2.0))
        assert w[2] > w[0]  # lower loss, later step: more weight
        merged = load_file(str(out / "model.safetensors"))
        assert torch.allclose(merged[k], sum(wi * t[k] for wi, t in zip(w, thetas)), atol=1e-6)


# ---- bad input -----------------------------------------------------------------------------------

def _fails(zoo_cli, out, *args, words=()):
    refused(zoo_cli, out, *args, words=words)


def test_bad_input(tmp_path, ingredients, digits_zoo, val_dir, zoo_cli):
    base = str(digits_zoo / "members" / "base")
    out = tmp_path / "out"
    two = _args(ingredients[:2])
    _fails(zoo_cli, out, "combine", "-s", "ties", *two, words=["'ties' needs a base model", "--base SPEC"])
    _fails(zoo_cli, out, "combine", "-s", "task-arithmetic", "--base", str(digits_zoo / "members" / "other-arch"),
           *two, words=["the base other-arch", "test_resnet"])
    _fails(zoo_cli, out, "combine", "-s", "slerp", *_args(ingredients[:3]), words=["exactly 2 members, got 3"])
    _fails(zoo_cli, out, "combine", "-s", "ties", "--base", base, *two, "-o", "density=0",
           words=["density=0.0", "(0, 1]"])
    _fails(zoo_cli, out, "combine", "-s", "dare", "--base", base, *two, "-o", "drop=1",
           words=["drop=1.0", "[0, 1)"])
    _fails(zoo_cli, out, "combine", "-s", "ties", "--base", base, *two, "-o", "scale=0:1:0.5",
           words=["sweeps scale", "--eval-data"])
    for method in ("regmean", "fisher"):
        _fails(zoo_cli, out, "combine", "-s", method, *two, words=[f"'{method}' needs train data", "--train-data"])
    _fails(zoo_cli, out, "combine", "-s", "mwa", *two,
           words=["no training history", "ft-lr3e-3", "-o losses="])
    _fails(zoo_cli, out, "combine", "-s", "mwa", *two, "-o", "losses=1", words=["1 value(s)", "2 members"])


# ---- several tasks: heads kept apart -------------------------------------------------------------

def _parity_data(digits_zoo, root):
    """The digits relabelled even/odd: another task (2 classes) on the same images."""
    import shutil

    for split in ("train", "val"):
        for f in sorted((digits_zoo / "data" / split).glob("*/*.png")):
            d = root / split / ("even" if int(f.parent.name) % 2 == 0 else "odd")
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, d / f.name)
    return root


def test_multi_task_merge_keeps_each_members_head_and_evaluates_each_task_on_its_data(tmp_path, ingredients,
                                                                                      digits_zoo, val_dir,
                                                                                      parity_run, zoo_cli):
    import timm

    base = digits_zoo / "members" / "base"
    parity, ft_parity = parity_run["data"], parity_run["out"]
    digits_ft = ingredients[0]
    out = tmp_path / "mt"
    # a per-task --eval-data without --multi-task, and a task name that is not a member: refused
    _fails(zoo_cli, out, "combine", "-s", "task-arithmetic", "--base", base, *_args([digits_ft, ft_parity]),
           "--eval-data", f"parity-ft={parity / 'val'}", words=["NAME=DIR", "--multi-task"])
    _fails(zoo_cli, out, "combine", "-s", "task-arithmetic", "--base", base, *_args([digits_ft, ft_parity]),
           "--multi-task", "--eval-data", f"parity={parity / 'val'}",
           words=["'parity' is not a member", "parity-ft", digits_ft.name])
    zoo_cli("combine", "-s", "task-arithmetic", "--base", base, *_args([digits_ft, ft_parity]), "--multi-task",
            "-o", "scale=0.5", "--eval-data", f"{digits_ft.name}={val_dir}", "--eval-data",
            f"parity-ft={parity / 'val'}", "--out", out)
    recipe = json.loads((out / "zoo.json").read_text())
    assert set(recipe["tasks"]) == {digits_ft.name, "parity-ft"} and recipe["multi_task"] is True
    b = load_file(str(base / "model.safetensors"))
    models = {}
    for member in (digits_ft, ft_parity):
        folder = out / member.name
        models[member.name] = timm.create_model(f"local-dir:{folder}", pretrained=True).state_dict()
        theirs = load_file(str(member / "model.safetensors"))
        for k in ("classifier.weight", "classifier.bias"):  # the member's own head, untouched
            assert torch.equal(models[member.name][k], theirs[k])
        task = json.loads((folder / "zoo.json").read_text())
        assert task["metrics"]["top1"] == recipe["tasks"][member.name]["metrics"]["top1"] > 0.5
        assert 0 < recipe["tasks"][member.name]["normalized_top1"] <= 1.5
    assert models["parity-ft"]["classifier.weight"].shape[0] == 2
    with pytest.raises(zoo.BadInput, match="multi-task merge with one model per task.*parity-ft"):
        zoo.load(out)
    assert zoo.load(out / "parity-ft").num_classes == 2
    # one merged backbone, written twice: task arithmetic over the non-head tensors
    thetas = [load_file(str(m / "model.safetensors")) for m in (digits_ft, ft_parity)]
    for k in ("conv_stem.weight", "bn1.weight", "conv_head.weight"):
        want = b[k] + 0.5 * sum(t[k] - b[k] for t in thetas)
        assert torch.allclose(models["parity-ft"][k], want, atol=1e-6)
        assert torch.equal(models["parity-ft"][k], models[digits_ft.name][k])


def test_multi_task_sweep_and_auto_keep_the_best_mean_normalised_accuracy(tmp_path, ingredients, digits_zoo, val_dir,
                                                                  parity_run, zoo_cli):
    """-o scale=A,B,C with --multi-task: every value merged and each task scored on its own held-out data; the value
    with the best mean normalised top-1 is written, the very merge a run with that value alone writes. Without
    held-out data for a task, refused before anything runs."""
    base = digits_zoo / "members" / "base"
    parity, ft_parity, digits_ft = parity_run["data"], parity_run["out"], ingredients[0]
    common = ["combine", "-s", "task-arithmetic", "--base", base, *_args([digits_ft, ft_parity]), "--multi-task"]
    out = tmp_path / "swept"
    _fails(zoo_cli, out, *common, "-o", "scale=0.2,1.5", "--eval-data", f"{digits_ft.name}={val_dir}",
           words=["held-out data for every task", "parity-ft"])
    data = ["--eval-data", f"{digits_ft.name}={val_dir}", "--eval-data", f"parity-ft={parity / 'val'}"]
    zoo_cli(*common, "-o", "scale=0.2,0.6,1.5", *data, "--out", out)
    recipe = json.loads((out / "zoo.json").read_text())
    points = {p["value"]: p["mean_normalized_top1"] for p in recipe["sweep"]["points"]}
    assert sorted(points) == [0.2, 0.6, 1.5] and len(set(points.values())) > 1  # the values score apart
    best = max(points, key=points.get)
    assert recipe["sweep"]["best"] == best == recipe["options"]["scale"]
    mean = sum(t["normalized_top1"] for t in recipe["tasks"].values()) / 2
    assert mean == pytest.approx(points[best])
    zoo_cli(*common, "-o", f"scale={best}", *data, "--out", tmp_path / "direct")
    for task in (digits_ft.name, "parity-ft"):
        assert (out / task / "model.safetensors").read_bytes() == (
            tmp_path / "direct" / task / "model.safetensors").read_bytes()
    assert "Sweep of scale" in (out / "README.md").read_text()
    # --strategy auto over the same points and TIES: the same scores for the same merges, the best one written
    auto = tmp_path / "auto"
    zoo_cli(*common[:2], "auto", *common[3:], "-o", "candidates=task-arithmetic[scale=0.2,0.6,1.5] ties[scale=1]",
            *data, "--out", auto)
    board = json.loads((auto / "zoo.json").read_text())["auto"]["leaderboard"]
    assert [r["score"] for r in board[:3]] == pytest.approx([points[v] for v in (0.2, 0.6, 1.5)])
    kept = max(board, key=lambda r: r["score"])
    assert kept["kept"] and "Leaderboard (--strategy auto)" in (auto / "README.md").read_text()
    if kept["strategy"] == "task-arithmetic":
        assert (auto / "parity-ft" / "model.safetensors").read_bytes() == (
            out / "parity-ft" / "model.safetensors").read_bytes()
