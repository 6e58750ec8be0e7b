"""ResNet: timm's plain ResNet <-> transformers' ResNetForImageClassification, exactly.

Covered: the torchvision-style ResNet ("v1.5") of both: a single 7x7 stride-2 stem conv of 64 channels and
a 3x3 max-pool, four stages of basic (resnet18/34) or bottleneck (resnet26/50/101/152/200) blocks that
stride in the first block's 3x3 conv (stage 1 does not stride), a 1x1 conv + BatchNorm projection
shortcut where shape or stride changes, ReLU, average pooling and a linear head; any depths and stage
widths. Left out (NoConversion): timm's deep stems and average-pool shortcuts (resnet*c/d/s/t), ResNeXt
and wide ResNets (grouped or wider 3x3 convs), SE/anti-aliasing/other norms or activations, and
transformers' ``downsample_in_bottleneck`` (stride in the first 1x1 conv, the original "v1") and
``downsample_in_first_stage``. Which is which is decided on the network timm builds (on the meta device).
"""

from __future__ import annotations

import re
from typing import Any

from . import Conversion, NoConversion, Rule
from .common import build_timm as _build_timm, check_shapes, timm_labels as _labels


def _check_shapes(expected: dict[str, tuple[int, ...]], shapes: dict[str, tuple[int, ...]], what: str):
    """As the other families, but a checkpoint may lack BatchNorm's counters (they are filled with zeros)."""
    check_shapes(expected, shapes, what, optional=[k for k in expected if k.endswith(".num_batches_tracked")])

MODEL_TYPES = ("resnet",)

#: timm's plain ResNets: a single 7x7 stem conv (the c/d/s/t suffixes mean other stems or shortcuts)
_NAME = re.compile(r"^resnet(18|26|34|50|101|152|200)$")

