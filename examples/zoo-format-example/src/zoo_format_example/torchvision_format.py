"""torchvision's image classifiers as a zoo member format, "torchvision".

A member is a folder with ``model.safetensors`` (the model's own ``state_dict``: torchvision's tensor names)
and a ``config.json`` of a few keys:

- ``torchvision_model``: the model's name in ``torchvision.models`` (``resnet18``, ``mobilenet_v3_small``,
  ...), what ``torchvision.models.get_model`` takes; this key is what makes the folder this format's;
- ``num_classes``: the classifier's outputs; ``label_names`` (optional): their names, in order;
- the preprocessing, as timm's ``pretrained_cfg`` keys: ``input_size`` ``[3, H, W]``, ``mean``, ``std``,
  ``interpolation``, ``crop_pct`` (resize to H / crop_pct, then a center crop). Those left out are
  torchvision's ImageNet recipe (``PREPROCESSING``); zoo writes them all into its outputs.

The model is ``torchvision.models.get_model(name, weights=None, num_classes=N)`` holding the member's weights,
given timm's interface (:class:`TimmInterface`) by changing its class, not by wrapping it, so its
``state_dict`` keys stay torchvision's own.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import zoo

KEY = "torchvision_model"
#: the preprocessing keys of config.json, defaulting to torchvision's ImageNet recipe (resize 256, crop 224)
PREPROCESSING = {"input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                 "interpolation": "bilinear", "crop_pct": 0.875}


class TorchvisionFormat(zoo.MemberFormat):
    """Folders whose config.json names a ``torchvision_model``."""

    name = "torchvision"
    library_name = "torchvision"

    def claims(self, folder: Path, config: dict[str, Any]) -> bool:
        return KEY in config

    def read_config(self, folder: Path, config: dict[str, Any], who: str) -> dict[str, Any]:
        n = config.get("num_classes")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise zoo.BadInput(f"{who}: config.json needs num_classes, a positive integer (it has {n!r})")
        labels = config.get("label_names")
        if labels is not None and (not isinstance(labels, list) or len(labels) != n):
            raise zoo.BadInput(f"{who}: config.json's label_names must be a list of num_classes = {n} names")
        classifier_of(config[KEY], who)  # torchvision has this classifier, and it ends in a linear layer
        return {**config, **{k: v for k, v in PREPROCESSING.items() if k not in config}}

    def check_member(self, member) -> None:
        key = f"{classifier_of(self.architecture(member), member.name)[1]}.weight"
        if key not in member.keys():
            raise zoo.BadInput(f"member {member.name}: its weights have no {key}, the classifier of torchvision's "
                               f"{self.architecture(member)}; is config.json's {KEY} the model that saved them?")
        rows = member.shape(key)[0]
        if rows != self.num_classes(member):
            raise zoo.BadInput(f"member {member.name}: config.json says num_classes = {self.num_classes(member)} "
                               f"but the classifier {key} has {rows} rows")

    def check_model(self, member) -> None:
        classifier_of(self.architecture(member), member.name)

    def architecture(self, member) -> str:
        return member.config[KEY]

    def num_classes(self, member) -> int:
        return int(member.config["num_classes"])

    def label_names(self, member) -> list[str] | None:
        names = member.config.get("label_names")
        return [str(n) for n in names] if names else None

    def pretrained_cfg(self, member) -> dict[str, Any]:
        c = member.config
        cfg = {"input_size": tuple(c["input_size"]), "mean": tuple(c["mean"]), "std": tuple(c["std"]),
               "interpolation": c["interpolation"], "crop_pct": float(c["crop_pct"]), "crop_mode": "center",
               "num_classes": self.num_classes(member), "classifier": self.classifier_names(member)[0]}
        if self.label_names(member):
            cfg["label_names"] = self.label_names(member)
        return cfg

    def classifier_names(self, member) -> list[str]:
        return [classifier_of(self.architecture(member), member.name)[0]]

    def create_model(self, member, state_dict=None):
        import torchvision

        name = self.architecture(member)
        model = torchvision.models.get_model(name, weights=None, num_classes=self.num_classes(member))
        model.__class__ = with_timm_interface(type(model))
        try:
            model.load_state_dict(state_dict or member.state_dict(), strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise zoo.BadInput(f"member {member.name}: its weights do not fit torchvision's {name} with "
                               f"num_classes = {self.num_classes(member)} ({' '.join(first[:2])[:300]})") from None
        model.pretrained_cfg = self.pretrained_cfg(member)
        return model.eval()

    def output_config(self, like, *, label_names: list[str]) -> dict[str, Any]:
        return {**like.config, "num_classes": len(label_names), "label_names": list(label_names)}

    # write_config: the default (config.json alone) is this format's whole layout

    def usage(self, name: str) -> str | None:
        return f"""It is a torchvision model; config.json names it and holds its preprocessing:

