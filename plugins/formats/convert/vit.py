"""ViT: timm's plain VisionTransformer <-> transformers' ViTForImageClassification, exactly.

Covered: a class token read by a linear head, learned position embeddings over class token and patches,
pre-norm blocks (LayerNorm, fused qkv attention, GELU MLP), a final LayerNorm. That is timm's ``vit_*``
classics (tiny ... huge, any patch and image size) and the non-distilled ``deit_*`` (the same network),
and transformers' ``model_type`` "vit" (google/vit-*, facebook/deit-*-224). Left out: DeiT with a
distillation token (transformers' "deit" model type, timm's ``deit_*_distilled_*``), and every timm ViT
that adds something transformers' ViT lacks (layer scale, register tokens, pre-norm, average pooling,
qk-norm, rope, ...). Which is which is decided on the network timm builds (on the meta device), not on
the name alone, so a variant the name test lets through still raises :class:`NoConversion`.

Transformers tensors are named as transformers writes them to disk (``vit.encoder.layer.N.attention.
attention.query``, the names every transformers version loads); to_timm also reads the in-memory names
of transformers 5 (``vit.layers.N.attention.q_proj``).
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

from . import Conversion, NoConversion, Rule
from .common import build_timm as _build_timm, check_shapes as _check_shapes, timm_labels as _labels

MODEL_TYPES = ("vit",)

#: timm's ViT LayerNorm eps (timm.layers.LayerNorm); model_args cannot change it (a class, not JSON)
TIMM_EPS = 1e-6

#: timm's plain ViTs (checked against timm 1.0's registry: exactly the vit_*/deit_* names _plan accepts)
_NAME = re.compile(r"^(vit_(tiny|small|base|large|huge|giant|gigantic)_patch\d+_\d+(_miil)?"
                   r"|deit_(tiny|small|base)_patch16_\d+)$")

#: timm sizes -> the name part of a timm architecture
_SIZES = {(192, 12, 3): "tiny", (384, 12, 6): "small", (768, 12, 12): "base", (1024, 24, 16): "large",
          (1280, 32, 16): "huge"}

#: transformers hidden_act -> timm act_layer (None: timm's default, exact GELU)
_ACTS = {"gelu": None, "gelu_pytorch_tanh": "gelu_tanh"}

#: a transformers layer's tensors by role, as written to disk and as held in memory by transformers 5
_DISK = {"norm1": "vit.encoder.layer.{i}.layernorm_before", "q": "vit.encoder.layer.{i}.attention.attention.query",
         "k": "vit.encoder.layer.{i}.attention.attention.key", "v": "vit.encoder.layer.{i}.attention.attention.value",
         "proj": "vit.encoder.layer.{i}.attention.output.dense", "norm2": "vit.encoder.layer.{i}.layernorm_after",
         "fc1": "vit.encoder.layer.{i}.intermediate.dense", "fc2": "vit.encoder.layer.{i}.output.dense"}
_MEMORY = {"norm1": "vit.layers.{i}.layernorm_before", "q": "vit.layers.{i}.attention.q_proj",
           "k": "vit.layers.{i}.attention.k_proj", "v": "vit.layers.{i}.attention.v_proj",
           "proj": "vit.layers.{i}.attention.o_proj", "norm2": "vit.layers.{i}.layernorm_after",
           "fc1": "vit.layers.{i}.mlp.fc1", "fc2": "vit.layers.{i}.mlp.fc2"}
#: the same roles in timm's block
_TIMM = {"norm1": "blocks.{i}.norm1", "proj": "blocks.{i}.attn.proj", "norm2": "blocks.{i}.norm2",
         "fc1": "blocks.{i}.mlp.fc1", "fc2": "blocks.{i}.mlp.fc2"}
#: tensors outside the blocks, timm -> transformers
_OUTER = {"cls_token": "vit.embeddings.cls_token", "pos_embed": "vit.embeddings.position_embeddings",
          "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
          "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
          "norm.weight": "vit.layernorm.weight", "norm.bias": "vit.layernorm.bias",
          "head.weight": "classifier.weight", "head.bias": "classifier.bias"}


def TIMM(architecture: str) -> bool:
    """Whether a timm architecture name is a plain ViT (class token, no distillation token, no extras)."""
    return bool(_NAME.match(architecture.split(".")[0]))


def _third(qkv, index: int):
    """The query (0), key (1) or value (2) part of timm's fused qkv weight or bias."""
    return qkv.chunk(3, dim=0)[index].clone()


