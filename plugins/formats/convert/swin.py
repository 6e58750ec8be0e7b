"""Swin Transformer (v1): timm's ``swin_*_patch4_window*`` ↔ transformers' ``SwinForImageClassification``.

Same network, laid out differently: timm opens each stage after the first with its patch merging, transformers
closes each stage but the last with it (timm ``layers.{i+1}.downsample`` is transformers
``encoder.layers.{i}.downsample``); timm fuses query, key and value into one ``qkv`` linear (rows q, k, v, each
head-major, as transformers' three). Both concatenate a 2×2 neighbourhood in the same order — (row 0, col 0),
(row 1, col 0), (row 0, col 1), (row 1, col 1) — so the merging's norm and reduction copy as they are, and both
index the relative-position bias table as ``(dh + Wh - 1) * (2 Ww - 1) + (dw + Ww - 1)``. Every LayerNorm has
eps 1e-5 on both sides (transformers' patch embedding and merging norms are fixed at 1e-5, hence
``layer_norm_eps`` must be too). Buffers (relative-position index, attention masks) are rebuilt by either
model and are not converted.

transformers' checkpoints name the attention and MLP tensors ``attention.self.query``,
``attention.output.dense``, ``intermediate.dense``, ``output.dense`` (what ``save_pretrained`` writes and
what the Hub holds); recent transformers rename them to ``q_proj``, ``o_proj``, ``mlp.fc1``, ``mlp.fc2`` in
the live module. ``to_timm`` reads either; ``to_transformers`` writes the checkpoint names, which every
transformers version loads.

Raises :class:`NoConversion` for what transformers' Swin cannot compute: a window per stage (``swin_s3_*``),
a stage smaller than the window (timm shrinks the window and its bias table there, transformers keeps the
table of the configured window), non-square images or patches, a head dim other than dim / heads, per-stage
widths other than doubling, or an absolute position embedding on the transformers side.
"""

from __future__ import annotations

import math
import re
from typing import Any

from zoo.plugins.formats.convert import Conversion, NoConversion, Rule
from zoo.plugins.formats.convert.common import check_model_args, check_uses, timm_conversion
from zoo.plugins.formats.convert.common import count_indices as _count
from zoo.plugins.formats.convert.common import labels_or_placeholders as _labels


def _check_uses(rules: list[Rule], shapes: dict[str, tuple[int, ...]], what: str) -> None:
    check_uses(rules, shapes, what, "Swin", ignore=_BUFFERS)

#: timm's covered architectures and their defaults for what a conversion may set
_VARIANTS: dict[str, dict[str, Any]] = {
    "swin_tiny_patch4_window7_224": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                                         window_size=7, img_size=224),
    "swin_small_patch4_window7_224": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                                          window_size=7, img_size=224),
    "swin_base_patch4_window7_224": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                                         window_size=7, img_size=224),
    "swin_base_patch4_window12_384": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                                          window_size=12, img_size=384),
    "swin_large_patch4_window7_224": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48),
                                          window_size=7, img_size=224),
    "swin_large_patch4_window12_384": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48),
                                           window_size=12, img_size=384),
}
#: timm's SwinTransformer defaults every covered variant shares
_COMMON = dict(patch_size=4, in_chans=3, mlp_ratio=4.0, qkv_bias=True)

#: timm ``model_args`` that keep the function the conversion plans when they have these values
_NEUTRAL_ARGS: dict[str, tuple] = {
    "global_pool": ("avg",),
    "norm_layer": ("layernorm",),
    "always_partition": (False,),
}
#: sizes (checked against the tensors' shapes), and what does nothing in eval mode
_FREE_ARGS = {"img_size", "patch_size", "in_chans", "embed_dim", "depths", "num_heads", "head_dim",
              "window_size", "mlp_ratio", "qkv_bias", "num_classes", "drop_rate", "proj_drop_rate",
              "attn_drop_rate", "drop_path_rate", "strict_img_size", "dynamic_img_size", "weight_init"}

_EPS = 1e-5  # nn.LayerNorm's default: every norm of timm's Swin, and transformers' fixed ones

# transformers' block tensors: the checkpoint's names and the live module's (recent transformers)
_HF_FILE = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
            "o": "attention.output.dense", "table": "attention.self.relative_position_bias_table",
            "fc1": "intermediate.dense", "fc2": "output.dense"}
