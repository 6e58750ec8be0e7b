"""Write a :class:`zoo.api.selection.rank.Selection` to a folder, atomically.

``ranking.csv`` and ``ranking.json`` (everything measured), ``zoo.toml`` (the selected members,
a zoo that ``--zoo`` and ``--members-from`` accept; Hub members pinned to the commit that was
scored) and, with ``--validate``, ``validation.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from zoo.kit._infra.output_folder import atomic_folder

CSV_COLUMNS = ["rank", "member", "score", "probe_top1", "architecture", "features_dim", "spec", "revision",
               "seconds_features", "seconds_metric", "features"]


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def pinned_spec(spec: str, revision: str | None) -> str:
    """The spec as the zoo file lists it: Hub members at the scored commit, paths made absolute."""
    if spec.startswith("hf-hub:"):
        base = spec.split("@", 1)[0]
        return f"{base}@{revision}" if revision else spec
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def zoo_toml(selection, name: str) -> str:
    by_spec = {r["spec"]: r for r in selection.ranking}
    members = [pinned_spec(s, by_spec[s].get("revision")) for s in selection.selected]
    how = f"team of {len(members)} by {selection.team['metric']}" if selection.team else f"ranked by {selection.metric}"
    lines = [f"name = {_toml_str(name)}", 'task = "image-classification"',
             f"description = {_toml_str(f'selected by zoo select ({how}) for {selection.target_data}')}",
             f"labels = [{', '.join(_toml_str(c) for c in selection.classes)}]",
             "members = [", *[f"    {_toml_str(m)}," for m in members], "]", "", "[data]",
             f"train = {_toml_str(str(Path(selection.target_data).resolve()))}"]
    if selection.validation:
        lines.append(f"eval = {_toml_str(str(Path(selection.validation['val_data']).resolve()))}")
    return "\n".join(lines) + "\n"


def write(selection, out: str | Path, *, force: bool = False) -> Path:
    out = Path(out).resolve()
    with atomic_folder(out, force) as tmp:
        with open(tmp / "ranking.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(selection.ranking)
        data = {k: v for k, v in dataclasses.asdict(selection).items() if k != "figures"}
        (tmp / "ranking.json").write_text(json.dumps(data, indent=2, default=str))
        (tmp / "zoo.toml").write_text(zoo_toml(selection, out.name))
        for filename, fig in selection.figures.items():
            fig.savefig(tmp / filename)
    return out