def _join(q, k, v):
    """timm's fused qkv from transformers' separate query, key and value."""
    import torch

    return torch.cat([q, k, v], dim=0)


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))






def _activation(act) -> str:
    """transformers' hidden_act computing what timm's activation module computes (bit for bit)."""
    import torch
    import torch.nn.functional as F

    x = torch.linspace(-8, 8, 2001)
    y = act(x.clone())
    if torch.equal(y, F.gelu(x)):
        return "gelu"
    if torch.equal(y, F.gelu(x, approximate="tanh")):
        return "gelu_pytorch_tanh"
    raise NoConversion(f"timm ViT activation {act!r} has no transformers counterpart (GELU, exact or tanh)")


def _plan(model) -> dict[str, Any]:
    """The transformers ViTConfig values of a timm network, or NoConversion naming what ViT lacks."""
    from timm.layers import PatchEmbed
    from timm.models.vision_transformer import Attention, Block, Mlp, VisionTransformer
    from torch import nn

    def no(what: str):
        raise NoConversion(f"timm ViT with {what}: transformers' ViT has no such part")

    if type(model) is not VisionTransformer:
        no(f"the network class {type(model).__name__}")
    if model.cls_token is None or model.global_pool != "token":
        no(f"pooling {model.global_pool!r} (transformers' ViT reads the class token)")
    if model.reg_token is not None:
        no("register tokens")
    if model.no_embed_class or model.pos_embed is None:
        no("no position embedding for the class token")
    if model.attn_pool is not None:
        no("attention pooling")
    if not isinstance(model.norm_pre, nn.Identity):
        no("a norm before the blocks (pre_norm)")
    if not isinstance(model.fc_norm, nn.Identity):
        no("a norm after pooling (fc_norm)")
    if not isinstance(model.head, nn.Linear):
        no("no linear head (num_classes 0)")
    pe = model.patch_embed
    if type(pe) is not PatchEmbed or not isinstance(pe.norm, nn.Identity) or pe.proj.bias is None:
        no("a patch embedding other than a biased convolution")
    if tuple(pe.proj.kernel_size) != tuple(pe.proj.stride) or any(pe.proj.padding) or pe.dynamic_img_pad:
        no("overlapping or padded patches")
    norms = [model.norm]
    qkv_bias, hidden_act = set(), set()
    for block in model.blocks:
        if type(block) is not Block or type(block.attn) is not Attention or type(block.mlp) is not Mlp:
            no(f"blocks of class {type(block).__name__}")
        attn, mlp = block.attn, block.mlp
        if not (isinstance(block.ls1, nn.Identity) and isinstance(block.ls2, nn.Identity)):
            no("layer scale (init_values)")
        if not all(isinstance(m, nn.Identity) for m in (attn.q_norm, attn.k_norm, attn.norm, mlp.norm)):
            no("normalised queries/keys or a norm inside attention or MLP")
        if attn.proj.bias is None or mlp.fc1.bias is None or mlp.fc2.bias is None:
            no("unbiased projections")
        if attn.head_dim * attn.num_heads != model.embed_dim or attn.scale != attn.head_dim ** -0.5:
            no("a head size other than embed_dim / num_heads")
        norms += [block.norm1, block.norm2]
        qkv_bias.add(attn.qkv.bias is not None)
        hidden_act.add(_activation(mlp.act))
    for norm in norms:
        if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm.bias is None:
            no(f"norm layers {type(norm).__name__}")
    eps = {norm.eps for norm in norms}
    heads = {block.attn.num_heads for block in model.blocks}
    inner = {block.mlp.fc1.out_features for block in model.blocks}
    if len(eps) > 1 or len(qkv_bias) > 1 or len(hidden_act) > 1 or len(heads) > 1 or len(inner) > 1:
        no("blocks that differ from one another")
    size, patch = tuple(pe.img_size), tuple(pe.patch_size)
    return {"hidden_size": model.embed_dim, "num_hidden_layers": len(model.blocks),
            "num_attention_heads": heads.pop(), "intermediate_size": inner.pop(), "hidden_act": hidden_act.pop(),
            "layer_norm_eps": eps.pop(), "image_size": size[0] if size[0] == size[1] else list(size),
            "patch_size": patch[0] if patch[0] == patch[1] else list(patch),
            "num_channels": pe.proj.in_channels, "qkv_bias": qkv_bias.pop(), "num_labels": model.head.out_features}




