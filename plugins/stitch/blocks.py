"""A timm model seen as stem → blocks → head: the view stitching (SN-Net) needs.

timm has no public "run from block k" entry point, so each family that can be stitched says
here how its ``forward_features`` splits. Two families are known:

- ``vit``: timm's ``VisionTransformer`` (ViT, DeiT, …). Blocks are the transformer blocks;
  features are tokens ``(B, L, D)``, so a stitching layer is an ``nn.Linear`` per token.
- ``efficientnet``: timm's ``EfficientNet`` (EfficientNet, -Lite, the tiny ``test_efficientnet``).
  Blocks are the blocks of every stage in order; features are maps ``(B, C, H, W)``, so a
  stitching layer is a 1×1 ``Conv2d``.

Running ``stem``, every block and ``head`` in turn is exactly ``model(x)`` (tests check it bit for bit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import zoo


if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


class Family:
    name: str = ""
    #: "tokens" (stitch with nn.Linear on the last axis) or "maps" (stitch with a 1×1 Conv2d)
    features: str = ""
    #: state-dict prefixes of the head (everything that is neither a block nor the head is the stem)
    head_prefixes: tuple[str, ...] = ()

    def accepts(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def stem(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def stages(self, model: nn.Module) -> list[list[tuple[str, nn.Module]]]:
        """The blocks stage by stage, each with its state-dict prefix (``blocks.3.``)."""
        raise NotImplementedError

    def head(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ---- shared -----------------------------------------------------------------------
    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return [m for stage in self.stages(model) for _, m in stage]

    def block_prefixes(self, model: nn.Module) -> list[str]:
        return [p for stage in self.stages(model) for p, _ in stage]

    def depths(self, model: nn.Module) -> list[int]:
        return [len(stage) for stage in self.stages(model)]

    def part_of(self, model: nn.Module, key: str) -> str | int:
        """Where a state-dict key belongs: ``"stem"``, ``"head"`` or the index of its block."""
        for i, prefix in enumerate(self.block_prefixes(model)):
            if key.startswith(prefix):
                return i
        return "head" if key.startswith(self.head_prefixes) else "stem"

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(model, x)
        for block in self.blocks(model):
            x = block(x)
        return self.head(model, x)


class ViT(Family):
    name = "vit"
    features = "tokens"
    head_prefixes = ("norm.", "fc_norm.", "head.", "attn_pool.", "head_drop.")

    def accepts(self, model):
        from timm.models.vision_transformer import VisionTransformer

        return isinstance(model, VisionTransformer)

    def stem(self, model, x):  # VisionTransformer.forward_features up to its blocks
        x = model.patch_embed(x)
        x = model._pos_embed(x)
        x = model.patch_drop(x)
        return model.norm_pre(x)

    def stages(self, model):
        return [[(f"blocks.{i}.", b) for i, b in enumerate(model.blocks)]]

    def head(self, model, x):
        return model.forward_head(model.norm(x))


class EfficientNet(Family):
    name = "efficientnet"
    features = "maps"
    head_prefixes = ("conv_head.", "bn2.", "global_pool.", "classifier.")

    def accepts(self, model):
        from timm.models.efficientnet import EfficientNet as _EfficientNet

        return isinstance(model, _EfficientNet)

    def stem(self, model, x):  # EfficientNet.forward_features up to its blocks
        return model.bn1(model.conv_stem(x))

    def stages(self, model):
        return [[(f"blocks.{s}.{i}.", b) for i, b in enumerate(stage)] for s, stage in enumerate(model.blocks)]

    def head(self, model, x):
        return model.forward_head(model.bn2(model.conv_head(x)))


FAMILIES: dict[str, Family] = {f.name: f for f in (ViT(), EfficientNet())}


def family_of(model: nn.Module, who: str) -> Family:
    """The family a timm model belongs to, or one clear error naming the ones that can be stitched."""
    for family in FAMILIES.values():
        if family.accepts(model):
            return family
    raise zoo.BadInput(f"{who}: a {type(model).__name__} cannot be stitched; zoo stitches timm's VisionTransformer "
                       "(ViT, DeiT) and EfficientNet (EfficientNet, EfficientNet-Lite) families")
