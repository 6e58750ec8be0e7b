"""Fisher merging (Matena & Raffel, NeurIPS 2022, "Merging Models with Fisher-Weighted Averaging").

θ = Σᵢ Fᵢθᵢ / Σᵢ Fᵢ entry by entry, Fᵢ = max(diagonal Fisher of member i, floor). Each member's Fisher is
estimated on ``--train-data`` with zoo's Fisher code (``zoo.kit.train.fisher``: batch 1, labels sampled from
the model's own softmax, as the reference code), one member at a time, and kept on disk
(``zoo.Spill``) until the merge reads it back tensor by tensor. Buffers (BatchNorm statistics) have no
Fisher: they are averaged. Equal Fishers give the plain average.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import zoo
from zoo.kit.train import diagonal_fisher

if TYPE_CHECKING:  # pragma: no cover
    import torch


def prepare(members, base, options, ctx) -> zoo.Spill:
    spill = zoo.Spill(prefix="zoo-fisher-")
    try:
        for i, member in enumerate(members):
            split = ctx.train_split(member)
            model = member.create_model(member.state_dict())
            spill.put(i, diagonal_fisher(model, split, options.samples, ctx.device, seed=ctx.seed,
                                         progress=ctx.progress))
            del model
    except BaseException:
        spill.close()
        raise
    return spill


@zoo.merge_method("fisher", "Fisher merging: each entry averaged with its members' diagonal Fisher information "
                  "as weights (Matena & Raffel 2022); needs --train-data", min_members=2, prepare=prepare,
                  needs=("train",), statistics="merge")
def fisher(tensors: list[torch.Tensor], base: torch.Tensor | None, *, key: str, stats,
           samples: int = zoo.option(256, "examples for each member's diagonal Fisher (batch 1)", min=1),
           floor: float = zoo.option(1e-8, "smallest Fisher value an entry weighs with", min=0),
           ) -> torch.Tensor:
    import torch

    fishers = stats.get(key)
    if fishers is None:  # a buffer
        return torch.stack(tensors).mean(dim=0)
    num = torch.zeros_like(tensors[0])
    den = torch.zeros_like(tensors[0])
    for t, f in zip(tensors, fishers):
        f = f.to(t.device, t.dtype).clamp_min(floor)
        num += f * t
        den += f
    return num / den