def _rename(role: str, leaf: str, i: int) -> Rule:
    """transformers' tensor of a role in layer i, as timm's tensor of that role."""
    return Rule(f"{_DISK[role].format(i=i)}.{leaf}", (f"{_TIMM[role].format(i=i)}.{leaf}",))


def _rules_to_transformers(depth: int, qkv_bias: bool) -> list[Rule]:
    """One rule per tensor of transformers' ViT, in its order; q, k and v are thirds of timm's qkv."""
    outer = list(_OUTER.items())
    rules = [Rule(h, (t,)) for t, h in outer[:4]]
    for i in range(depth):
        rules += [_rename(role, leaf, i) for role in ("norm1",) for leaf in ("weight", "bias")]
        for leaf in ("weight", "bias") if qkv_bias else ("weight",):
            rules += [Rule(f"{_DISK[role].format(i=i)}.{leaf}", (f"blocks.{i}.attn.qkv.{leaf}",),
                           partial(_third, index=n)) for n, role in enumerate(("q", "k", "v"))]
        rules += [_rename(role, leaf, i) for role in ("proj", "norm2", "fc1", "fc2") for leaf in ("weight", "bias")]
    return rules + [Rule(h, (t,)) for t, h in outer[4:]]


def to_transformers(timm_config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> Conversion:
    """transformers' ViTForImageClassification config and tensors for a timm ViT."""
    import transformers

    architecture = timm_config["architecture"]
    if not TIMM(architecture):
        raise NoConversion(f"timm's {architecture} is not a plain ViT")
    model_args = dict(timm_config.get("model_args") or {})
    num_classes = int(timm_config.get("num_classes", model_args.get("num_classes", 1000)))
    model = _build_timm(architecture, num_classes, model_args)
    plan = _plan(model)
    _check_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()}, shapes,
                  f"timm's {architecture} with {model_args}")
    labels = _labels(timm_config, plan.pop("num_labels"))
    config = transformers.ViTConfig(
        **plan, architectures=["ViTForImageClassification"],
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)}).to_dict()
    return Conversion(config=config, rules=_rules_to_transformers(plan["num_hidden_layers"], plan["qkv_bias"]))


def _hf_config(hf_config: dict[str, Any]):
    """transformers' full ViTConfig (config.json holds only what differs from the defaults)."""
    import transformers

    if hf_config.get("model_type") not in MODEL_TYPES:
        raise NoConversion(f"transformers' {hf_config.get('model_type')!r} is not ViT")
    architectures = hf_config.get("architectures") or ["ViTForImageClassification"]
    if "ViTForImageClassification" not in architectures:
        raise NoConversion(f"transformers' {architectures} is no ViT image classifier")
    return transformers.AutoConfig.for_model(**hf_config)


def _timm_args(plan: dict[str, Any]) -> dict[str, Any]:
    """timm's VisionTransformer kwargs for a plan (as _plan gives)."""
    return {"img_size": plan["image_size"], "patch_size": plan["patch_size"], "embed_dim": plan["hidden_size"],
            "depth": plan["num_hidden_layers"], "num_heads": plan["num_attention_heads"],
            "mlp_ratio": plan["intermediate_size"] / plan["hidden_size"], "qkv_bias": plan["qkv_bias"],
            "in_chans": plan["num_channels"], "act_layer": _ACTS[plan["hidden_act"]]}