```python
import json, torchvision
from safetensors.torch import load_file
config = json.load(open("{name}/config.json"))
model = torchvision.models.get_model(config["torchvision_model"], weights=None, num_classes=config["num_classes"])
model.load_state_dict(load_file("{name}/model.safetensors"))
```"""


class TimmInterface:
    """Mixed into a torchvision model's own class: what zoo asks of a member's model (timm's interface).

    The classifier is the model's last ``nn.Linear`` (``fc``, ``classifier[-1]``, ``heads.head``); the
    features are its input, caught by a forward pre-hook: timm's pre-logits (after mobilenet_v3's and VGG's
    hidden layers, as timm's own ``forward_head(pre_logits=True)``).
    """

    pretrained_cfg: dict[str, Any] = {}

    def forward(self, x):
        out = super().forward(x)
        return getattr(out, "logits", out)  # googlenet and inception_v3 add auxiliary logits when training

    def get_classifier(self):
        import torch

        return [m for m in self.modules() if isinstance(m, torch.nn.Linear)][-1]

    @property
    def num_features(self) -> int:
        return int(self.get_classifier().in_features)

    def forward_features(self, x):
        caught: list[Any] = []
        hook = self.get_classifier().register_forward_pre_hook(lambda module, args: caught.append(args[0]))
        try:
            super().forward(x)
        finally:
            hook.remove()
        return caught[-1]

    def forward_head(self, features, pre_logits: bool = False):
        return features if pre_logits else self.get_classifier()(features)

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised last linear layer of ``num_classes`` outputs."""
        import torch

        old = self.get_classifier()
        new = torch.nn.Linear(old.in_features, num_classes).to(old.weight.device, old.weight.dtype)
        name = next(n for n, m in self.named_modules() if m is old)
        parent, _, leaf = name.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, leaf, new)
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}


@lru_cache(maxsize=None)
def with_timm_interface(cls: type) -> type:
    """``cls`` (torchvision's ``ResNet``, ``MobileNetV3``, ...) with :class:`TimmInterface`'s methods."""
    return type(cls.__name__, (TimmInterface, cls), {"__module__": __name__})


def classifier_of(name: str, who: str) -> tuple[str, str]:
    """The classifier of torchvision's ``name``: its top-level module (``fc``, ``classifier``, ``heads``: the
    tensors a fine-tune replaces) and its last linear layer (``classifier.3``); a :class:`zoo.BadInput`
    naming ``who`` for a name torchvision does not have as an image classifier."""
    classifiers, others, version = _torchvision_names()
    if name not in classifiers:
        what = ("is not an image classifier (a detection, segmentation, video or quantized model)"
                if name in others else "is not a model torchvision has")
        raise zoo.BadInput(f"{who}: config.json's {KEY} {name!r} {what}; torchvision {version}'s image "
                           "classifiers: torchvision.models.list_models(module=torchvision.models)")
    found = _last_linear(name)
    if found is None:
        raise zoo.BadInput(f"{who}: torchvision's {name} has no linear classifier (its head is a convolution); "
                           "zoo's strategies read and replace a last linear layer")
    return found.split(".")[0], found


@lru_cache(maxsize=None)
def _torchvision_names() -> tuple[frozenset, frozenset, str]:
    import torchvision

    classifiers = frozenset(torchvision.models.list_models(module=torchvision.models))
    return classifiers, frozenset(torchvision.models.list_models()) - classifiers, torchvision.__version__


@lru_cache(maxsize=None)
def _last_linear(name: str) -> str | None:
    """The dotted name of the last ``nn.Linear`` of torchvision's ``name``, built on the meta device (no
    memory, no random init); the regnets compute their widths from tensor values, so they are built for real."""
    import torch
    import torchvision

    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None)
    except NotImplementedError:  # "Cannot copy out of meta tensor"
        model = torchvision.models.get_model(name, weights=None)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return linears[-1] if linears else None


@zoo.hookimpl
def zoo_member_formats():
    return [TorchvisionFormat()]
