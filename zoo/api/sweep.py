"""A scalar sweep: ``-o scale=0.1:1.0:0.1`` runs the strategy once per value and keeps the best on held-out data
(with ``--multi-task``: the best mean normalised top-1 over the tasks).

Any numeric (int or float) option of any strategy can be swept: a value ``start:stop:step`` (stop
included) or ``v1,v2,…`` for a scalar option is a sweep. Each value is run and its result evaluated on
``--eval-data`` (never the test split); the one with the best held-out top-1 is kept (the first on a
tie). The curve — and the shifted-data curve with ``--ood-data`` — is drawn in the card, every value's
metrics are kept in zoo.json's ``report.sweep``. Memory: the best result so far and the current one.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

from zoo.kit.strategy.errors import BadInput


@dataclass
class Sweep:
    name: str
    raw: str
    values: list[Any]


def split(options_cls: type, given: dict[str, Any], *, strategy: str) -> tuple[dict[str, Any], Sweep | None]:
    """(the options without a swept one, the sweep or None): a range or list given for a scalar number."""
    from zoo.kit.strategy.options import _parse_sequence, describe

    infos = {i.name: i for i in describe(options_cls)}
    sweeps = []
    for key, raw in given.items():
        info = infos.get(key.replace("-", "_"))
        if info is None or not isinstance(raw, str) or not (":" in raw or "," in raw):
            continue
        tp = info.type
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
        if tp not in (int, float):
            continue
        sweeps.append(Sweep(info.name, raw, [tp(float(v)) if tp is int else float(v)
                                             for v in _checked_values(_parse_sequence(raw, key), key)]))
        given = {k: v for k, v in given.items() if k != key}
    if len(sweeps) > 1:
        raise BadInput(f"options {sweeps[0].name} and {sweeps[1].name} are both sweeps; sweep one option at a time")
    if sweeps and len(sweeps[0].values) < 2:
        raise BadInput(f"-o {sweeps[0].name}={sweeps[0].raw}: a sweep needs at least two values")
    return given, (sweeps[0] if sweeps else None)


def _checked_values(values: list[str], key: str) -> list[str]:
    for v in values:
        try:
            float(v)
        except ValueError:
            raise BadInput(f"option {key}: {v!r} in the sweep is not a number") from None
    return values


def _best(sweep: Sweep, ctx, attempt, *, scored: str):
    """``attempt(value)`` → (result, point with its ``score``) for every value: (the best result, the points, the
    value kept — the first best —, whether it is at an end of the range). Memory: the best result so far and
    the current one."""
    best, best_score, picked, points = None, float("-inf"), None, []
    task = ctx.progress.task(f"sweeping {sweep.name}", total=len(sweep.values))
    for value in sweep.values:
        result, point = attempt(value)
        points.append({"value": value, **point})
        ctx.log(f"{sweep.name}={value:g}: {scored} {point['score']:.4f}")
        if point["score"] > best_score:
            best, best_score, picked = result, point["score"], value
        del result
        task.advance()
    task.close()
    at_edge = picked in (sweep.values[0], sweep.values[-1])
    if at_edge:
        ctx.log(f"warning: the best {sweep.name}={picked:g} is at the end of the sweep "
                f"({sweep.values[0]:g}…{sweep.values[-1]:g}); a wider range may do better")
    return best, points, picked, at_edge


def run(cls: type, options: dict[str, Any], sweep: Sweep, members, ctx, *, strategy: str):
    """Run ``cls`` once per swept value; the best result on held-out data, with the sweep in its report."""
    from zoo.kit.card import sections as card
    from zoo.kit.strategy.options import parse
    from zoo.kit.card.figures import sweep_curve

    like = members[0]
    held_out = ctx.eval_split(like)
    shifted = ctx.ood_split(like) if ctx.ood_data else None

    def attempt(value):
        opts = parse(cls.Options, {**options, sweep.name: value}, strategy=strategy)
        result = cls().combine(members, opts, ctx)
        result.metrics = ctx.evaluate(result.state_dict, like=like, split=held_out).as_dict()
        point = {"metrics": result.metrics, "score": result.metrics["top1"]}
        if shifted is not None:
            point["ood_metrics"] = ctx.evaluate(result.state_dict, like=like, split=shifted).as_dict()
        return result, point

    best, points, picked, at_edge = _best(sweep, ctx, attempt, scored="held-out top-1")
    for point in points:
        del point["score"]
    best.report["sweep"] = {"option": sweep.name, "values": sweep.values, "best": picked, "at_edge": at_edge,
                            "selected_on": "held-out (--eval-data) top-1", "points": points}
    best.figures[f"sweep-{sweep.name}.png"] = sweep_curve(points, option=sweep.name, picked=picked,
                                                          title=f"{strategy}: {sweep.name} on held-out data")
    rows = [[p["value"], p["metrics"]["top1"], *([p["ood_metrics"]["top1"]] if shifted is not None else []),
             "← kept" if p["value"] == picked else ""] for p in points]
    best.card_sections.append(card.Section(
        f"Sweep of {sweep.name}",
        f"Each value of `{sweep.name}` was run and evaluated on the held-out data; "
        f"{sweep.name}={picked:g}, the best held-out top-1, is this model.",
        columns=[sweep.name, "held-out top-1", *(["shifted top-1"] if shifted is not None else []), ""],
        rows=rows, after=f"![sweep](sweep-{sweep.name}.png)"))
    return best


def run_tasks(cls: type, options: dict[str, Any], sweep: Sweep, members, base, ctx, eval_dirs: dict[str, str],
              eval_all: str | None, *, strategy: str):
    """--multi-task: run ``cls`` once per swept value and keep the value with the best mean normalised top-1
    (each task's merged top-1 over its member's own, on its held-out data); (tasks, merged) as
    ``zoo.api.tasks.combine_tasks`` gives them, the sweep in every report."""
    from zoo.api import tasks as _tasks
    from zoo.kit.strategy.options import parse

    _tasks.require_held_out(members, eval_dirs, eval_all, what=f"-o {sweep.name}={sweep.raw}")
    alone: dict[str, dict] = {}  # each member's own metrics on its task, measured once

    def attempt(value):
        opts = parse(cls.Options, {**options, sweep.name: value}, strategy=strategy)
        tasks, merged = _tasks.combine_tasks(cls, opts, members, base, ctx, eval_dirs, eval_all, alone=alone)
        score, normalized, top1 = _tasks.mean_normalized(tasks)
        return (tasks, merged), {"score": score, "normalized_top1": normalized, "top1": top1}

    (tasks, merged), points, picked, at_edge = _best(sweep, ctx, attempt, scored="mean normalised top-1")
    report = {"option": sweep.name, "values": sweep.values, "best": picked, "at_edge": at_edge,
              "selected_on": "mean normalised top-1 over the tasks' held-out data (--eval-data NAME=DIR)",
              "points": [{"value": p["value"], "mean_normalized_top1": p["score"],
                          "normalized_top1": p["normalized_top1"], "top1": p["top1"]} for p in points]}
    merged.report["sweep"] = report
    for _, result in tasks:
        result.report["sweep"] = report
    return tasks, merged


def tasks_text(sweep: dict) -> str:
    """A multi-task sweep in the summary card: every value's mean normalised top-1, the one kept."""
    from zoo.kit.card import sections as card

    name = sweep["option"]
    rows = [[p["value"], p["mean_normalized_top1"], "← kept" if p["value"] == sweep["best"] else ""]
            for p in sweep["points"]]
    return (f"\n## Sweep of {name}\n\nEach value of `{name}` was merged and every task evaluated on its held-out "
            f"data; {name}={sweep['best']:g}, the best mean normalised top-1, is this merge.\n\n"
            + card.table([name, "mean normalised top-1", ""], rows) + "\n")
