"""``--strategy auto``: which merge, with which λ? zoo tries a list of candidates and keeps the best.

Each candidate is a strategy with its options, a numeric option possibly swept (``scale=0.2:1:0.2``); zoo
runs every point on the members one after another, scores it on ``--eval-data`` (held-out top-1, or with
``--multi-task`` the mean normalised top-1 over the tasks) and writes the best, with the leaderboard (every
candidate's score and time) in the card and zoo.json. The test split is never given to it. This module says
what the candidates are; ``zoo.api.auto`` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import zoo

#: the candidates when none are named, in order (each kept where this run can score it: a base for the
#: task-vector methods, --train-data for none of these); the sweeps are the ranges the papers tune over
DEFAULT = (
    ("soup", {}),
    ("soup", {"mode": "greedy"}),
    ("task-arithmetic", {"scale": "0.2:1:0.2"}),
    ("ties", {"scale": "0.5,1,1.5"}),
    ("dare", {"then": "ties", "scale": "0.5,1,1.5"}),
    ("model-stock", {}),
    ("breadcrumbs", {"scale": "0.5,1"}),
    ("della", {"scale": "0.5,1"}),
    ("tsv", {"scale": "0.5,1"}),
    ("iso-c", {"scale": "0.5,1,1.5"}),
    ("iso-cts", {"scale": "0.5,1,1.5"}),
)

SPELLING = "NAME[OPTION=VALUE OPTION=VALUE ...] NAME ...  (e.g. \"ties[scale=0.5,1] task-arithmetic[scale=0.2:1:0.2]\")"


class Auto(zoo.Strategy):
    name = "auto"
    summary = "try merge methods and their λ on --eval-data, keep the best (leaderboard in the card)"
    min_members = 2
    needs = ("eval",)
    same_tensors = True
    selects = True

    @dataclass
    class Options:
        candidates: str | None = zoo.option(
            None, f"the candidates, {SPELLING}; default: soup, greedy soup, task arithmetic, TIES, DARE, Model "
            "Stock, breadcrumbs, DELLA, TSV-M, Iso-C, Iso-CTS with their usual λ ranges, those this run can score")

    @classmethod
    def check(cls, options) -> None:
        if options.candidates is not None:
            parse(options.candidates)

    def candidates(self, options, usable: Mapping[str, type]) -> list[tuple[str, dict[str, Any]]]:
        if options.candidates is not None:
            return parse(options.candidates)
        return [(name, dict(opts)) for name, opts in DEFAULT if name in usable]


def parse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``ties[scale=0.5,1 density=0.2] model-stock`` as [("ties", {"scale": "0.5,1", "density": "0.2"}),
    ("model-stock", {})]; anything else is one BadInput naming the spelling."""
    def bad(why: str) -> zoo.BadInput:
        return zoo.BadInput(f"-o candidates={text!r}: {why}; write {SPELLING}")

    out: list[tuple[str, dict[str, Any]]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        j = i
        while j < n and not text[j].isspace() and text[j] not in "[]":
            j += 1
        name = text[i:j]
        if not name:
            raise bad(f"{text[j]!r} where a strategy's name should be")
        options: dict[str, Any] = {}
        if j < n and text[j] == "[":
            end = text.find("]", j)
            if end < 0:
                raise bad(f"the options of {name!r} open with '[' and never close")
            for item in text[j + 1:end].split():
                key, eq, value = item.partition("=")
                if not eq or not key or not value:
                    raise bad(f"{item!r} in {name!r}'s options is not OPTION=VALUE")
                if key in options:
                    raise bad(f"{name!r} gives {key} twice")
                options[key] = value
            j = end + 1
        elif j < n and text[j] == "]":
            raise bad(f"a ']' after {name!r} closes nothing")
        out.append((name, options))
        i = j
    if not out:
        raise bad("no candidate")
    return out


@zoo.hookimpl
def zoo_strategies():
    return [Auto]
