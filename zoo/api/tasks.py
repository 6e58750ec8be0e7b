"""Multi-task merges (``zoo combine --multi-task``): members fine-tuned from one base on different tasks.

Heads are never merged: each member's classifier (timm's ``pretrained_cfg["classifier"]``) is left out of
the merge — the strategy streams views of the members and the base without them — and the merged
backbone is written once per member with that member's own head, as an ordinary timm repo::

    out/
      zoo.json          the recipe: strategy, options, members, base, and every task's metrics
      README.md         a summary: one row per task
      NAME/             one timm / Hub repo per member (its name), loadable with timm, pushable alone

Each task is evaluated with its own head on its own held-out data: ``--eval-data NAME=DIR``, one per
member (or some of them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.kit.strategy.errors import BadInput


def split_data(values: list[str] | str | None, flag: str = "--eval-data") -> tuple[str | None, dict[str, str]]:
    """(one folder for every member, or {member name: folder}) from ``--eval-data`` values: ``DIR`` or
    ``NAME=DIR`` (repeatable). Mixing the two forms is refused."""
    if values is None or isinstance(values, str):
        values = [values] if values else []
    plain, named = [], {}
    for v in values:
        name, sep, folder = v.partition("=")
        if sep and name and "/" not in name and not Path(v).exists():
            if name in named:
                raise BadInput(f"{flag} {name}=…: given twice; give each task one folder")
            named[name] = folder
        else:
            plain.append(v)
    if plain and named:
        raise BadInput(f"{flag}: give either one folder for all members or NAME=DIR per member, not both")
    if len(plain) > 1:
        raise BadInput(f"{flag} given {len(plain)} times; per-task data is NAME=DIR (with --multi-task)")
    return (plain[0] if plain else None), named


def check_names(named: dict[str, str], members, flag: str = "--eval-data") -> None:
    names = [m.name for m in members]
    for name in named:
        if name not in names:
            raise BadInput(f"{flag} {name}=…: {name!r} is not a member; the members are {', '.join(names)}")


def combine_tasks(cls, opts, members, base, ctx, eval_dirs: dict[str, str], eval_all: str | None, *,
                  alone: dict[str, dict] | None = None):
    """The merged backbone with each member's head: [(member, Combined)], the merge's own Combined. ``alone``:
    each member's own metrics on its task, filled in as they are measured (a sweep measures them once)."""
    from zoo.kit.data import data_config, load_split
    from zoo.kit.strategy import Combined
    from zoo.kit.strategy.context import Task

    heads = {m.name: m.head_keys() for m in members}
    for m in members:
        if not heads[m.name]:
            raise BadInput(f"--multi-task: member {m.name} ({m.architecture}) has no classifier its format knows of, "
                           "so there is no head to keep apart")
    bodies = [m.without(heads[m.name]) for m in members]
    if base is not None:
        ctx.base = base.without(base.head_keys())
    ctx.tasks = {m.name: Task(m, tuple(heads[m.name]), eval_dirs.get(m.name, eval_all)) for m in members}
    merged = cls().combine(bodies, opts, ctx)
    tasks = []
    for m in members:
        sd = {**merged.state_dict, **m.read(heads[m.name])}
        result = Combined(state_dict=sd, config=dict(m.config), report=dict(merged.report),
                          card_sections=list(merged.card_sections), figures=dict(merged.figures), like=m)
        folder = eval_dirs.get(m.name, eval_all)
        if folder:
            split = load_split(folder, data_config(m.pretrained_cfg), label_names=m.label_names,
                               num_classes=m.num_classes, progress=ctx.progress)
            result.metrics = ctx.evaluate(sd, like=m, split=split).as_dict()
            if alone is None or m.name not in alone:
                mine = ctx.evaluate(m, split=split).as_dict()
                if alone is not None:
                    alone[m.name] = mine
            else:
                mine = alone[m.name]
        result.report["task"] = {"member": m.name, "eval_data": folder, "head": heads[m.name]}
        if folder:
            # the papers' normalised accuracy: the merged model's over the member's own on its task
            result.report["task"].update(member_metrics=mine, normalized_top1=(
                result.metrics["top1"] / mine["top1"] if mine["top1"] else None))
        tasks.append((m, result))
    return tasks, merged


def require_held_out(members, eval_dirs: dict[str, str], eval_all: str | None, *, what: str) -> None:
    """Every task has held-out data (``--eval-data NAME=DIR``): ``what`` scores by the mean normalised top-1
    over the tasks, which needs each one's."""
    missing = [m.name for m in members if not (eval_dirs.get(m.name) or eval_all)]
    if missing:
        raise BadInput(f"{what} with --multi-task keeps the best mean normalised top-1 over the tasks: give held-out "
                       f"data for every task (--eval-data NAME=DIR; none for {', '.join(missing)})")


def mean_normalized(tasks) -> tuple[float, dict[str, float], dict[str, float]]:
    """(the mean normalised top-1 over the tasks, each task's normalised top-1, each task's top-1) of
    :func:`combine_tasks`'s tasks, all evaluated; a member that scores 0 alone counts 0."""
    normalized = {m.name: r.report["task"]["normalized_top1"] or 0.0 for m, r in tasks}
    return (sum(normalized.values()) / len(normalized), normalized,
            {m.name: r.metrics["top1"] for m, r in tasks})


def save_tasks(tasks, out: Path, *, force: bool, recipe: dict[str, Any], save_one, extra: list[str] = ()) -> None:
    """``out/NAME/`` per task (``save_one(result, folder)``), then ``out/zoo.json`` and ``out/README.md``."""
    from zoo.kit.card import sections as card
    from zoo.kit._infra import output_folder as output
    from zoo.kit._infra.scrub_paths import published_json

    with output.atomic_folder(Path(out), force) as tmp:
        rows = []
        for m, result in tasks:
            save_one(result, tmp / m.name)
            metrics, task = result.metrics or {}, result.report["task"]
            rows.append([m.name, m.num_classes, metrics.get("top1"), (task.get("member_metrics") or {}).get("top1"),
                         task.get("normalized_top1"), f"[{m.name}/]({m.name}/)"])
        summary = {m.name: {"folder": m.name, "metrics": r.metrics,
                            "member_metrics": r.report["task"].get("member_metrics"),
                            "normalized_top1": r.report["task"].get("normalized_top1")} for m, r in tasks}
        (tmp / "zoo.json").write_text(published_json({**recipe, "tasks": summary}))  # no local paths
        table = card.table(["task (member)", "classes", "merged: held-out top-1", "the member alone",
                            "merged ÷ alone", "timm repo"], rows)
        (tmp / "README.md").write_text(
            f"# {Path(out).name}\n\nA multi-task merge (`zoo combine --strategy {recipe['strategy']} --multi-task`): "
            "the members' backbones merged, each task written with its member's own head as its own timm repo, "
            "evaluated with that head on its own held-out data.\n\n" + table + "\n" + "".join(extra))

