"""TIES-merging (Yadav et al., 2023, "Resolving Interference When Merging Models"), one tensor at a time."""

import torch

import zoo


@zoo.merge_method("example-ties", "TIES-merging: trim task vectors, elect signs, average the agreeing entries",
                  needs_base=True, min_members=2)
def ties(tensors: list[torch.Tensor], base: torch.Tensor, *,
         density: float = zoo.option(0.2, "fraction of each task vector kept, by magnitude", min=0, max=1),
         scale: float = zoo.option(1.0, "λ: result = base + λ·merged task vector", min=0)) -> torch.Tensor:
    # 1. trim: keep each member's largest-magnitude changes, zero the rest
    trimmed = torch.stack([zoo.keep_largest(tv, density) for tv in zoo.task_vectors(tensors, base)])
    # 2. elect: per entry, the sign with the larger total magnitude
    sign = torch.sign(trimmed.sum(dim=0))
    # 3. disjoint mean: average only the (nonzero) entries that agree with the elected sign
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    merged = (trimmed * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)
    return base + scale * merged


@zoo.hookimpl
def zoo_strategies():
    return [ties]
