"""How members relate without a loss path: their task vectors (θᵢ − base) and their predictions.

- ``task_vector_geometry``: each member's task-vector norm and every pair's cosine, streamed tensor by tensor
  from the files (``zoo.kit.tensors.scan_tensors``: one chunk of every member in memory, whatever their size).
  Counted over the floating tensors, BatchNorm's running statistics left out (they are not trained).
- ``agreement``: the fraction of held-out images on which two members predict the same class (top-1).
"""

from __future__ import annotations

from typing import Sequence


def task_vector_geometry(members: Sequence, base, *, progress=None) -> dict:
    """``{"norms": {name: ‖τ‖}, "cosines": {"a|b": cos(τa, τb)}, "tensors": n}`` for τᵢ = θᵢ − base; a
    cosine is None where a task vector is zero (a member that is the base)."""
    import torch

    import zoo

    n = len(members)
    gram = torch.zeros(n, n, dtype=torch.float64)
    counted = [0]

    def accumulate(tensors, b, *, key):
        if zoo.is_statistic(key):
            return
        tau = torch.stack([(t - b).flatten().double() for t in tensors])
        gram.add_(tau @ tau.T)
        counted[0] += 1

    zoo.scan_tensors(members, accumulate, base=base, progress=progress, description="task vectors",
                 who="the task-vector scan")
    norms = gram.diagonal().clamp_min(0).sqrt()
    names = [m.name for m in members]
    cosines = {}
    for i in range(n):
        for j in range(i + 1, n):
            denom = float(norms[i] * norms[j])
            cosines[f"{names[i]}|{names[j]}"] = float(gram[i, j]) / denom if denom > 0 else None
    return {"norms": {name: float(v) for name, v in zip(names, norms)}, "cosines": cosines,
            "tensors": counted[0]}


def agreement(predictions: dict) -> dict:
    """Pairwise top-1 agreement ``{"a|b": fraction}`` of ``{name: logits}`` on the same images."""
    names = list(predictions)
    top = {k: v.argmax(dim=1) for k, v in predictions.items()}
    return {f"{a}|{b}": float((top[a] == top[b]).float().mean())
            for i, a in enumerate(names) for b in names[i + 1:]}
