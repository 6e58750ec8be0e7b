"""SLERP: spherical linear interpolation of two members, tensor by tensor (as mergekit's ``slerp``).

On the flattened tensors a, b: Ω = arccos of the clamped dot product of their unit vectors;
θ = sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b, or (1−t)·a + t·b where |dot| > 0.9995 (nearly
parallel: the spherical formula divides by almost zero). t = 0 gives a, t = 1 gives b, exactly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import zoo

if TYPE_CHECKING:  # pragma: no cover
    import torch

PARALLEL = 0.9995


@zoo.merge_method("slerp", "spherical interpolation of two members, tensor by tensor", min_members=2,
                  max_members=2, statistics="merge")
def slerp(tensors: list[torch.Tensor], base: torch.Tensor | None, *,
          t: float = zoo.option(0.5, "where on the arc: 0 gives the first member, 1 the second", min=0, max=1),
          ) -> torch.Tensor:
    a, b = tensors
    na, nb = float(a.double().norm()), float(b.double().norm())
    dot = float((a.double().flatten() @ b.double().flatten()) / max(na * nb, 1e-12))
    dot = min(1.0, max(-1.0, dot))
    if abs(dot) > PARALLEL:
        return (1.0 - t) * a + t * b
    omega = math.acos(dot)
    s = math.sin(omega)
    return (math.sin((1.0 - t) * omega) / s) * a + (math.sin(t * omega) / s) * b
