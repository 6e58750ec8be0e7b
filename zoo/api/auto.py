"""A selecting strategy (``--strategy auto``, ``Strategy.selects``): its candidates planned and checked before any
member is read, then run one after another on the members, each scored on the held-out data; the best is the
result, the leaderboard in its report and card.

Score: held-out top-1 on ``--eval-data``; with ``--multi-task``, the mean normalised top-1 over the tasks (each
task's merged top-1 over its member's own, on its ``--eval-data NAME=DIR``). The first best wins a tie. Memory:
the best result so far and the current one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from zoo.kit.strategy.errors import BadInput


@dataclass
class Point:
    """One candidate to run: a strategy with every option set (a sweep's value among them)."""

    strategy: str
    cls: type
    given: dict[str, Any]  # the options as given, the swept one at this point's value
    opts: Any  # parsed

    @property
    def label(self) -> str:
        return self.strategy + (f" ({', '.join(f'{k}={v}' for k, v in self.given.items())})" if self.given else "")


def plan(cls, opts, host, *, base: bool, multi_task: bool, train: bool) -> list[Point]:
    """Every point the selecting strategy ``cls`` asks for, checked (unknown strategy, an option it does not take,
    a base or data it needs and this run lacks, a non-merge with --multi-task: one BadInput each); sweeps are
    expanded to their values."""
    from zoo.api import sweep as _sweep
    from zoo.kit.merge.method import MergeMethod
    from zoo.kit.strategy import options as _options

    known = host.strategies()

    def unusable(name: str, c: type) -> str | None:
        if c.selects:
            return "it selects among strategies itself"
        if c.needs_base and not base:
            return "it needs --base"
        if "train" in c.needs and not train:
            return "it needs --train-data"
        if "ood" in c.needs:
            return "it needs --ood-data"
        if multi_task and "train" in c.needs and not c.multi_task:
            return "it runs the members' whole models, and --multi-task merges them without their heads"
        if multi_task and not (issubclass(c, MergeMethod) or c.multi_task):
            return "--multi-task runs merge methods and strategies that keep the heads apart only"
        if not c.same_tensors:
            return "it does not merge weights of one architecture"
        return None

    usable = {name: c for name, (c, _) in known.items() if unusable(name, c) is None}
    points: list[Point] = []
    for name, given in cls().candidates(opts, usable):
        if name not in known:
            raise BadInput(f"strategy auto: candidate {name!r} is not a strategy; available: "
                           f"{', '.join(sorted(usable))} (see `zoo strategies`)")
        c = known[name][0]
        why = unusable(name, c)
        if why is not None:
            raise BadInput(f"strategy auto: candidate {name!r} cannot run here: {why}")
        rest, swept = _sweep.split(c.Options, dict(given), strategy=name)
        values = swept.values if swept is not None else [None]
        for value in values:
            point = dict(rest) if swept is None else {**rest, swept.name: value}
            parsed = _options.parse(c.Options, point, strategy=name)
            c.check(parsed)
            shown = {k: getattr(parsed, k.replace("-", "_")) for k in given}  # as parsed: 1 and 1.0 alike
            points.append(Point(name, c, shown, parsed))
    if not points:
        raise BadInput("strategy auto: no candidate can run here (the task-vector methods need --base)")
    return points


def run(cls, opts, host, members, ctx, *, base: bool, train: bool):
    """The best candidate's result on the held-out data (``--eval-data``), the leaderboard in its report."""
    like = members[0]
    held_out = ctx.eval_split(like)

    def attempt(point: Point):
        result = point.cls().combine(members, point.opts, replace(ctx, strategy=point.strategy))
        result.metrics = ctx.evaluate(result.state_dict, like=like, split=held_out).as_dict()
        return result, result.metrics["top1"], {"metrics": result.metrics}

    points = plan(cls, opts, host, base=base, multi_task=False, train=train)
    best, board = _leaderboard(points, ctx, attempt, scored="held-out top-1")
    _record(best, board, selected_on="held-out (--eval-data) top-1")
    return best


def run_tasks(cls, opts, host, members, base_member, ctx, eval_dirs: dict[str, str], eval_all: str | None, *,
              train: bool):
    """--multi-task: the best candidate by mean normalised top-1 over the tasks; (tasks, merged) as
    ``zoo.api.tasks.combine_tasks`` gives them, the leaderboard in every report."""
    from zoo.api import tasks as _tasks

    _tasks.require_held_out(members, eval_dirs, eval_all, what="strategy auto")
    alone: dict[str, dict] = {}

    def attempt(point: Point):
        tasks, merged = _tasks.combine_tasks(point.cls, point.opts, members, base_member,
                                             replace(ctx, strategy=point.strategy), eval_dirs, eval_all, alone=alone)
        score, normalized, top1 = _tasks.mean_normalized(tasks)
        return (tasks, merged), score, {"normalized_top1": normalized, "top1": top1}

    points = plan(cls, opts, host, base=base_member is not None, multi_task=True, train=train)
    (tasks, merged), board = _leaderboard(points, ctx, attempt, scored="mean normalised top-1")
    report = _record(merged, board, selected_on="mean normalised top-1 over the tasks' held-out data")
    for _, result in tasks:
        result.report["auto"] = report
        result.card_sections.append(merged.card_sections[-1])
    return tasks, merged


def _leaderboard(points: list[Point], ctx, attempt, *, scored: str):
    """Each point run and scored in turn; (the best result, the leaderboard rows in the order run) — the best
    row marked ``kept``."""
    best, best_score, rows = None, float("-inf"), []
    task = ctx.progress.task("auto: candidates", total=len(points))
    for point in points:
        start = time.perf_counter()
        result, score, extra = attempt(point)
        seconds = time.perf_counter() - start
        rows.append({"strategy": point.strategy, "options": point.given, "score": score,
                     "seconds": round(seconds, 3), **extra, "kept": False, "_point": point})
        ctx.log(f"auto: {point.label}: {scored} {score:.4f} ({seconds:.1f} s)")
        if score > best_score:
            best, best_score = result, score
            for row in rows:
                row["kept"] = row is rows[-1]
        del result
        task.advance()
    task.close()
    kept = next(r["_point"] for r in rows if r["kept"])
    for row in rows:
        del row["_point"]
    ctx.log(f"auto: kept {kept.label}")
    return best, rows


def _record(result, rows: list[dict], *, selected_on: str) -> dict:
    """The leaderboard into the result's report and card; the kept candidate's relation is the output's."""
    from zoo.kit.card import sections as card

    kept = next(r for r in rows if r["kept"])
    report = {"kept": {"strategy": kept["strategy"], "options": kept["options"]}, "selected_on": selected_on,
              "leaderboard": rows}
    result.report["auto"] = report
    table = table_rows(rows)
    shown = ", ".join(f"`{k}={v}`" for k, v in kept["options"].items())
    result.card_sections.append(card.Section(
        "Leaderboard (--strategy auto)",
        f"Every candidate was run on the members and scored by its {selected_on}; this model is the best, "
        f"`{kept['strategy']}`{' with ' + shown if shown else ''}. The test split was never used.",
        columns=["strategy", "options", "score", "seconds", ""], rows=table))
    return report


def table_rows(rows: list[dict]) -> list[list]:
    """The leaderboard as the card's table rows, best first: strategy, options, score, seconds, the one kept."""
    return [[r["strategy"], ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "—", r["score"],
             f"{r['seconds']:.1f}", "← kept" if r["kept"] else ""] for r in sorted(rows, key=lambda r: -r["score"])]


def tasks_text(auto: dict) -> str:
    """A multi-task ``--strategy auto`` in the summary card: the leaderboard."""
    from zoo.kit.card import sections as card

    return ("\n## Leaderboard (--strategy auto)\n\nEvery candidate was merged and every task evaluated on its "
            "held-out data; the best mean normalised top-1 is this merge.\n\n"
            + card.table(["strategy", "options", "mean normalised top-1", "seconds", ""],
                         table_rows(auto["leaderboard"])) + "\n")
