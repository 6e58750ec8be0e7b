"""``zoo select``: rank members for a target task by a transferability metric, or pick a team."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from zoo import host as _host
from zoo.kit.strategy.errors import BadInput
from zoo.kit._infra.progress import Progress


def select(members: Sequence[str] = (), target_data: str | None = None, *, zoo: str | None = None,
           members_from: str | None = None, metric: str = "logme", top_k: int | None = None,
           ensemble: bool = False, team_metric: str = "osborn", weights: dict[str, float] | None = None,
           validate: bool = False, val_data: str | None = None, sources: dict[str, str] | None = None,
           skip_failed: bool = False, out: str | Path | None = None, force: bool = False, device: str = "auto",
           arch: str | None = None, allow_pickle: bool = False, plugins: Sequence[str] = (),
           progress: Progress | None = None, log: Callable[[str], None] | None = None):
    """Rank members for the target task in ``target_data`` (a transferability metric; no fine-tuning).

    With ``ensemble`` pick a team of ``top_k`` greedily by ``team_metric``; with ``validate`` also
    linear-probe each member on ``target_data`` and report Kendall's τ on ``val_data``. The result is
    a :class:`zoo.api.selection.rank.Selection`, written to ``out`` (ranking.csv/json, zoo.toml, plot) if given.
    """
    from zoo.api.selection import output as selection_output
    from zoo.api.selection import rank as _select

    if out is not None:
        from zoo.kit._infra.output_folder import check_out

        check_out(Path(out), force)
    specs, sources = list(members), dict(sources or {})
    # how each folder was given, for the messages about it (zoo.api.selection.data)
    given = {target_data: f"--target-data {target_data}", val_data: f"--val-data {val_data}",
             **{folder: f"--source-data {spec}={folder}" for spec, folder in sources.items()}}
    for source, its_data in ((zoo, True), (members_from, False)):
        if source:
            from zoo.registry import load_zoo

            info = load_zoo(source, progress=progress)
            specs = info.members + specs
            for spec, folder in info.sources.items():
                given.setdefault(folder, f"the source data of {spec} in {source} ({folder})")
            sources = {**info.sources, **sources}
            if its_data:
                for key, kind in (("train", "train"), ("eval", "eval")):
                    if info.data.get(key):
                        given.setdefault(info.data[key], f"the {kind} data of --zoo {source} ({info.data[key]})")
                target_data = target_data or info.data.get("train")
                val_data = val_data or info.data.get("eval")
    if not target_data:
        raise BadInput("no target data: give --target-data FOLDER (one sub-folder of images per class)")
    given.pop(None, None)
    result = _select.select(specs, target_data, metric=metric, top_k=top_k, ensemble=ensemble,
                            team_metric=team_metric, weights=weights, validate=validate, val_data=val_data,
                            sources=sources, skip_failed=skip_failed, host=_host.load(list(plugins)),
                            device=device, arch=arch, allow_pickle=allow_pickle, progress=progress, log=log,
                            given=given)
    if out is not None:
        selection_output.write(result, out, force=force)
    return result



def transfer_metrics(plugins: Sequence[str] = ()) -> dict[str, tuple[Any, str]]:
    """Every transferability metric by name (member and team kinds), with where it comes from."""
    return _host.load(list(plugins)).transfer_metrics()
