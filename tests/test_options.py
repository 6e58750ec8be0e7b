from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from zoo.kit.strategy.errors import BadInput
from zoo.kit.strategy.options import describe, option, parse, parse_pairs


@dataclass
class Opts:
    mode: Literal["a", "b"] = option("a", "which")
    n: int = option(3, "count", min=0)
    alpha: float = option(0.5, "mix", min=0, max=1)
    grid: list[float] = option([0.0, 1.0], "alphas")
    flag: bool = option(False, "a switch")
    name: Optional[str] = option(None, "maybe")


def test_defaults_and_types():
    o = parse(Opts, {})
    assert (o.mode, o.n, o.alpha, o.grid, o.flag, o.name) == ("a", 3, 0.5, [0.0, 1.0], False, None)
    o = parse(Opts, {"mode": "b", "n": "7", "alpha": "1", "grid": "0:1:0.25", "flag": "yes", "name": "x"})
    assert (o.mode, o.n, o.alpha, o.grid, o.flag, o.name) == ("b", 7, 1.0, [0.0, 0.25, 0.5, 0.75, 1.0], True, "x")
    assert parse(Opts, {"grid": "0.1,0.2"}).grid == [0.1, 0.2]
    assert [i.type_name for i in describe(Opts)] == ["a|b", "int", "float", "list of float", "bool", "str or none"]


@pytest.mark.parametrize("given, words", [
    ({"mode": "c"}, "choose one of a, b"),
    ({"n": "x"}, "expected an integer"),
    ({"n": "-1"}, "at least 0"),
    ({"alpha": "1.5"}, "at most 1"),
    ({"grid": "0:1"}, "start:stop:step"),
    ({"flag": "maybe"}, "true or false"),
    ({"nope": "1"}, "unknown option 'nope'"),
])
def test_bad_values_name_the_option(given, words):
    with pytest.raises(BadInput, match=words):
        parse(Opts, given, strategy="s")


def test_pairs():
    assert parse_pairs(["a=1", "b = x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(BadInput, match="key=value"):
        parse_pairs(["novalue"])
