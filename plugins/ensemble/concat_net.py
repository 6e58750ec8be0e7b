"""What a ``--strategy concat`` output loads as (``zoo.load``): the members' pooled features side by side and
one linear head on them (Zhang & Bottou, "Learning useful representations for shifting tasks and
distributions", 2023).

**Input**: as an ensemble's (``zoo.plugins.ensemble.module``): the largest member's input size and crop, not
normalised; each member resizes the batch to its own input size where that differs and normalises it with its
own mean and std. **Features**: each member's ``forward_head(forward_features(x), pre_logits=True)`` (timm's
pooled pre-logits features, the ones ``zoo finetune --mode lp`` probes), concatenated in the members' order.
**Output**: the head's logits. The members keep no classifier (their heads are dropped: only their features
are read).

On disk: ``config.json`` (``zoo_type: concat``; the members' architectures and preprocessing, the feature
widths, the classes) and ``model.safetensors`` (``members.I.``, ``head.``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo.plugins.ensemble.module import _Preprocess, member_models

ZOO_TYPE = "concat"


class ConcatNet(nn.Module):
    def __init__(self, models: list[nn.Module], data_cfgs: list[dict[str, Any]], dims: list[int], classes: int):
        super().__init__()
        self.members = nn.ModuleList(models)
        self.prep = nn.ModuleList(_Preprocess(c) for c in data_cfgs)
        self.dims = [int(d) for d in dims]
        self.head = nn.Linear(sum(self.dims), classes)

    def member_features(self, i: int, x: torch.Tensor) -> torch.Tensor:
        model = self.members[i]
        return model.forward_head(model.forward_features(self.prep[i](x)), pre_logits=True).flatten(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.member_features(i, x).float() for i in range(len(self.members))], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def headless(model: nn.Module) -> nn.Module:
    """``model`` without its classifier (timm's ``reset_classifier(0)``): only its features are read."""
    model.reset_classifier(0)
    return model


def to_config(net: ConcatNet, members: list[dict[str, Any]], *, pretrained_cfg: dict[str, Any],
              label_names: list[str]) -> dict[str, Any]:
    return {"zoo_type": ZOO_TYPE, "architecture": "zoo-concat",  # not timm's: zoo.load opens it
            "members": [{**m, "num_classes": 0, "label_names": None} for m in members], "dims": net.dims,
            "num_classes": len(label_names), "label_names": label_names, "pretrained_cfg": pretrained_cfg}


def from_config(config: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None) -> ConcatNet:
    """Rebuild the output (timm creates each member, headless: its saved ``num_classes`` is 0; nothing
    pretrained is fetched) and load ``state_dict``."""
    models, cfgs = member_models(config["members"])
    net = ConcatNet(models, cfgs, config["dims"], config["num_classes"])
    if state_dict is not None:
        net.load_state_dict(state_dict)
    return net.eval()
