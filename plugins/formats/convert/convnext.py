"""ConvNeXt (v1): timm's ``convnext_*`` ↔ transformers' ``ConvNextForImageClassification``.

The two lay out the same network: a patchify stem (conv + LayerNorm), four stages of blocks (7×7 depthwise
conv, LayerNorm, MLP of ratio 4, layer scale ``gamma``), each stage after the first opened by LayerNorm + a
2×2 stride-2 conv, then global average pooling, LayerNorm and the classifier. Tensors map one to one; the
small timm models (atto … nano) run their MLP as 1×1 convs, whose weights are transformers' linear weights
with two trailing unit dimensions. A transformers model without layer scale (``layer_scale_init_value=0``)
becomes a timm one whose ``gamma`` is all ones (timm's ``create_model`` cannot be told ``ls_init_value=None``).

Every LayerNorm inside transformers' ConvNeXt has eps 1e-6 and only the final one (on the pooled features)
follows ``layer_norm_eps``, while timm has one eps for all. The Hub's ``facebook/convnext-*`` say 1e-12
there: converted to timm, that one norm gets 1e-6, which moves the logits by ~2e-6 on a full-size
``convnext_tiny`` (the pooled features' variance is far above either eps), within the 1e-5 the
conversions are held to; a larger eps than 1e-6 is refused. Not covered at all (:class:`NoConversion`):
timm's overlapping stems (``_ols``), RMS/simple norms, norm-before-pool heads
(``_hnf``), MLP heads (``large_mlp``), GRN blocks (ConvNeXt-V2), kernels other than 7 or dilated stages.
"""

from __future__ import annotations

from typing import Any

from zoo.plugins.formats.convert import Conversion, NoConversion, Rule
from zoo.plugins.formats.convert.common import check_model_args, check_uses, timm_conversion
from zoo.plugins.formats.convert.common import count_indices as _count
from zoo.plugins.formats.convert.common import labels_or_placeholders as _labels


def _check_uses(rules: list[Rule], shapes: dict[str, tuple[int, ...]], what: str) -> None:
    check_uses(rules, shapes, what, "ConvNeXt")

#: timm's covered architectures and the defaults each gives the arguments a conversion may set
_VARIANTS: dict[str, dict[str, Any]] = {
    "convnext_atto": dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), conv_mlp=True),
    "convnext_femto": dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), conv_mlp=True),
    "convnext_pico": dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512), conv_mlp=True),
    "convnext_nano": dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), conv_mlp=True),
    "convnext_tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), conv_mlp=False),
    "convnext_small": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), conv_mlp=False),
    "convnext_base": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), conv_mlp=False),
    "convnext_large": dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), conv_mlp=False),
    "convnext_xlarge": dict(depths=(3, 3, 27, 3), dims=(256, 512, 1024, 2048), conv_mlp=False),
}
#: what every covered variant shares (timm's ConvNeXt defaults)
_COMMON = dict(patch_size=4, ls_init_value=1e-6, in_chans=3)

#: timm ``model_args`` that leave the function as the conversion plans it when they have these values
#: (sizes are read from the tensors' shapes; dropout rates and init scales do nothing in eval mode)
_NEUTRAL_ARGS: dict[str, tuple] = {
    "kernel_sizes": (7, [7] * 4, (7,) * 4),
    "norm_eps": (None, 1e-6),
    "act_layer": ("gelu",),
    "norm_layer": (None, "layernorm", "layernorm2d"),
    "global_pool": ("avg",),
    "output_stride": (32,),
    "stem_type": ("patch",),
    "head_norm_first": (False,),
    "head_hidden_size": (None,),
    "conv_bias": (True,),
    "use_grn": (False,),
}
_FREE_ARGS = {"depths", "dims", "patch_size", "ls_init_value", "conv_mlp", "in_chans", "num_classes",
              "drop_rate", "drop_path_rate", "head_init_scale"}

_HF_EPS = 1e-6  # the eps of every LayerNorm in transformers' ConvNeXt but the last


def _name(architecture: str) -> str:
    return architecture.split(".", 1)[0]  # "convnext_tiny.fb_in1k" → "convnext_tiny"


def TIMM(architecture: str) -> bool:
    return _name(architecture) in _VARIANTS


MODEL_TYPES = ("convnext",)


# ----------------------------------------------------------------------------------------- tensor functions

def _as_linear(weight):
    """A 1×1 conv weight (out, in, 1, 1) as the linear weight (out, in) it computes."""
    return weight.reshape(weight.shape[0], weight.shape[1])


def _ones(like):
    """A layer scale that scales by one (x * 1.0 is x exactly), shaped like the channel vector ``like``."""
    import torch

    return torch.ones_like(like)


