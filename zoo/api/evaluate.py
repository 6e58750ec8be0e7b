"""``zoo eval``: top-1, NLL, ECE (and plugins' metrics) of any model spec on labelled data."""

from __future__ import annotations

from typing import Sequence

from zoo import host as _host
from zoo.kit._infra.progress import Progress


def evaluate(model: str, data: str, *, device: str = "auto", arch: str | None = None,
             allow_pickle: bool = False, plugins: Sequence[str] = (), progress: Progress | None = None,
             base: str | None = None):
    """Top-1, NLL and ECE of a model (any member spec: a zoo output folder, hf-hub:..., a file) on data.
    ``base``: the model a LoRA adapter applies onto, when its adapter_config.json does not name one here."""
    from zoo.kit.data import data_config, load_split
    from zoo.kit.train.device import resolve_device
    from zoo.kit.measure.metrics import evaluate_model
    from zoo.registry import resolve

    host = _host.load(list(plugins))
    from zoo.api.combine import whole

    onto = resolve(base, host, allow_pickle=allow_pickle) if base else None
    member = whole(resolve(model, host, arch=arch, allow_pickle=allow_pickle), onto, host=host,
                   allow_pickle=allow_pickle)
    split = load_split(data, data_config(member.pretrained_cfg), label_names=member.label_names,
                       num_classes=member.num_classes, progress=progress)
    # an output that is not one timm architecture (an ensemble, a stitched network) opens as its plugin says
    opened = host.pm.hook.zoo_open_output(folder=member.root, config=member.config) if member.root else None
    model = opened if opened is not None else member.create_model()
    return evaluate_model(model, split, resolve_device(device), extra=host.metrics())
