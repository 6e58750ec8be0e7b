"""A stitched network on disk: ``config.json`` (anchors, layers, configurations and their measured
cost and accuracy) + ``model.safetensors``; and one configuration exported on its own.

``config.json`` of a stitched network::

    {"zoo_type": "snnet", "family": "vit", "anchors": [{"name", "architecture", "num_classes",
     "model_args", "pretrained_cfg"}, …], "layers": {"0-1_0": [c_in, c_out], …},
     "configs": [{"id", "anchors", "front_block", "back_block", "layer", "gflops", "params", "top1"}, …],
     "default_config": 2, "pretrained_cfg": {…}, "label_names": […], "num_classes": N}

An exported configuration is an ordinary timm folder when it is an anchor alone, and otherwise a
stitched network with that one configuration and only the weights it reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import zoo
from zoo.plugins.stitch.snnet import Config, SNNet, uses

ZOO_TYPE = "snnet"


def is_snnet(config: dict[str, Any]) -> bool:
    return config.get("zoo_type") == ZOO_TYPE


def anchor_config(member) -> dict[str, Any]:
    """What rebuilds an anchor with timm: architecture, classes, constructor arguments, preprocessing."""
    return {"name": member.name, "architecture": member.architecture, "num_classes": member.num_classes,
            "model_args": member.model_args, "pretrained_cfg": member.pretrained_cfg,
            "label_names": member.label_names}


def to_config(net: SNNet, *, anchors: list[dict], pretrained_cfg: dict, label_names: list[str] | None,
              configs: list[Config] | None = None) -> dict[str, Any]:
    configs = net.configs if configs is None else configs
    used_layers = {c.layer for c in configs if c.stitched}
    layers = {name: [int(layer.weight.shape[1]), int(layer.weight.shape[0])]
              for name, layer in net.stitch.items() if name in used_layers}
    rows = [{**c.as_dict(), **{k: v for k, v in net.measured.get(c.id, {}).items()}} for c in configs]
    return {"zoo_type": ZOO_TYPE, "family": net.family.name, "anchors": anchors, "layers": layers, "configs": rows,
            "default_config": net.active if configs is net.configs else configs[0].id,
            "architecture": f"snnet-{net.family.name}",  # not a timm architecture: load with zoo.load
            "num_classes": anchors[-1]["num_classes"], "label_names": label_names,
            "pretrained_cfg": pretrained_cfg}


def from_config(config: dict[str, Any], state_dict: dict | None = None) -> SNNet:
    """Rebuild the network (timm creates each anchor; nothing pretrained is fetched) and load ``state_dict``."""
    import timm

    anchors = []
    for a in config["anchors"]:
        model = timm.create_model(a["architecture"], pretrained=False,
                                  **{**a.get("model_args", {}), "num_classes": a["num_classes"]})
        model.pretrained_cfg = {**model.pretrained_cfg, **a.get("pretrained_cfg", {})}
        anchors.append(model)
    configs, measured = [], {}
    for row in config["configs"]:
        i = int(row["id"])
        configs.append(Config(i, tuple(row["anchors"]), row.get("front_block"), row.get("back_block"), row.get("layer")))
        measured[i] = {k: row[k] for k in ("gflops", "params", "top1") if row.get(k) is not None}
    default = config.get("default_config")
    net = SNNet(anchors, names=[a["name"] for a in config["anchors"]], family=config["family"], configs=configs,
                layers={k: tuple(v) for k, v in config["layers"].items()}, measured=measured,
                default=default if default in {c.id for c in configs} else configs[-1].id)
    net.pretrained_cfg = dict(config.get("pretrained_cfg", {}))
    net.label_names = config.get("label_names")
    if state_dict is not None:
        missing, unexpected = net.load_state_dict(state_dict, strict=False)
        unread = [k for k in missing if any(uses(net, c, k) for c in net.configs)]
        if unread or unexpected:
            raise zoo.BadInput(f"the stitched network's weights do not fit its config.json (missing {unread[:3]}, "
                               f"unexpected {unexpected[:3]}); the folder is damaged or was edited")
    return net.eval()


def load_folder(folder: Path) -> SNNet:
    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text())
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise zoo.BadInput(f"{folder}: no .safetensors weights next to config.json")
    state: dict = {}
    for f in files:
        state.update(load_file(str(f)))
    return from_config(config, state)


def export(net: SNNet, config: dict[str, Any], which: int, out: Path, *, force: bool = False) -> Path:
    """Write configuration ``which`` (an id as listed) alone to ``out``: a timm folder for an anchor, a
    one-configuration stitched network (only the weights it reads) for a stitch."""
    from huggingface_hub import ModelCard, save_torch_state_dict

    from zoo.kit.members import atomic_folder, timm_config as output_config

    if which not in net.by_id:
        raise zoo.BadInput(f"configuration {which} does not exist; ids run from {min(net.by_id)} to {max(net.by_id)} "
                           "(zoo stitch list FOLDER shows them)")
    cfg = net.by_id[which]
    anchors = config["anchors"]
    meas = net.measured.get(cfg.id, {})
    with atomic_folder(out, force) as tmp:
        if not cfg.stitched:
            a = anchors[cfg.anchors[0]]
            prefix = f"anchors.{cfg.anchors[0]}."
            state = {k[len(prefix):]: v.contiguous() for k, v in net.state_dict().items() if k.startswith(prefix)}
            timm_config = {"architecture": a["architecture"], "num_classes": a["num_classes"],
                           "label_names": a.get("label_names") or config.get("label_names"),
                           "pretrained_cfg": {**a["pretrained_cfg"], **config.get("pretrained_cfg", {})}}
            if a.get("model_args"):
                timm_config["model_args"] = a["model_args"]
            usage = (f'import timm\nmodel = timm.create_model("local-dir:{out.name}", pretrained=True)  '
                     "# an ordinary timm model")
        else:
            front, back = cfg.anchors
            remap = {front: 0, back: 1}
            state = {}
            for k, v in net.used_state(cfg).items():
                if k.startswith("anchors."):
                    _, i, rest = k.split(".", 2)
                    k = f"anchors.{remap[int(i)]}.{rest}"
                state[k] = v.contiguous()
            one = Config(which, (0, 1), cfg.front_block, cfg.back_block, cfg.layer)
            timm_config = to_config(net, anchors=[anchors[front], anchors[back]],
                                    pretrained_cfg=config.get("pretrained_cfg", {}),
                                    label_names=config.get("label_names"), configs=[one])
            usage = f'import zoo\nnet = zoo.load("{out.name}")  # one stitched configuration'
        save_torch_state_dict(state, tmp, metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(output_config(timm_config), indent=2))  # transformers opens it
        desc = cfg.describe(net.names)
        figures = ", ".join(f"{k} {v:.4g}" for k, v in meas.items() if k in ("gflops", "top1")) or "not measured"
        ModelCard(f"---\nlibrary_name: {'timm' if not cfg.stitched else 'zoo'}\ntags: [zoo, zoo-stitch]\n---\n\n"
                  f"# {out.name}\n\nConfiguration {which} of a stitched network (SN-Net) made with zoo: "
                  f"`{desc}`; {meas.get('params', net.param_count(cfg)):,} parameters ({figures}).\n\n"
                  f"```python\n{usage}\n```\n").save(tmp / "README.md")
    return out
