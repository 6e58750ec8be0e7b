"""The stitch plugin's Python API: list a stitched network's configurations, export one alone (what
`zoo stitch list` and `zoo stitch export` run).

    from zoo.plugins.stitch.export import stitch_configs, stitch_export
    rows = stitch_configs("snnet/")             # id, anchors, blocks, GFLOPs, parameters, top-1
    stitch_export("snnet/", "one/", config=17)  # or max_gflops=..., max_params=...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import zoo
from zoo.kit.members import check_out, folder_of
from zoo.plugins.stitch import io as snnet_io
from zoo.plugins.stitch.snnet import Config


def stitch_configs(spec: str | Path) -> list[dict[str, Any]]:
    """The configurations of a stitched network (id, anchors, blocks, GFLOPs, parameters, held-out top-1),
    read from its config.json alone."""
    config = _config(folder_of(str(spec)), spec)
    names = [a["name"] for a in config["anchors"]]
    out = []
    for row in config["configs"]:
        cfg = Config(row["id"], tuple(row["anchors"]), row.get("front_block"), row.get("back_block"), row.get("layer"))
        out.append({**row, "anchor_names": [names[a] for a in cfg.anchors], "description": cfg.describe(names),
                    "default": row["id"] == config.get("default_config")})
    return out


def stitch_export(spec: str | Path, out: str | Path, *, config: int | None = None, max_gflops: float | None = None,
                  max_params: float | None = None, force: bool = False) -> tuple[Path, int]:
    """Write one configuration of a stitched network alone to ``out`` (by id, or the best within a budget);
    returns the folder and the configuration's id."""
    check_out(Path(out), force)
    folder = folder_of(str(spec))
    config_json = _config(folder, spec)
    net = snnet_io.load_folder(folder)
    if config is None:
        if max_gflops is None and max_params is None:
            raise zoo.BadInput("say which configuration to export: --config ID, --max-gflops or --max-params")
        config = net.best_within(max_gflops=max_gflops, max_params=max_params)
    return snnet_io.export(net, config_json, int(config), Path(out), force=force), int(config)


def _config(folder: Path, spec) -> dict[str, Any]:
    """The stitched network's config.json, or one clear error when ``spec`` is not a stitched network."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise zoo.BadInput(f"{spec}: cannot read config.json ({e})") from None
    if not snnet_io.is_snnet(config):
        raise zoo.BadInput(f"{spec} is not a stitched network (make one with zoo combine --strategy stitch)")
    return config
