"""Diagonal Fisher information of a model's parameters (for Fisher-weighted averaging).

F = E_x E_{y ~ p(y|x)} [ (∂ log p(y|x) / ∂θ)² ], estimated as in the WiSE-FT and Fisher-merging
reference code: one example at a time (batch 1, so the squares are per-example), the label
sampled from the model's own softmax (not the true label), the mean over ``n_samples``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from zoo.kit.data import Split


def diagonal_fisher(model, split: Split, n_samples: int, device, *, seed: int = 0,
                    progress=None) -> dict[str, torch.Tensor]:
    """``{parameter name: mean squared gradient}`` (on the CPU, float32) over ``n_samples`` examples; a model
    whose modules are named otherwise than its member's tensors (``member_key``, transformers 5) answers
    in the member's names."""
    import torch
    import torch.nn.functional as F

    from zoo.kit.train.device import to_device

    model = model.to(device).eval()  # BatchNorm uses its running statistics, as at inference
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    gen = torch.Generator().manual_seed(seed)
    n = min(n_samples, len(split))
    task = progress.task("Fisher information", total=n) if progress else None
    for i, (image, _) in enumerate(split.batches(1, shuffle=True, generator=gen)):
        if i >= n:
            break
        model.zero_grad(set_to_none=True)
        logits = model(to_device(image, device)).float()
        y = torch.multinomial(logits.detach().softmax(dim=1).cpu(), 1, generator=gen).squeeze(1)
        F.cross_entropy(logits, y.to(logits.device)).backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.detach().float().pow(2)
        if task:
            task.advance()
    if task:
        task.close()
    model.zero_grad(set_to_none=True)
    key = getattr(model, "member_key", lambda name: name)
    return {key(name): (f / max(n, 1)).cpu() for name, f in fisher.items()}
