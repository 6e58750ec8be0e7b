"""``zoo.load``: any zoo output (a folder or ``hf-hub:ORG/NAME``) as a module in eval mode.

A plugin whose outputs are not one timm architecture says how to open them (the ``zoo_open_output``
hook, e.g. the stitch plugin's networks); everything else opens as a timm model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from zoo import host as _host
from zoo.kit.train.device import resolve_device
from zoo.kit.strategy.errors import BadInput
from zoo.kit._infra.hub_client import folder_of


def load(spec: str | Path, *, device: str = "cpu", plugins: Sequence[str] = (), base: str | Path | None = None):
    """Any zoo output as a module in eval mode: what a plugin's ``zoo_open_output`` returns for it (a
    stitched network, with ``select``), else a timm model. ``spec`` is a folder or ``hf-hub:ORG/NAME[@REV]``;
    ``base``: for a LoRA adapter, the model it applies onto when its adapter_config.json names none found here."""
    folder = folder_of(str(spec))
    config_path = folder / "config.json"
    host = _host.load(list(plugins))
    config = None
    if not config_path.is_file():
        recipe = folder / "zoo.json"
        tasks = json.loads(recipe.read_text()).get("tasks") if recipe.is_file() else None
        if tasks:  # a --multi-task output: one timm repo per task inside
            raise BadInput(f"{spec} is a multi-task merge with one model per task: load one of them, e.g. "
                           f"zoo.load('{Path(str(spec)) / next(iter(tasks))}') (tasks: {', '.join(tasks)})")
        from zoo.kit.members import formats

        if not any(f.claims(folder, {}) for f in formats()):  # a PEFT adapter has no config.json
            raise BadInput(f"{spec}: no config.json; give a folder zoo wrote (or any timm folder)")
    else:
        try:
            config = json.loads(config_path.read_text())
        except ValueError as e:
            raise BadInput(f"{spec}: config.json is not valid JSON ({e})") from None
    model = host.pm.hook.zoo_open_output(folder=folder, config=config) if config is not None else None
    if model is None:
        from zoo.api.combine import whole
        from zoo.registry import resolve

        onto = resolve(str(base), host) if base is not None else None
        model = whole(resolve(str(folder), host), onto, host=host).create_model()
    return model.to(resolve_device(device)).eval()
