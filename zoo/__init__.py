"""zoo: combine pretrained models — weight soups and more, written as pluggy plugins.

The public names are imported lazily so that `import zoo` (and `zoo --help`) stays fast:

    import zoo
    member = zoo.load_member("hf-hub:org/name@main")
    result = zoo.combine("soup", ["./a", "./b"], eval_data="./val", out="./soup")
    zoo.evaluate("./soup", "./val")
    zoo.push("./soup", "org/my-soup")
    zoo.finetune("hf-hub:org/base", "./train", "./ft", recipe=zoo.FinetuneRecipe(mode="lp-ft"))
    zoo.select(["./a", "./b", "./c"], "./train", metric="logme", out="./selection")
    found = zoo.discover("timm/resnet50.a1_in1k", check=True)   # the Hub's fine-tunes of a base, what fits
    zoo.run_recipe("recipe.toml")      # select → combine → push, as `zoo run recipe.toml`
    zoo.reproduce("./soup").identical   # re-run an output's zoo.json and compare the bytes
    net = zoo.load("./snnet")           # any output folder or hf-hub:ORG/NAME, as a module
    net.select(max_gflops=0.3)          # a stitched network: pick a configuration by budget

Two groups of names live here. The API (``zoo.combine`` …) is what users call. The kit
(``zoo.Strategy``, ``zoo.Context``, ``zoo.option`` … and the modules of ``zoo.kit``) is what
plugins build on — the built-in strategies use nothing else (docs/writing-a-plugin.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: what users call: name → module
API = {
    "combine": "zoo.api.combine",
    "discover": "zoo.api.discover",
    "save": "zoo.api.combine",
    "strategies": "zoo.api.combine",
    "load_member": "zoo.api.combine",
    "load_members": "zoo.api.combine",
    "evaluate": "zoo.api.evaluate",
    "finetune": "zoo.api.finetune",
    "load": "zoo.api.load",
    "push": "zoo.api.push",
    "reproduce": "zoo.api.reproduce",
    "run_recipe": "zoo.api.recipe",
    "select": "zoo.api.selection",
    "transfer_metrics": "zoo.api.selection",
}
#: what plugins build on: name → the kit group that exports it (``group:name`` where the group names it otherwise)
KIT = {
    "hookimpl": "zoo.hookspecs",
    "Strategy": "zoo.kit.strategy",
    "Context": "zoo.kit.strategy",
    "Combined": "zoo.kit.strategy",
    "option": "zoo.kit.strategy",
    "merge_method": "zoo.kit.merge",
    "model_thresholds": "zoo.kit.merge",
    "zero_below": "zoo.kit.merge",
    "is_statistic": "zoo.kit.tensors",
    "map_tensors": "zoo.kit.tensors",
    "scan_tensors": "zoo.kit.tensors",
    "Spill": "zoo.kit.tensors",
    "task_vectors": "zoo.kit.tensors",
    "keep_largest": "zoo.kit.tensors",
    "Member": "zoo.kit.members",
    "MemberFormat": "zoo.kit.members",
    "ZooError": "zoo.kit.strategy",
    "BadInput": "zoo.kit.strategy",
    "IncompatibleMembers": "zoo.kit.strategy",
    "FinetuneRecipe": "zoo.kit.train:Recipe",  # group:name where the kit calls it otherwise
    "TransferMetric": "zoo.kit.measure",
    "TargetView": "zoo.kit.measure",
}

__all__ = sorted(set(API) | set(KIT)) + ["__version__"]

if TYPE_CHECKING:  # the static mirror of the lazy names below, for editors and type checkers
    from zoo.api.combine import combine, load_member, load_members, save, strategies
    from zoo.api.discover import discover
    from zoo.api.evaluate import evaluate
    from zoo.api.finetune import finetune
    from zoo.api.load import load
    from zoo.api.push import push
    from zoo.api.recipe import run_recipe
    from zoo.api.reproduce import reproduce
    from zoo.api.selection import select, transfer_metrics
    from zoo.hookspecs import hookimpl
    from zoo.kit.strategy.errors import BadInput, IncompatibleMembers, ZooError
    from zoo.kit.train.recipe import Recipe as FinetuneRecipe
    from zoo.kit.members.member import Member
    from zoo.kit.members.format import MemberFormat
    from zoo.kit.merge import merge_method
    from zoo.kit.tensors.spill import Spill
    from zoo.kit.tensors.stream import map_tensors, scan_tensors
    from zoo.kit.merge.topk import model_thresholds, zero_below
    from zoo.kit.tensors.weights import is_statistic, keep_largest, task_vectors
    from zoo.kit.strategy.options import option
    from zoo.kit.strategy import Combined, Context, Strategy
    from zoo.kit.measure.transferability import TargetView, TransferMetric


def __getattr__(name: str):
    import importlib

    where = API.get(name) or KIT.get(name)
    if where is None:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    module, _, attr = where.partition(":")
    return getattr(importlib.import_module(module), attr or name)
