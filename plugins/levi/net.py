"""The LEVI network (Roh et al., "LEVI: Generalizable Fine-tuning via Layer-wise Ensemble of Different
Views", 2024): a pre-trained model and a small model trained from scratch, ensembled layer by layer.

At each of ``levels`` depths, counted from the top, both models' representations are pooled (global
average over space, or over tokens), concatenated, and read by that level's *adapting layer* (a linear
layer, or an MLP with ``hidden`` units) into class logits. The top level is the models' pre-logits
features; the levels below are the outputs of their last blocks (timm's ``forward_intermediates``).
The prediction is the mean of the levels' logits; training minimises the mean of their cross-entropies
(``zoo.plugins.levi.strategy``). Both models read the same input: the pre-trained model's preprocessing.

On disk: ``config.json`` (``zoo_type: levi``; both models' architectures and classes, the levels and
the adapting layers' sizes) and ``model.safetensors`` (``big.``, ``small.``, ``adapt.``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

ZOO_TYPE = "levi"


def views(model: nn.Module, x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``levels`` pooled representations of ``x``, deepest last: the outputs of the last ``levels − 1``
    blocks, then the pre-logits features."""
    if levels > 1:
        final, inter = model.forward_intermediates(x, indices=levels - 1, intermediates_only=False)
    else:
        final, inter = model.forward_features(x), []
    pooled = [t.mean(dim=tuple(range(2, t.dim()))) if t.dim() > 2 else t for t in inter]
    return pooled + [model.forward_head(final, pre_logits=True).flatten(1)]


def _adapting(d_in: int, classes: int, hidden: int) -> nn.Module:
    if not hidden:
        return nn.Linear(d_in, classes)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, classes))


class LEVINet(nn.Module):
    def __init__(self, big: nn.Module, small: nn.Module, *, classes: int, levels: int, hidden: int,
                 input_size: tuple[int, int, int]):
        super().__init__()
        self.big, self.small = big, small
        self.levels, self.hidden, self.classes = levels, hidden, classes
        with torch.no_grad():
            was = (big.training, small.training)
            big.eval(), small.eval()
            x = torch.zeros(2, *input_size)
            dims = [b.shape[1] + s.shape[1] for b, s in zip(views(big, x, levels), views(small, x, levels))]
            big.train(was[0]), small.train(was[1])
        self.dims = dims
        self.adapt = nn.ModuleList(_adapting(d, classes, hidden) for d in dims)
        self.frozen_big = True

    def level_logits(self, x: torch.Tensor, big_views: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Each level's logits. ``big_views``: the frozen pre-trained model's views, computed beforehand."""
        if big_views is None:
            if self.frozen_big:
                with torch.no_grad():
                    big_views = views(self.big, x, self.levels)
            else:
                big_views = views(self.big, x, self.levels)
        small_views = views(self.small, x, self.levels)
        return [a(torch.cat([b, s], dim=1)) for a, b, s in zip(self.adapt, big_views, small_views)]

    def forward(self, x: torch.Tensor, big_views: list[torch.Tensor] | None = None,
                per_level: bool = False) -> torch.Tensor:
        """The mean of the levels' logits; ``per_level``: all of them, stacked (levels, N, classes)."""
        levels = torch.stack(self.level_logits(x, big_views))
        return levels if per_level else levels.mean(dim=0)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_big:
            self.big.eval()  # a frozen model keeps its BatchNorm statistics and dropout off
        return self


def to_config(net: LEVINet, big: dict[str, Any], small: dict[str, Any], *, pretrained_cfg: dict[str, Any],
              label_names: list[str] | None, frozen: bool) -> dict[str, Any]:
    return {"zoo_type": ZOO_TYPE, "architecture": "zoo-levi", "big": big, "small": small, "levels": net.levels,
            "hidden": net.hidden, "dims": net.dims, "frozen_big": frozen, "num_classes": net.classes,
            "label_names": label_names, "pretrained_cfg": pretrained_cfg}


def from_config(config: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None) -> LEVINet:
    import timm

    from zoo.kit.data import data_config

    def build(spec: dict[str, Any]) -> nn.Module:
        return timm.create_model(spec["architecture"], pretrained=False,
                                 **{**spec.get("model_args", {}), "num_classes": spec["num_classes"]})

    big, small = build(config["big"]), build(config["small"])
    input_size = tuple(data_config(config["pretrained_cfg"])["input_size"])
    net = LEVINet(big, small, classes=config["num_classes"], levels=config["levels"], hidden=config["hidden"],
                  input_size=input_size)
    net.frozen_big = config.get("frozen_big", True)
    if state_dict is not None:
        net.load_state_dict(state_dict)
    return net.eval()


def load_folder(folder) -> LEVINet:
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(folder)
    return from_config(json.loads((folder / "config.json").read_text()), load_file(str(folder / "model.safetensors")))
