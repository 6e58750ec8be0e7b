"""A transformers image classifier that answers as a timm model does.

zoo's strategies run every member the same way (``zoo.kit.members.MemberFormat``): ``model(images)`` gives
logits, ``forward_features`` / ``forward_head(pre_logits=True)`` the features the classifier reads,
``get_classifier`` / ``reset_classifier`` its last linear layer. ``faced(cls)`` is ``cls`` (e.g.
``ViTForImageClassification``) with those methods added by a subclass, so the module, its parameters and its
``state_dict`` keys stay transformers' own: a merge, Fisher or RegMean reads the member's tensor names. The
features are the classifier's input, caught by a forward pre-hook, which holds for every
``*ForImageClassification`` whatever its pooling (ViT's class token, ConvNeXt's and Swin's pooled output).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


class TimmFace:
    """The mixin; see the module docstring. ``classifier_path`` is the dotted name of the classifier module.

    transformers 5 renames some modules of a family at load time (ViT's ``attention.attention.query`` became
    ``attention.q_proj``) and back when it saves. Members, merges and outputs keep the names in the files
    (what ``save_pretrained`` writes and every transformers version reads); once loaded, this model's
    ``state_dict`` / ``load_state_dict`` speak those names too, and :meth:`member_key` names the tensor
    of one of its parameters (Fisher, RegMean).
    """

    classifier_path = "classifier"
    _file_names: dict[str, str] | None = None  # module's name → the files' name, set by ``learn_file_names``

    def learn_file_names(self) -> None:
        """From now on speak the files' tensor names (transformers' own mapping, as ``save_pretrained``)."""
        own = super().state_dict()
        try:
            from transformers.core_model_loading import revert_weight_conversion
        except ImportError:  # transformers 4: the modules are named as the files
            self._file_names = {k: k for k in own}
            return
        reverted = revert_weight_conversion(self, dict(own))
        by_tensor = {id(v): k for k, v in own.items()}
        names = {by_tensor[id(v)]: k for k, v in reverted.items() if id(v) in by_tensor}
        if len(names) != len(own):  # pragma: no cover - a family whose files are more than a renaming
            raise ValueError(f"{type(self).__name__}: transformers converts its weights beyond renaming them")
        self._file_names = names

    def member_key(self, name: str) -> str:
        """The member's tensor name of this model's parameter or buffer ``name``."""
        return (self._file_names or {}).get(name, name)

    def state_dict(self, *args, **kwargs):
        sd = super().state_dict(*args, **kwargs)
        if self._file_names is None or args or kwargs.get("prefix") or kwargs.get("destination") is not None:
            return sd
        return type(sd)((self._file_names.get(k, k), v) for k, v in sd.items())

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self._file_names is not None:
            back = {v: k for k, v in self._file_names.items()}
            state_dict = {back.get(k, k): v for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, x, **kwargs):  # pixel values in, logits out
        return super().forward(pixel_values=x, **kwargs).logits

    def _classifier(self):
        return self.get_submodule(self.classifier_path)

    def forward_features(self, x):
        caught: list[Any] = []
        hook = self._classifier().register_forward_pre_hook(lambda module, args: caught.append(args[0]))
        try:
            super().forward(pixel_values=x)
        finally:
            hook.remove()
        return caught[0]

    def forward_head(self, features, pre_logits: bool = False):
        if pre_logits:
            return features.flatten(1) if features.dim() > 2 else features
        return self._classifier()(features)

    def get_classifier(self):
        import torch

        head = self._classifier()
        linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
        return linears[-1] if linears else head

    @property
    def num_classes(self) -> int:
        return int(self.get_classifier().out_features)

    @property
    def num_features(self) -> int:
        return int(self.get_classifier().in_features)

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised last linear layer of ``num_classes`` outputs (the config follows)."""
        import torch

        old = self.get_classifier()
        new = torch.nn.Linear(old.in_features, num_classes).to(old.weight.device, old.weight.dtype)
        for name, module in self.named_modules():
            if module is old:
                parent, _, leaf = name.rpartition(".")
                setattr(self.get_submodule(parent) if parent else self, leaf, new)
                break
        self.config.num_labels = num_classes
        self.num_labels = num_classes


@lru_cache(maxsize=None)
def faced(cls: type, classifier_path: str = "classifier") -> type:
    """``cls`` with :class:`TimmFace`'s methods; one class per (cls, classifier) pair."""
    return type(cls.__name__, (TimmFace, cls), {"classifier_path": classifier_path,
                                                 "__module__": TimmFace.__module__})
