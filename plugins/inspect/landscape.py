"""Loss-landscape metrics of one model on a few batches: sharpness (the Hessian's top eigenvalue, by power
iteration) and the Hessian's trace (Hutchinson's estimator), both from Hessian-vector products.

The loss is the mean cross-entropy over the batches, the model in eval mode (BatchNorm uses its running
statistics, dropout is off), so it is one deterministic function of the trainable parameters θ. A
Hessian-vector product H·v is the gradient of ⟨∇L(θ), v⟩ (double backward, ``torch.autograd.grad``), summed
over the batches batch by batch, so memory is one batch's graph whatever the number of batches. Attention
runs through PyTorch's math kernel there (the fused kernels have no double backward).

- Power iteration: v ← H·v / ‖H·v‖ until the Rayleigh quotient vᵀHv changes by less than ``tol`` (relative)
  or ``iterations`` are done. It converges to the eigenvalue of largest magnitude (at a minimum, the top one).
- Hutchinson (1990): tr(H) = E[vᵀHv] for v with independent Rademacher (±1) entries; the mean over
  ``samples`` draws, and its standard error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch


def _params(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def hvp(model, batches: Sequence[tuple], vector: list, params: list | None = None) -> list:
    """H·v of the mean cross-entropy over ``batches`` ((images, targets) on the model's device), ``vector``
    shaped like the trainable parameters; the batches' losses are weighted by their sizes."""
    import torch
    import torch.nn.functional as F

    from torch.nn.attention import SDPBackend, sdpa_kernel

    params = params if params is not None else _params(model)
    total = sum(len(t) for _, t in batches)
    out = [torch.zeros_like(p) for p in params]
    # attention through the math kernel: the fused ones (flash, memory-efficient) have no double backward
    with sdpa_kernel(SDPBackend.MATH):
        for images, targets in batches:
            loss = F.cross_entropy(model(images), targets) * (len(targets) / total)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            dot = sum((g * v).sum() for g, v in zip(grads, vector))
            for acc, h in zip(out, torch.autograd.grad(dot, params)):
                acc += h
    return out


def _dot(a: list, b: list) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b)))


def top_eigenvalue(model, batches: Sequence[tuple], *, iterations: int = 20, tol: float = 1e-3,
                   seed: int = 0) -> dict:
    """The Hessian's eigenvalue of largest magnitude by power iteration: ``{"value", "iterations",
    "converged"}``."""
    import torch

    params = _params(model)
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
    norm = _dot(v, v) ** 0.5
    v = [x / norm for x in v]
    value, done, converged = 0.0, 0, False
    for done in range(1, iterations + 1):
        hv = hvp(model, batches, v, params)
        new = _dot(v, hv)  # the Rayleigh quotient (‖v‖ = 1)
        norm = _dot(hv, hv) ** 0.5
        if norm == 0.0:
            value, converged = 0.0, True
            break
        v = [x / norm for x in hv]
        if done > 1 and abs(new - value) <= tol * max(abs(new), 1e-12):
            value, converged = new, True
            break
        value = new
    return {"value": value, "iterations": done, "converged": converged}


def hessian_trace(model, batches: Sequence[tuple], *, samples: int = 20, seed: int = 0) -> dict:
    """Hutchinson's estimate of tr(H) over ``samples`` Rademacher vectors: ``{"value", "stderr", "samples"}``."""
    import torch

    params = _params(model)
    gen = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(samples):
        v = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.device, p.dtype) for p in params]
        draws.append(_dot(v, hvp(model, batches, v, params)))
    mean = sum(draws) / len(draws)
    var = sum((d - mean) ** 2 for d in draws) / max(1, len(draws) - 1)
    return {"value": mean, "stderr": (var / len(draws)) ** 0.5, "samples": len(draws)}


def batches_of(split, device, *, batches: int, batch_size: int) -> list[tuple]:
    """The first ``batches`` batches of ``split`` (in order), on ``device``."""
    from zoo.kit.train import to_device

    out = []
    for images, targets in split.batches(batch_size):
        out.append((to_device(images, device), to_device(targets, device)))
        if len(out) == batches:
            break
    return out


def landscape(model, batches: Sequence[tuple], *, iterations: int = 20, samples: int = 20,
              seed: int = 0) -> dict:
    """Sharpness and trace of ``model`` (put in eval mode, in float32) on ``batches``."""
    model = model.float().eval()
    return {"sharpness": top_eigenvalue(model, batches, iterations=iterations, seed=seed),
            "hessian_trace": hessian_trace(model, batches, samples=samples, seed=seed)}