#: stage depths -> the timm name that has them, by block type
_NAMED = {"basic": {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"},
          "bottleneck": {(2, 2, 2, 2): "resnet26", (3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101",
                         (3, 8, 36, 3): "resnet152", (3, 24, 36, 3): "resnet200"}}
_EXPANSION = {"basic": 1, "bottleneck": 4}
#: the stem width of timm's single-conv stem (ResNet ignores stem_width unless the stem is deep)
_STEM = 64
#: BatchNorm eps of both (torch's default; transformers' ResNet uses plain nn.BatchNorm2d)
_BN_EPS = 1e-5
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def TIMM(architecture: str) -> bool:
    """Whether a timm architecture name is a plain ResNet (7x7 stem, basic or bottleneck blocks)."""
    return bool(_NAME.match(architecture.split(".")[0]))






def _count(weight):
    """A BatchNorm's num_batches_tracked for a source that has none (it only matters to training with
    momentum=None): zero, on the weight's device."""
    import torch

    return torch.zeros((), dtype=torch.long, device=weight.device)


def _plan(model) -> dict[str, Any]:
    """The transformers ResNetConfig values of a timm network, or NoConversion naming what it lacks."""
    import torch
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet
    from torch import nn

    def no(what: str):
        raise NoConversion(f"timm ResNet with {what}: transformers' ResNet has no such part")

    def conv(m, kernel: int, stride: int, what: str):
        if (type(m) is not nn.Conv2d or m.kernel_size != (kernel, kernel) or m.stride != (stride, stride)
                or m.padding != (kernel // 2, kernel // 2) or m.dilation != (1, 1) or m.groups != 1
                or m.bias is not None or m.padding_mode != "zeros"):
            no(f"{what} {m}")

    def relu(m):
        x = torch.linspace(-4, 4, 101)
        if not isinstance(m, nn.Module) or not torch.equal(m(x.clone()), torch.relu(x)):
            no(f"activation {m}")

    if type(model) is not ResNet:
        no(f"the network class {type(model).__name__}")
    conv(model.conv1, 7, 2, "the stem")
    relu(model.act1)
    pool = model.maxpool
    if type(pool) is not nn.MaxPool2d or (pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                                          pool.ceil_mode) != (3, 2, 1, 1, False):
        no(f"stem pooling {pool}")
    gp = model.global_pool
    if getattr(gp, "pool_type", None) != "avg" or not isinstance(model.fc, nn.Linear):
        no(f"head {gp} {model.fc}")
    norms = [model.bn1]
    kinds, depths, sizes = set(), [], []
    channels = model.conv1.out_channels
    stages = [getattr(model, f"layer{n}", None) for n in range(1, 6)]
    if any(s is None for s in stages[:4]) or stages[4] is not None:
        no("other than four stages")
    for s, stage in enumerate(stages[:4]):
        for b, block in enumerate(stage):
            kind = {BasicBlock: "basic", Bottleneck: "bottleneck"}.get(type(block))
            if kind is None:
                no(f"blocks of class {type(block).__name__}")
            kinds.add(kind)
            stride = 2 if s > 0 and b == 0 else 1
            out = block.conv3.out_channels if kind == "bottleneck" else block.conv2.out_channels
            if kind == "bottleneck":
                width = out // 4  # transformers' bottleneck reduction
                conv(block.conv1, 1, 1, "a first bottleneck conv")
                conv(block.conv2, 3, stride, "a bottleneck 3x3 conv")
                conv(block.conv3, 1, 1, "a last bottleneck conv")
                if block.conv1.out_channels != width or block.conv2.out_channels != width or out % 4:
                    no(f"bottleneck width {block.conv2.out_channels} for {out} channels (ResNeXt / wide)")
                norms += [block.bn1, block.bn2, block.bn3]
                acts = [block.act1, block.act2, block.act3]
            else:
                conv(block.conv1, 3, stride, "a basic-block conv")
                conv(block.conv2, 3, 1, "a basic-block conv")
                if block.conv1.out_channels != out:
                    no("a reduced first conv")
                norms += [block.bn1, block.bn2]
                acts = [block.act1, block.act2]
            for act in acts:
                relu(act)
            if block.se is not None or not isinstance(block.aa, nn.Identity):
                no("squeeze-excitation or anti-aliasing")
            if not isinstance(block.drop_block, nn.Identity):
                no("DropBlock")
            shortcut = channels != out or stride != 1  # where transformers' ResNet has one
            if shortcut != (block.downsample is not None):
                no("a shortcut where transformers' ResNet has none (or the reverse)")
            if shortcut:
                down = block.downsample
                if type(down) is not nn.Sequential or len(down) != 2:
                    no(f"shortcut {down}")
                conv(down[0], 1, stride, "a shortcut")
                norms.append(down[1])
            channels = out
        depths.append(len(stage))
        sizes.append(channels)
    for norm in norms:
        if type(norm) is not nn.BatchNorm2d or not (norm.affine and norm.track_running_stats):
            no(f"norm layers {norm}")
        if norm.eps != _BN_EPS:
            no(f"BatchNorm eps {norm.eps:g} (transformers' is {_BN_EPS:g})")
    if len(kinds) != 1:
        no("basic and bottleneck blocks mixed")
    if model.conv1.out_channels != _STEM:
        no(f"a stem of {model.conv1.out_channels} channels")
    return {"num_channels": model.conv1.in_channels, "embedding_size": _STEM, "hidden_sizes": sizes,
            "depths": depths, "layer_type": kinds.pop(), "hidden_act": "relu", "downsample_in_first_stage": False,
            "downsample_in_bottleneck": False, "num_labels": model.fc.out_features}


def _hf_name(timm_name: str) -> str:
    """The transformers name of a timm ResNet tensor."""
    if timm_name.startswith("conv1."):
        return "resnet.embedder.embedder.convolution." + timm_name[6:]
    if timm_name.startswith("bn1."):
        return "resnet.embedder.embedder.normalization." + timm_name[4:]
    if timm_name.startswith("fc."):
        return "classifier.1." + timm_name[3:]
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn|downsample\.)(\d)\.(\w+)", timm_name)
    if not m:
        raise NoConversion(f"timm ResNet tensor {timm_name} has no transformers counterpart")
    stage, block, part, k, leaf = m.groups()
    prefix = f"resnet.encoder.stages.{int(stage) - 1}.layers.{block}"
    if part == "downsample.":
        return f"{prefix}.shortcut.{'convolution' if k == '0' else 'normalization'}.{leaf}"
    return f"{prefix}.layer.{int(k) - 1}.{'convolution' if part == 'conv' else 'normalization'}.{leaf}"


def _rules(pairs: list[tuple[str, str]], shapes: dict[str, tuple[int, ...]]) -> list[Rule]:
    """Renames (source, target); a BatchNorm count the source lacks is made (zero) from its weight."""
    rules = []
    for source, target in pairs:
        if source.endswith(".num_batches_tracked") and source not in shapes:
            rules.append(Rule(target, (source.rsplit(".", 1)[0] + ".weight",), _count))
        else:
            rules.append(Rule(target, (source,)))
    return rules




def to_transformers(timm_config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> Conversion:
    """transformers' ResNetForImageClassification config and tensors for a timm ResNet."""
    import transformers

    architecture = timm_config["architecture"]
    if not TIMM(architecture):
        raise NoConversion(f"timm's {architecture} is not a plain ResNet")
    model_args = dict(timm_config.get("model_args") or {})
    num_classes = int(timm_config.get("num_classes", model_args.get("num_classes", 1000)))
    model = _build_timm(architecture, num_classes, model_args)
    plan = _plan(model)
    state = model.state_dict()
    _check_shapes({k: tuple(v.shape) for k, v in state.items()}, shapes, f"timm's {architecture} with {model_args}")
    labels = _labels(timm_config, plan.pop("num_labels"))
    config = transformers.ResNetConfig(
        **plan, architectures=["ResNetForImageClassification"],
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)}).to_dict()
    return Conversion(config=config, rules=_rules([(k, _hf_name(k)) for k in state], shapes))


def to_timm(hf_config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> Conversion:
    """timm's config and tensors for transformers' ResNetForImageClassification."""
    import transformers

    if hf_config.get("model_type") not in MODEL_TYPES:
        raise NoConversion(f"transformers' {hf_config.get('model_type')!r} is not ResNet")
    architectures = hf_config.get("architectures") or ["ResNetForImageClassification"]
    if "ResNetForImageClassification" not in architectures:
        raise NoConversion(f"transformers' {architectures} is no ResNet image classifier")
    config = transformers.AutoConfig.for_model(**hf_config)
    if config.layer_type not in _EXPANSION:
        raise NoConversion(f"transformers ResNet with layer_type {config.layer_type!r}")
    if config.downsample_in_bottleneck and config.layer_type == "bottleneck":
        raise NoConversion("transformers ResNet with downsample_in_bottleneck (stride in the first 1x1 conv): "
                           "timm's ResNet strides in the 3x3 conv")
    if config.downsample_in_first_stage:
        raise NoConversion("transformers ResNet with downsample_in_first_stage: timm's first stage does not stride")
    if config.hidden_act != "relu":
        raise NoConversion(f"transformers ResNet with hidden_act {config.hidden_act!r}")
    if config.embedding_size != _STEM:
        raise NoConversion(f"transformers ResNet with a stem of {config.embedding_size} channels: timm's "
                           f"7x7 stem has {_STEM}")
    if len(config.depths) != 4 or len(config.hidden_sizes) != 4:
        raise NoConversion(f"transformers ResNet with {len(config.depths)} stages: timm's ResNet has 4")
    expansion = _EXPANSION[config.layer_type]
    if any(size % expansion for size in config.hidden_sizes):
        raise NoConversion(f"transformers ResNet with hidden_sizes {config.hidden_sizes} (not multiples of 4)")
    if config.num_labels < 1 or "classifier.1.weight" not in shapes:
        raise NoConversion("transformers ResNet without a classifier")
    want = {"num_channels": config.num_channels, "embedding_size": _STEM, "hidden_sizes": list(config.hidden_sizes),
            "depths": list(config.depths), "layer_type": config.layer_type, "hidden_act": "relu",
            "downsample_in_first_stage": False, "downsample_in_bottleneck": False, "num_labels": config.num_labels}

    depths = tuple(config.depths)
    named = _NAMED[config.layer_type]
    architecture = named.get(depths, next(iter(named.values())))
    model_args: dict[str, Any] = {}
    if depths not in named:
        model_args["layers"] = list(depths)
    planes = [size // expansion for size in config.hidden_sizes]
    if planes != [64, 128, 256, 512]:
        model_args["channels"] = planes
    if config.num_channels != 3:
        model_args["in_chans"] = config.num_channels
    model = _build_timm(architecture, config.num_labels, model_args)
    got = _plan(model)
    if got != want:
        raise NoConversion(f"timm's {architecture} with {model_args} is not this transformers ResNet: "
                           f"{ {k: (got[k], want[k]) for k in want if got.get(k) != want[k]} }")
    state = model.state_dict()
    pairs = [(_hf_name(k), k) for k in state]
    _check_shapes({h: tuple(state[t].shape) for h, t in pairs}, shapes, "transformers' ResNet of this config")
    labels = [str(config.id2label[i]) for i in range(config.num_labels)]
    return Conversion(config={"architecture": architecture, "num_classes": config.num_labels,
                              "model_args": model_args, "pretrained_cfg": {"label_names": labels}},
                      rules=_rules(pairs, shapes))