def to_timm(hf_config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> Conversion:
    """timm's config and tensors for transformers' ViTForImageClassification."""
    import timm

    config = _hf_config(hf_config)
    if config.hidden_act not in _ACTS:
        raise NoConversion(f"transformers ViT with hidden_act {config.hidden_act!r}: timm's ViT has exact or "
                           "tanh GELU")
    if config.layer_norm_eps != TIMM_EPS:
        raise NoConversion(f"transformers ViT with layer_norm_eps {config.layer_norm_eps:g}: timm's ViT "
                           f"LayerNorm eps is {TIMM_EPS:g} (not settable from a JSON config), the logits "
                           "would differ")
    hidden, heads, inner = config.hidden_size, config.num_attention_heads, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    if head_dim * heads != hidden:
        raise NoConversion(f"transformers ViT with head size {head_dim} x {heads} heads != {hidden}")
    if config.num_labels < 1 or "classifier.weight" not in shapes:
        raise NoConversion("transformers ViT without a classifier")
    image, patch = _pair(config.image_size), _pair(config.patch_size)
    want = {"hidden_size": hidden, "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": heads,
            "intermediate_size": inner, "hidden_act": config.hidden_act, "layer_norm_eps": TIMM_EPS,
            "image_size": image[0] if image[0] == image[1] else list(image),
            "patch_size": patch[0] if patch[0] == patch[1] else list(patch),
            "num_channels": config.num_channels, "qkv_bias": bool(config.qkv_bias), "num_labels": config.num_labels}

    # the closest named timm ViT, and the model_args that differ from its defaults
    size = _SIZES.get((hidden, config.num_hidden_layers, heads), "base")
    architecture = f"vit_{size}_patch{patch[0]}_{image[0]}"
    if not timm.is_model(architecture):
        architecture = f"vit_{size}_patch16_224"
    default = _timm_args(_plan(_build_timm(architecture, config.num_labels, {})))
    model_args = {k: v for k, v in _timm_args(want).items() if v != default[k]}
    if "act_layer" in model_args and model_args["act_layer"] is None:
        model_args["act_layer"] = "gelu"  # only if the named ViT's default were not exact GELU
    model = _build_timm(architecture, config.num_labels, model_args)
    got = _plan(model)
    if got != want:  # e.g. an intermediate_size that no mlp_ratio reaches
        raise NoConversion(f"timm's {architecture} with {model_args} is not this transformers ViT: "
                           f"{ {k: (got[k], want[k]) for k in want if got.get(k) != want[k]} }")

    names = _MEMORY if any(k.startswith("vit.layers.") for k in shapes) else _DISK
    to_hf = {t: h for t, h in _OUTER.items()}
    for i in range(config.num_hidden_layers):
        for role, timm_name in _TIMM.items():
            for leaf in ("weight", "bias"):
                to_hf[f"{timm_name.format(i=i)}.{leaf}"] = f"{names[role].format(i=i)}.{leaf}"
    rules, expected = [], {}
    for name, tensor in model.state_dict().items():
        qkv = re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", name)
        if qkv:
            i, leaf = qkv.groups()
            parts = tuple(f"{names[role].format(i=i)}.{leaf}" for role in ("q", "k", "v"))
            rules.append(Rule(name, parts, _join))
            expected.update((p, (tensor.shape[0] // 3, *tensor.shape[1:])) for p in parts)
        else:
            rules.append(Rule(name, (to_hf[name],)))
            expected[to_hf[name]] = tuple(tensor.shape)
    # ViTModel's pooler is no part of the classifier (ViTForImageClassification has none): left out
    _check_shapes(expected, {k: v for k, v in shapes.items() if not k.startswith("vit.pooler.")},
                  "transformers' ViT of this config")
    labels = [str(config.id2label[i]) for i in range(config.num_labels)]
    return Conversion(config={"architecture": architecture, "num_classes": config.num_labels,
                              "model_args": model_args, "pretrained_cfg": {"label_names": labels}}, rules=rules)
