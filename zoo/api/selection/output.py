"""Write a :class:`zoo.api.selection.rank.Selection` to a folder, atomically.

``ranking.csv`` and ``ranking.json`` (everything measured), ``zoo.toml`` (the selected members,
a zoo that ``--zoo`` and ``--members-from`` accept; Hub members pinned to the commit that was
scored) and, with ``--validate``, ``validation.png``.

Nothing in them is an absolute path: members and data on disk are written relative to the output
folder (``zoo.toml``'s paths are read relative to its own folder, so the selection works from any
directory), and paths inside messages in their public form (``zoo.kit._infra.scrub_paths``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from zoo.kit._infra.output_folder import atomic_folder
from zoo.kit._infra.scrub_paths import public_path, scrub_text

CSV_COLUMNS = ["rank", "member", "score", "probe_top1", "architecture", "features_dim", "spec", "revision",
               "seconds_features", "seconds_metric", "features"]


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def local(spec: str, out: Path) -> str:
    """A member or data folder as the output names it: a path on disk relative to ``out``; anything else
    (``hf-hub:…``, a name) as it is."""
    path = Path(spec).expanduser()
    if spec.startswith("hf-hub:") or not (path.is_absolute() or path.exists()):
        return spec
    try:
        return Path(os.path.relpath(path.resolve(), Path(out).resolve())).as_posix()
    except ValueError:  # pragma: no cover - another drive (Windows): no relative path leads there
        return public_path(str(path.resolve()))


def pinned_spec(spec: str, revision: str | None, out: Path) -> str:
    """The spec as the zoo file lists it: Hub members at the scored commit, paths relative to ``out``."""
    if spec.startswith("hf-hub:"):
        base = spec.split("@", 1)[0]
        return f"{base}@{revision}" if revision else spec
    return local(spec, out)


def zoo_toml(selection, out: Path) -> str:
    by_spec = {r["spec"]: r for r in selection.ranking}
    members = [pinned_spec(s, by_spec[s].get("revision"), out) for s in selection.selected]
    how = f"team of {len(members)} by {selection.team['metric']}" if selection.team else f"ranked by {selection.metric}"
    train = local(selection.target_data, out)
    lines = [f"name = {_toml_str(Path(out).name)}", 'task = "image-classification"',
             f"description = {_toml_str(f'selected by zoo select ({how}) for {train}')}",
             f"labels = [{', '.join(_toml_str(c) for c in selection.classes)}]",
             "members = [", *[f"    {_toml_str(m)}," for m in members], "]", "", "[data]",
             f"train = {_toml_str(train)}"]
    if selection.validation:
        lines.append(f"eval = {_toml_str(local(selection.validation['val_data'], out))}")
    return "\n".join(lines) + "\n"


def report(selection, out: Path) -> dict[str, Any]:
    """The selection as ranking.json holds it: members and data relative to ``out``, no path of this machine
    in any message."""
    paths = {selection.target_data, *selection.selected, *(r["spec"] for r in selection.ranking),
             *(f["spec"] for f in selection.failed),
             *([selection.validation["val_data"]] if selection.validation else [])}
    shown = {p: local(p, out) for p in paths}
    longest_first = sorted((p for p in shown if p != shown[p]), key=len, reverse=True)

    def text(value: str) -> str:  # a message naming a member or data (a failure's error) names it as above
        for p in longest_first:
            value = value.replace(p, shown[p])
        return scrub_text(value)

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return shown[value] if value in shown else text(value)
        if isinstance(value, dict):
            return {walk(k): walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        return value

    data = {k: v for k, v in dataclasses.asdict(selection).items() if k != "figures"}
    return walk(json.loads(json.dumps(data, default=str)))


def write(selection, out: str | Path, *, force: bool = False) -> Path:
    out = Path(out).resolve()
    with atomic_folder(out, force) as tmp:
        data = report(selection, out)
        with open(tmp / "ranking.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(data["ranking"])
        (tmp / "ranking.json").write_text(json.dumps(data, indent=2))
        (tmp / "zoo.toml").write_text(zoo_toml(selection, out))
        for filename, fig in selection.figures.items():
            fig.savefig(tmp / filename)
    return out
