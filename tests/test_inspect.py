"""`zoo inspect`: the barrier is zoo align --report's, the Hessian estimates are the Hessian's, the report's keys,
the advice's thresholds, and bad input."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import refused
from torch import nn

from zoo.plugins.inspect import advice, landscape

FAST = ("--iterations", "3", "--samples", "2", "--batches", "1", "--batch-size", "16")


def test_the_barrier_inspect_measures_is_the_one_zoo_align_report_measures(tmp_path, digits_zoo, zoo_cli):
    members, val = digits_zoo / "members", digits_zoo / "data" / "val"
    zoo_cli("align", members / "independent", "--to", members / "base", "--out", tmp_path / "aligned", "--report",
            "--eval-data", val, "-o", "points=3", "--quiet")
    before = json.loads((tmp_path / "aligned" / "zoo.json").read_text())["report"]["paths"][0]["curves"][
        "before alignment"]
    proc = zoo_cli("inspect", "-m", members / "base", "-m", members / "independent", "--eval-data", val, "--points",
                   "3", "--json", "--out", tmp_path / "inspected", *FAST)
    measured = json.loads(proc.stdout)["barriers"]["base|independent"]
    assert measured["loss"] == before["loss"] and measured["top1"] == before["top1"]
    assert measured["loss_barrier"] == before["loss_barrier"] > 0.3  # unaligned seeds: not connected
    assert json.loads((tmp_path / "inspected" / "inspect.json").read_text())["barriers"]["base|independent"] == measured
    assert (tmp_path / "inspected" / "barriers.png").stat().st_size > 10_000


def test_inspect_json_holds_every_measurement_and_advice_and_a_rerun_reads_the_barriers_back(tmp_path, digits_zoo,
                                                                                             zoo_cli):
    members, data = digits_zoo / "members", digits_zoo / "data"
    args = ["inspect", "-m", members / "ft-lr1e-3", "-m", members / "ft-seed4", "-m", members / "ft-long", "--base",
            members / "base", "--eval-data", data / "val", "--train-data", data / "train", "--json", *FAST]
    env = {**os.environ, "ZOO_CACHE": str(tmp_path / "cache")}  # an empty cache: nothing measured before
    report = json.loads(zoo_cli(*args, env=env).stdout)
    assert report["barriers_cached"] == 0
    again = json.loads(zoo_cli(*args, env=env).stdout)
    assert again["barriers_cached"] == 3 and again["barriers"] == report["barriers"]
    assert len(list((tmp_path / "cache" / "measures" / "barriers").glob("*.json"))) == 3
    assert {"members", "base", "architecture", "barriers", "task_vectors", "landscape", "agreement", "advice",
            "batchnorm", "batchnorm_recomputed", "landscape_setup"} <= set(report)
    pairs = {"ft-lr1e-3|ft-seed4", "ft-lr1e-3|ft-long", "ft-seed4|ft-long"}
    assert set(report["barriers"]) == set(report["agreement"]) == set(report["task_vectors"]["cosines"]) == pairs
    assert report["batchnorm"] and report["batchnorm_recomputed"]
    assert all(0.0 <= a <= 1.0 for a in report["agreement"].values())
    assert all(-1.0 <= c <= 1.0 for c in report["task_vectors"]["cosines"].values())
    assert all(n > 0 for n in report["task_vectors"]["norms"].values())
    for m in report["landscape"].values():
        assert m["sharpness"]["value"] > 0 and m["hessian_trace"]["samples"] == 2 and 0 < m["top1"] <= 1
    # fine-tunes of one base, one task: connected, and the advice says a soup will do
    assert max(c["loss_barrier"] for c in report["barriers"].values()) < advice.BARRIER_CONNECTED
    assert report["advice"][0].startswith("connected: ")


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    batches = [(torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))) for _ in range(2)]
    return model, batches


def _direct_hessian(model, batches) -> torch.Tensor:
    """The Hessian of the same loss (size-weighted mean cross-entropy), by torch.autograd.functional.hessian."""
    from torch.func import functional_call

    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    images = torch.cat([x for x, _ in batches])
    targets = torch.cat([t for _, t in batches])

    def loss(theta):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            params[n] = theta[i:i + s.numel()].view(s)
            i += s.numel()
        return nn.functional.cross_entropy(functional_call(model, params, (images,)), targets)

    return torch.autograd.functional.hessian(loss, flat)


def test_hessian_vector_products_sharpness_and_trace_match_the_direct_hessian_of_a_tiny_model():
    model, batches = _tiny()
    H = _direct_hessian(model, batches)
    n = H.shape[0]
    # H·v, batch by batch, is the direct Hessian times v
    v = torch.randn(n, dtype=torch.float64)
    parts, i = [], 0
    for p in model.parameters():
        parts.append(v[i:i + p.numel()].view(p.shape))
        i += p.numel()
    hv = torch.cat([h.flatten() for h in landscape.hvp(model, batches, parts)])
    assert torch.allclose(hv, H @ v, atol=1e-10)
    # power iteration finds the eigenvalue of largest magnitude
    eig = torch.linalg.eigvalsh(H)
    top = eig[eig.abs().argmax()].item()
    found = landscape.top_eigenvalue(model, batches, iterations=500, tol=1e-10)
    assert found["converged"] and found["value"] == pytest.approx(top, rel=1e-4)
    # Hutchinson's mean over Rademacher vectors is unbiased: within 4 standard errors of the trace, and the
    # standard error is what the estimator's variance (2·Σ_{i≠j} H_ij²) predicts
    samples = 2000
    est = landscape.hessian_trace(model, batches, samples=samples, seed=1)
    trace = torch.trace(H).item()
    predicted = (2 * ((H ** 2).sum() - (H.diagonal() ** 2).sum()).item() / samples) ** 0.5
    assert abs(est["value"] - trace) < 4 * predicted
    assert est["stderr"] == pytest.approx(predicted, rel=0.2)


def test_the_advice_follows_the_stated_thresholds():
    def barriers(*values):
        return {f"a|m{i}": {"loss_barrier": v} for i, v in enumerate(values)}

    low = advice.advise({"barriers": barriers(0.1, advice.BARRIER_CONNECTED - 0.01)})
    assert low[0].startswith("connected: ") and len(low) == 1
    mid = advice.advise({"barriers": barriers(0.1, advice.BARRIER_CONNECTED + 0.2)})
    assert mid[0].startswith(f"barrier {advice.BARRIER_CONNECTED + 0.2:.3f} between a and m1") and "zoo align" in mid[0]
    assert len(mid) == 1
    far = advice.advise({"barriers": barriers(advice.BARRIER_FAR + 1), "batchnorm": True})
    assert "ensemble" in far[1] and "--train-data" in far[2]
    tv = {"task_vectors": {"cosines": {"a|b": 0.2, "a|c": -0.1, "b|c": None}}}
    assert "interfere" in advice.advise(tv)[0] and "TIES or TSV" in advice.advise(tv)[0]
    tv["task_vectors"]["cosines"]["a|c"] = 0.05
    assert "do not conflict" in advice.advise(tv)[0]


def test_inspect_refuses_bad_input_with_one_message_and_writes_nothing(tmp_path, digits_zoo, zoo_cli):
    members, val = digits_zoo / "members", digits_zoo / "data" / "val"
    refused(zoo_cli, tmp_path / "one", "inspect", "-m", members / "base", "--eval-data", val,
            words=("at least two",))
    refused(zoo_cli, tmp_path / "no-data", "inspect", "-m", members / "base", "-m", members / "ft-long",
            words=("--eval-data DIR", "sharpness"))
    refused(zoo_cli, tmp_path / "archs", "inspect", "-m", members / "base", "-m", members / "other-arch",
            "--eval-data", val, words=("different architectures", "test_efficientnet", "test_resnet",
                                       "predictions"))


def test_hessian_vector_products_of_a_vit_through_fused_attention_match_finite_differences_of_its_gradient():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=16, patch_size=8, depth=1,
                              embed_dim=32, num_heads=2).double().eval()
    batches = [(torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 3, (4,)))]
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]
    hv = landscape.hvp(model, batches, v)

    def grad_at(step):
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(d, alpha=step)
        images, targets = batches[0]
        g = torch.autograd.grad(nn.functional.cross_entropy(model(images), targets), params)
        with torch.no_grad():
            for p, d in zip(params, v):
                p.sub_(d, alpha=step)
        return g

    eps = 1e-5
    fd = [(a - b) / (2 * eps) for a, b in zip(grad_at(eps), grad_at(-eps))]
    flat = torch.cat([h.flatten() for h in hv])
    assert torch.allclose(flat, torch.cat([f.flatten() for f in fd]), rtol=1e-4, atol=1e-6 * flat.abs().max())
