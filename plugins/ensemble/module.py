"""What an ensemble or cascade output loads as (``zoo.load``): its members, each with its own
preprocessing, and how their outputs combine.

**Input**: a batch of images as timm's eval transform of the output's own ``pretrained_cfg`` makes
them: the largest member's input size and crop, *not normalised* (mean 0, std 1). Each member resizes
the batch to its own input size where that differs (``F.interpolate`` with the member's interpolation,
antialiased), then normalises it with its own mean and std. Members of one input size see exactly
what their own timm transform would give them.

**Output**: the log of the combined softmax, so ``argmax``, ``softmax`` and cross-entropy read as for
any classifier. An ensemble averages every member's softmax (optionally weighted). A cascade runs its
members in order of cost: every sample pays the first; after each stage, a sample whose score lies
inside that stage's window goes on (``zoo.plugins.ensemble.selective``), and the output of a sample
that went on to stage s is the mean softmax of members 1 … s. Samples exit one by one inside a batch:
a later member runs on the samples that reached it only. ``last_macs`` is what the last batch cost
(the members' multiply–accumulates, from torch's flop counter, times the samples each ran on), and
``last_exits`` the stage each sample left at.

On disk: ``config.json`` (``zoo_type: ensemble``; the members' architectures, classes and
preprocessing; the combination) and ``model.safetensors`` with every member's weights under
``members.I.``, so the output needs nothing else to load, from a folder or from the Hub.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.plugins.ensemble import selective

ZOO_TYPE = "ensemble"


def member_config(member) -> dict[str, Any]:
    """What rebuilds a member with timm: name, architecture, classes, constructor arguments, preprocessing."""
    return {"name": member.name, "architecture": member.architecture, "num_classes": member.num_classes,
            "model_args": member.model_args, "pretrained_cfg": member.pretrained_cfg,
            "label_names": member.label_names}


def macs_of(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply–accumulates of one image through ``model`` (``zoo.kit.measure.metrics.macs_per_image``)."""
    from zoo.kit.measure import macs_per_image

    return macs_per_image(model, input_size)


class _Preprocess(nn.Module):
    """A member's own preprocessing of the shared, unnormalised batch."""

    def __init__(self, data_cfg: dict[str, Any]):
        super().__init__()
        self.size = tuple(int(s) for s in data_cfg["input_size"][1:])
        self.mode = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}.get(
            data_cfg.get("interpolation", "bilinear"), "bilinear")
        self.register_buffer("mean", torch.tensor(data_cfg["mean"], dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(data_cfg["std"], dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode=self.mode, antialias=self.mode != "nearest",
                              align_corners=None if self.mode == "nearest" else False)
        return (x - self.mean) / self.std


class EnsembleNet(nn.Module):
    """Members combined by their softmax; a cascade when ``windows`` is given (one per stage after the first)."""

    def __init__(self, models: list[nn.Module], data_cfgs: list[dict[str, Any]], *, macs: list[int],
                 weights: list[float] | None = None, windows: list[tuple[float | None, float | None]] | None = None,
                 score: str = "msp"):
        super().__init__()
        self.members = nn.ModuleList(models)
        self.prep = nn.ModuleList(_Preprocess(c) for c in data_cfgs)
        self.macs = [int(m) for m in macs]
        w = torch.tensor(weights if weights else [1.0] * len(models), dtype=torch.float64)
        self.weights = (w / w.sum()).tolist()
        self.windows = [tuple(b) for b in windows] if windows is not None else None
        self.score = score
        self.last_macs = 0
        self.last_exits: torch.Tensor | None = None

    @property
    def is_cascade(self) -> bool:
        return self.windows is not None

    def member_probs(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.members[i](self.prep[i](x)).float().softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if not self.is_cascade:
            probs = sum(w * self.member_probs(i, x) for i, w in enumerate(self.weights))
            self.last_macs = n * sum(self.macs)
            self.last_exits = torch.full((n,), len(self.members), dtype=torch.long)
            return probs.clamp_min(1e-12).log()
        total = self.member_probs(0, x)
        out = total.clone()
        count = torch.ones(n, 1, device=x.device)
        exits = torch.ones(n, dtype=torch.long)
        active = torch.arange(n, device=x.device)
        spent = n * self.macs[0]
        for stage in range(1, len(self.members)):
            go_on = selective.inside(selective.scores(out[active], self.score), self.windows[stage - 1])
            active = active[go_on]
            if len(active) == 0:
                break
            total[active] += self.member_probs(stage, x[active])
            count[active] += 1
            out[active] = total[active] / count[active]
            exits[active.cpu()] = stage + 1
            spent += len(active) * self.macs[stage]
        self.last_macs, self.last_exits = int(spent), exits
        return out.clamp_min(1e-12).log()


def to_config(net: EnsembleNet, members: list[dict[str, Any]], *, pretrained_cfg: dict[str, Any],
              label_names: list[str] | None, num_classes: int) -> dict[str, Any]:
    return {
        "zoo_type": ZOO_TYPE,
        "architecture": "zoo-cascade" if net.is_cascade else "zoo-ensemble",  # not timm's: zoo.load opens it
        "kind": "cascade" if net.is_cascade else "ensemble",
        "members": members, "macs": net.macs, "weights": net.weights,
        "windows": [[_finite(lo), _finite(hi)] for lo, hi in net.windows] if net.is_cascade else None,
        "score": net.score, "num_classes": num_classes, "label_names": label_names,
        "pretrained_cfg": pretrained_cfg,
    }


def _finite(v: float | None) -> float | None:
    return None if v is None or math.isinf(v) else float(v)


def member_models(members: list[dict[str, Any]]) -> tuple[list[nn.Module], list[dict[str, Any]]]:
    """The members of a saved config (``member_config``'s), rebuilt by timm with nothing pretrained fetched, and
    their data configs."""
    import timm

    from zoo.kit.data import data_config

    models, cfgs = [], []
    for m in members:
        model = timm.create_model(m["architecture"], pretrained=False,
                                  **{**m.get("model_args", {}), "num_classes": m["num_classes"]})
        model.pretrained_cfg = {**model.pretrained_cfg, **m.get("pretrained_cfg", {})}
        models.append(model)
        cfgs.append(data_config(model.pretrained_cfg))
    return models, cfgs


def from_config(config: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None) -> EnsembleNet:
    """Rebuild the output (timm creates each member; nothing pretrained is fetched) and load ``state_dict``."""
    models, cfgs = member_models(config["members"])
    windows = [tuple(w) for w in config["windows"]] if config.get("windows") is not None else None
    net = EnsembleNet(models, cfgs, macs=config["macs"], weights=config.get("weights"), windows=windows,
                      score=config.get("score", "msp"))
    if state_dict is not None:
        net.load_state_dict(state_dict)
    return net.eval()


def load_folder(folder, build=from_config):
    """The output in ``folder`` (its config.json and model.safetensors), rebuilt by ``build`` (an ensemble's or
    cascade's ``from_config``, or concat's)."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    return build(config, load_file(str(folder / "model.safetensors")))