_HF_LIVE = {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
            "o": "attention.o_proj", "table": "attention.relative_position_bias.relative_position_bias_table",
            "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
#: buffers that older checkpoints saved; each model computes them itself
_BUFFERS = re.compile(r"(relative_position_index|attn_mask)$")


def _name(architecture: str) -> str:
    return architecture.split(".", 1)[0]


def TIMM(architecture: str) -> bool:
    return _name(architecture) in _VARIANTS


MODEL_TYPES = ("swin",)


# ----------------------------------------------------------------------------------------- tensor functions

def _third(index: int, fused):
    """Query (0), key (1) or value (2) of timm's fused qkv weight or bias (rows q, k, v)."""
    n = fused.shape[0] // 3
    return fused[index * n:(index + 1) * n]


def _join(q, k, v):
    """timm's fused qkv from transformers' query, key and value."""
    import torch

    return torch.cat([q, k, v], dim=0)


def _query(fused):
    return _third(0, fused)


def _key(fused):
    return _third(1, fused)


def _value(fused):
    return _third(2, fused)


# ------------------------------------------------------------------------------------------------- helpers









def _square(value, what: str, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise NoConversion(f"{what}: {name} {tuple(value)} is not square; transformers' Swin clamps "
                               "windows by the smaller side, timm by each side")
        value = value[0]
    return int(value)


def _one_window(value, what: str) -> int:
    """timm's window_size (an int, an (h, w), or one per stage) as the one square window transformers has."""
    sizes = value if isinstance(value, (list, tuple)) else [value]
    flat = {w for size in sizes for w in (size if isinstance(size, (list, tuple)) else [size])}
    if len(flat) != 1:
        raise NoConversion(f"{what}: window_size {value!r}; transformers' Swin has one square window for all stages")
    return int(flat.pop())


def _check_grid(img: int, patch: int, what: str) -> None:
    if img % patch:
        raise NoConversion(f"{what}: image size {img} is not a multiple of the patch {patch} (transformers pads "
                           "the image, timm drops the remainder)")


def _window_of_table(rows: int) -> int:
    side = math.isqrt(rows)
    return (side + 1) // 2 if side * side == rows and side % 2 == 1 else -1


def _check_stages(window: int, grid: int, stages: int, what: str) -> None:
    """Each stage's resolution at least the window: below it timm shrinks the window (and its bias table)
    while transformers keeps the configured table, so the two cannot hold the same tensors."""
    for i in range(stages):
        side = -(-grid // 2 ** i)
        if side < window:
            raise NoConversion(f"{what}: stage {i} is {side}×{side} tokens, smaller than the window {window}")


def _timm_args(timm_config: dict[str, Any]) -> dict[str, Any]:
    args = check_model_args(timm_config, "Swin", _VARIANTS, _FREE_ARGS, _NEUTRAL_ARGS)
    return {**_COMMON, **_VARIANTS[_name(timm_config["architecture"])], **args}


# ----------------------------------------------------------------------------------------- timm → transformers

def to_transformers(timm_config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> Conversion:
    """The SwinForImageClassification that computes the timm model's logits, and its tensors' rules (named
    as transformers' checkpoints name them)."""
    from transformers import SwinConfig

    arch = timm_config["architecture"]
    what = f"timm's {arch}"
    args = _timm_args(timm_config)
    img = _square(args["img_size"], what, "img_size")
    window = _one_window(args["window_size"], what)
    proj = shapes.get("patch_embed.proj.weight", ())
    if len(proj) != 4 or proj[2] != proj[3]:
        raise NoConversion(f"{what}: patch embedding {tuple(proj)} is not a square patchify conv")
    embed, chans, patch = proj[0], proj[1], proj[2]
    stages = _count(shapes, r"layers\.(\d+)\.")
    depths = [_count(shapes, rf"layers\.{i}\.blocks\.(\d+)\.") for i in range(stages)]
    if not stages or 0 in depths:
        raise NoConversion(f"{what}: no stages of blocks ({depths})")
    _check_grid(img, patch, what)
    _check_stages(window, img // patch, stages, what)

    heads, ratios = [], set()
    for i in range(stages):
        dim = embed * 2 ** i
        b = f"layers.{i}.blocks.0."
        table = shapes[b + "attn.relative_position_bias_table"]
        if _window_of_table(table[0]) != window:
            raise NoConversion(f"{what}: stage {i} has a {table[0]}-entry bias table, not a {window}×{window} "
                               "window's (a window per stage)")
        if shapes[b + "attn.qkv.weight"] != (3 * dim, dim):
            raise NoConversion(f"{what}: stage {i}'s attention is {shapes[b + 'attn.qkv.weight']}, not "
                               f"{(3 * dim, dim)} (widths double per stage and head dim = dim / heads)")
        heads.append(table[1])
        ratios.add(shapes[b + "mlp.fc1.weight"][0] / dim)
    if len(ratios) != 1:
        raise NoConversion(f"{what}: MLP ratios {sorted(ratios)} differ by stage")
    mlp_ratio = ratios.pop()
    qkv_bias = "layers.0.blocks.0.attn.qkv.bias" in shapes

    rules: list[Rule] = []

    def rule(target, sources, fn=None):
        rules.append(Rule(target, sources if isinstance(sources, tuple) else (sources,), fn))

    rule("swin.embeddings.patch_embeddings.projection.weight", "patch_embed.proj.weight")
    rule("swin.embeddings.patch_embeddings.projection.bias", "patch_embed.proj.bias")
    rule("swin.embeddings.norm.weight", "patch_embed.norm.weight")
    rule("swin.embeddings.norm.bias", "patch_embed.norm.bias")
    names = _HF_FILE
    for i in range(stages):
        for j in range(depths[i]):
            t, h = f"layers.{i}.blocks.{j}.", f"swin.encoder.layers.{i}.blocks.{j}."
            rule(h + "layernorm_before.weight", t + "norm1.weight")
            rule(h + "layernorm_before.bias", t + "norm1.bias")
            rule(h + names["table"], t + "attn.relative_position_bias_table")
            for part in ("weight", "bias") if qkv_bias else ("weight",):
                rule(f"{h}{names['q']}.{part}", f"{t}attn.qkv.{part}", _query)
                rule(f"{h}{names['k']}.{part}", f"{t}attn.qkv.{part}", _key)
                rule(f"{h}{names['v']}.{part}", f"{t}attn.qkv.{part}", _value)
            for part in ("weight", "bias"):
                rule(f"{h}{names['o']}.{part}", f"{t}attn.proj.{part}")
                rule(f"{h}layernorm_after.{part}", f"{t}norm2.{part}")
                rule(f"{h}{names['fc1']}.{part}", f"{t}mlp.fc1.{part}")
                rule(f"{h}{names['fc2']}.{part}", f"{t}mlp.fc2.{part}")
        if i + 1 < stages:  # timm's next stage opens with the merging this one closes with
            t, h = f"layers.{i + 1}.downsample.", f"swin.encoder.layers.{i}.downsample."
            rule(h + "reduction.weight", t + "reduction.weight")
            rule(h + "norm.weight", t + "norm.weight")
            rule(h + "norm.bias", t + "norm.bias")
    rule("swin.layernorm.weight", "norm.weight")
    rule("swin.layernorm.bias", "norm.bias")
    num_classes = shapes["head.fc.weight"][0] if "head.fc.weight" in shapes else 0
    if num_classes:
        rule("classifier.weight", "head.fc.weight")
        rule("classifier.bias", "head.fc.bias")
    _check_uses(rules, shapes, what)

    labels = _labels((timm_config.get("pretrained_cfg") or {}).get("label_names"), num_classes)
    config = SwinConfig(
        image_size=img, patch_size=patch, num_channels=chans, embed_dim=embed, depths=depths,
        num_heads=heads, window_size=window, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, hidden_act="gelu",
        use_absolute_embeddings=False, layer_norm_eps=_EPS, drop_path_rate=0.0,
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        architectures=["SwinForImageClassification"],
    ).to_dict()
    return Conversion(config=config, rules=rules)


# ----------------------------------------------------------------------------------------- transformers → timm

def to_timm(hf_config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> Conversion:
    """The timm SwinTransformer that computes the transformers model's logits, and its tensors' rules
    (from the checkpoint's tensor names or the live module's)."""
    what = f"transformers' swin ({', '.join(hf_config.get('architectures') or ['?'])})"
    if hf_config.get("model_type") != "swin":
        raise NoConversion(f"{what}: model_type {hf_config.get('model_type')!r} is not swin")
    eps = float(hf_config.get("layer_norm_eps", _EPS))
    if eps != _EPS:
        raise NoConversion(f"{what}: layer_norm_eps {eps:g}; its patch embedding and merging norms are fixed "
                           f"at {_EPS:g} and timm's Swin has one eps for all, so only {_EPS:g} converts exactly")
    if hf_config.get("hidden_act", "gelu") != "gelu":
        raise NoConversion(f"{what}: hidden_act {hf_config.get('hidden_act')!r} (timm's Swin: exact gelu)")
    if hf_config.get("use_absolute_embeddings"):
        raise NoConversion(f"{what}: an absolute position embedding, which timm's Swin does not have")
    img = _square(hf_config.get("image_size", 224), what, "image_size")
    window = int(hf_config.get("window_size", 7))
    proj = shapes.get("swin.embeddings.patch_embeddings.projection.weight", ())
    if len(proj) != 4 or proj[2] != proj[3]:
        raise NoConversion(f"{what}: patch embedding {tuple(proj)} is not a square patchify conv")
    embed, chans, patch = proj[0], proj[1], proj[2]
    stages = _count(shapes, r"swin\.encoder\.layers\.(\d+)\.")
    depths = [_count(shapes, rf"swin\.encoder\.layers\.{i}\.blocks\.(\d+)\.") for i in range(stages)]
    if not stages or 0 in depths:
        raise NoConversion(f"{what}: no stages of blocks ({depths})")
    _check_grid(img, patch, what)
    _check_stages(window, img // patch, stages, what)
    live = any(".attention.q_proj." in k for k in shapes)
    names = _HF_LIVE if live else _HF_FILE
    heads = [shapes[f"swin.encoder.layers.{i}.blocks.0.{names['table']}"][1] for i in range(stages)]
    qkv_bias = f"swin.encoder.layers.0.blocks.0.{names['q']}.bias" in shapes
    mlp_ratio = shapes[f"swin.encoder.layers.0.blocks.0.{names['fc1']}.weight"][0] / embed

    rules: list[Rule] = []

    def rule(target, sources, fn=None):
        rules.append(Rule(target, sources if isinstance(sources, tuple) else (sources,), fn))

    rule("patch_embed.proj.weight", "swin.embeddings.patch_embeddings.projection.weight")
    rule("patch_embed.proj.bias", "swin.embeddings.patch_embeddings.projection.bias")
    rule("patch_embed.norm.weight", "swin.embeddings.norm.weight")
    rule("patch_embed.norm.bias", "swin.embeddings.norm.bias")
    for i in range(stages):
        if i > 0:
            t, h = f"layers.{i}.downsample.", f"swin.encoder.layers.{i - 1}.downsample."
            rule(t + "norm.weight", h + "norm.weight")
            rule(t + "norm.bias", h + "norm.bias")
            rule(t + "reduction.weight", h + "reduction.weight")
        for j in range(depths[i]):
            t, h = f"layers.{i}.blocks.{j}.", f"swin.encoder.layers.{i}.blocks.{j}."
            rule(t + "norm1.weight", h + "layernorm_before.weight")
            rule(t + "norm1.bias", h + "layernorm_before.bias")
            rule(t + "attn.relative_position_bias_table", h + names["table"])
            for part in ("weight", "bias") if qkv_bias else ("weight",):
                rule(f"{t}attn.qkv.{part}", tuple(f"{h}{names[x]}.{part}" for x in "qkv"), _join)
            for part in ("weight", "bias"):
                rule(f"{t}attn.proj.{part}", f"{h}{names['o']}.{part}")
                rule(f"{t}norm2.{part}", f"{h}layernorm_after.{part}")
                rule(f"{t}mlp.fc1.{part}", f"{h}{names['fc1']}.{part}")
                rule(f"{t}mlp.fc2.{part}", f"{h}{names['fc2']}.{part}")
    rule("norm.weight", "swin.layernorm.weight")
    rule("norm.bias", "swin.layernorm.bias")
    num_classes = shapes["classifier.weight"][0] if "classifier.weight" in shapes else 0
    if num_classes:
        rule("head.fc.weight", "classifier.weight")
        rule("head.fc.bias", "classifier.bias")
    _check_uses(rules, shapes, what)

    wanted = dict(embed_dim=embed, depths=depths, num_heads=heads, window_size=window, img_size=img,
                  patch_size=patch, in_chans=chans, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)
    return timm_conversion(wanted, _VARIANTS, _COMMON, hf_config, num_classes, rules)