# ------------------------------------------------------------------------------------------------- helpers









def _check_timm_args(timm_config: dict[str, Any]) -> None:
    """Refuse the names and ``model_args`` whose difference the tensors' shapes do not show (eps, activation,
    pooling, dilation)."""
    check_model_args(timm_config, "ConvNeXt", _VARIANTS, _FREE_ARGS, _NEUTRAL_ARGS)


# ----------------------------------------------------------------------------------------- timm → transformers

def to_transformers(timm_config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> Conversion:
    """The ConvNextForImageClassification that computes the timm model's logits, and its tensors' rules."""
    from transformers import ConvNextConfig

    arch = timm_config["architecture"]
    _check_timm_args(timm_config)
    depths = [_count(shapes, rf"stages\.{i}\.blocks\.(\d+)\.") for i in range(4)]
    if 0 in depths or _count(shapes, r"stages\.(\d+)\.") != 4:
        raise NoConversion(f"timm's {arch}: expected four stages of blocks, found {depths}")
    dims = [shapes[f"stages.{i}.blocks.0.conv_dw.weight"][0] for i in range(4)]
    stem = shapes.get("stem.0.weight")
    if stem is None or len(stem) != 4 or stem[2] != stem[3]:
        raise NoConversion(f"timm's {arch}: no patchify stem (stem.0 conv)")
    patch = stem[2]
    has_gamma = "stages.0.blocks.0.gamma" in shapes

    rules: list[Rule] = []

    def rule(target, source, fn=None):
        rules.append(Rule(target, (source,), fn))

    hf = "convnext."
    rule(hf + "embeddings.patch_embeddings.weight", "stem.0.weight")
    rule(hf + "embeddings.patch_embeddings.bias", "stem.0.bias")
    rule(hf + "embeddings.layernorm.weight", "stem.1.weight")
    rule(hf + "embeddings.layernorm.bias", "stem.1.bias")
    for i in range(4):
        t_stage, h_stage = f"stages.{i}.", f"{hf}encoder.stages.{i}."
        if i > 0:
            ds = shapes.get(t_stage + "downsample.1.weight")
            if ds is None or tuple(ds[2:]) != (2, 2):
                raise NoConversion(f"timm's {arch}: stage {i} does not open with a 2×2 stride-2 conv")
            for part in ("0.weight", "0.bias", "1.weight", "1.bias"):
                rule(f"{h_stage}downsampling_layer.{part}", f"{t_stage}downsample.{part}")
        for j in range(depths[i]):
            t, h = f"{t_stage}blocks.{j}.", f"{h_stage}layers.{j}."
            dw = shapes.get(t + "conv_dw.weight", ())
            if tuple(dw[1:]) != (1, 7, 7):
                raise NoConversion(f"timm's {arch}: block {t[:-1]} has a depthwise kernel {tuple(dw[2:])}, "
                                   "transformers' ConvNeXt only 7×7")
            fc1 = shapes.get(t + "mlp.fc1.weight", ())
            if len(fc1) < 2 or fc1[0] != 4 * dims[i]:
                raise NoConversion(f"timm's {arch}: block {t[:-1]} has an MLP ratio other than 4")
            squeeze = _as_linear if len(fc1) == 4 else None  # conv_mlp: 1×1 convs
            if has_gamma:
                rule(h + "layer_scale_parameter", t + "gamma")
            rule(h + "dwconv.weight", t + "conv_dw.weight")
            rule(h + "dwconv.bias", t + "conv_dw.bias")
            rule(h + "layernorm.weight", t + "norm.weight")
            rule(h + "layernorm.bias", t + "norm.bias")
            rule(h + "pwconv1.weight", t + "mlp.fc1.weight", squeeze)
            rule(h + "pwconv1.bias", t + "mlp.fc1.bias")
            rule(h + "pwconv2.weight", t + "mlp.fc2.weight", squeeze)
            rule(h + "pwconv2.bias", t + "mlp.fc2.bias")
    rule(hf + "layernorm.weight", "head.norm.weight")
    rule(hf + "layernorm.bias", "head.norm.bias")
    num_classes = shapes["head.fc.weight"][0] if "head.fc.weight" in shapes else 0
    if num_classes:
        rule("classifier.weight", "head.fc.weight")
        rule("classifier.bias", "head.fc.bias")
    _check_uses(rules, shapes, f"timm's {arch}")

    pretrained = timm_config.get("pretrained_cfg") or {}
    labels = _labels(pretrained.get("label_names"), num_classes)
    size = (pretrained.get("input_size") or (3, 224, 224))[-1]
    config = ConvNextConfig(
        num_channels=stem[1], patch_size=patch, num_stages=4, hidden_sizes=dims, depths=depths,
        hidden_act="gelu", layer_norm_eps=_HF_EPS, layer_scale_init_value=1e-6 if has_gamma else 0.0,
        drop_path_rate=0.0, image_size=size,
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        architectures=["ConvNextForImageClassification"],
    ).to_dict()
    return Conversion(config=config, rules=rules)


# ----------------------------------------------------------------------------------------- transformers → timm

def to_timm(hf_config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> Conversion:
    """The timm ConvNeXt that computes the transformers model's logits, and its tensors' rules."""
    what = f"transformers' convnext ({', '.join(hf_config.get('architectures') or ['?'])})"
    if hf_config.get("model_type") != "convnext":
        raise NoConversion(f"{what}: model_type {hf_config.get('model_type')!r} is not convnext")
    eps = float(hf_config.get("layer_norm_eps", 1e-12))
    if eps > _HF_EPS:  # 1e-12 (the Hub's) becomes 1e-6: see the module docstring
        raise NoConversion(f"{what}: layer_norm_eps {eps:g} on the pooled features; timm's ConvNeXt uses one eps "
                           f"for every LayerNorm and transformers' inner ones are {_HF_EPS:g}, so only "
                           f"layer_norm_eps <= {_HF_EPS:g} converts")
    if hf_config.get("hidden_act", "gelu") != "gelu":
        raise NoConversion(f"{what}: hidden_act {hf_config.get('hidden_act')!r} (timm's ConvNeXt: exact gelu)")
    hf = "convnext."
    depths = [_count(shapes, rf"convnext\.encoder\.stages\.{i}\.layers\.(\d+)\.") for i in range(4)]
    if 0 in depths or _count(shapes, r"convnext\.encoder\.stages\.(\d+)\.") != 4:
        raise NoConversion(f"{what}: timm's ConvNeXt has four stages, this has {hf_config.get('num_stages')}")
    dims = [shapes[f"{hf}encoder.stages.{i}.layers.0.dwconv.weight"][0] for i in range(4)]
    stem = shapes[hf + "embeddings.patch_embeddings.weight"]
    has_gamma = f"{hf}encoder.stages.0.layers.0.layer_scale_parameter" in shapes

    rules: list[Rule] = []

    def rule(target, source, fn=None):
        rules.append(Rule(target, (source,), fn))

    rule("stem.0.weight", hf + "embeddings.patch_embeddings.weight")
    rule("stem.0.bias", hf + "embeddings.patch_embeddings.bias")
    rule("stem.1.weight", hf + "embeddings.layernorm.weight")
    rule("stem.1.bias", hf + "embeddings.layernorm.bias")
    for i in range(4):
        t_stage, h_stage = f"stages.{i}.", f"{hf}encoder.stages.{i}."
        if i > 0:
            for part in ("0.weight", "0.bias", "1.weight", "1.bias"):
                rule(f"{t_stage}downsample.{part}", f"{h_stage}downsampling_layer.{part}")
        for j in range(depths[i]):
            t, h = f"{t_stage}blocks.{j}.", f"{h_stage}layers.{j}."
            if has_gamma:
                rule(t + "gamma", h + "layer_scale_parameter")
            else:  # timm's create_model drops ls_init_value=None; a layer scale of ones is the same function
                rule(t + "gamma", h + "dwconv.bias", _ones)
            rule(t + "conv_dw.weight", h + "dwconv.weight")
            rule(t + "conv_dw.bias", h + "dwconv.bias")
            rule(t + "norm.weight", h + "layernorm.weight")
            rule(t + "norm.bias", h + "layernorm.bias")
            rule(t + "mlp.fc1.weight", h + "pwconv1.weight")
            rule(t + "mlp.fc1.bias", h + "pwconv1.bias")
            rule(t + "mlp.fc2.weight", h + "pwconv2.weight")
            rule(t + "mlp.fc2.bias", h + "pwconv2.bias")
    rule("head.norm.weight", hf + "layernorm.weight")
    rule("head.norm.bias", hf + "layernorm.bias")
    num_classes = shapes["classifier.weight"][0] if "classifier.weight" in shapes else 0
    if num_classes:
        rule("head.fc.weight", "classifier.weight")
        rule("head.fc.bias", "classifier.bias")
    _check_uses(rules, shapes, what)

    wanted = dict(depths=depths, dims=dims, patch_size=stem[2], in_chans=stem[1], conv_mlp=False)
    return timm_conversion(wanted, _VARIANTS, _COMMON, hf_config, num_classes, rules)
