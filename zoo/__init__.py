"""zoo: combine pretrained models — weight soups and more, written as pluggy plugins.

The public API is imported lazily so that `import zoo` (and `zoo --help`) stays fast:

    import zoo
    member = zoo.load_member("hf-hub:org/name@main")
    result = zoo.combine("soup", ["./a", "./b"], eval_data="./val", out="./soup")
    zoo.evaluate("./soup", "./val")
    zoo.push("./soup", "org/my-soup")
    zoo.finetune("hf-hub:org/base", "./train", "./ft", recipe=zoo.FinetuneRecipe(mode="lp-ft"))
    zoo.select(["./a", "./b", "./c"], "./train", metric="logme", out="./selection")
    net = zoo.load("./snnet")           # any output folder or hf-hub:ORG/NAME, as a module
    net.select(max_gflops=0.3)          # a stitched network: pick a configuration by budget
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "combine", "evaluate", "push", "load_member", "load_members", "strategies", "save", "select",
    "transfer_metrics", "load", "stitch_configs", "stitch_export",
}
_CORE = {
    "Strategy": "zoo.strategy",
    "Context": "zoo.strategy",
    "Combined": "zoo.strategy",
    "option": "zoo.options",
    "merge_method": "zoo.merge",
    "map_tensors": "zoo.merge",
    "task_vectors": "zoo.merge",
    "keep_largest": "zoo.merge",
    "Member": "zoo.member",
    "hookimpl": "zoo.hookspecs",
    "ZooError": "zoo.errors",
    "BadInput": "zoo.errors",
    "finetune": "zoo.train",
    "FinetuneRecipe": "zoo.train",
    "TransferMetric": "zoo.transfer",
    "TargetView": "zoo.transfer",
}

__all__ = sorted(_API | set(_CORE)) + ["__version__"]


def __getattr__(name: str):
    import importlib

    if name in _API:
        return getattr(importlib.import_module("zoo.api"), name)
    if name in _CORE:
        return getattr(importlib.import_module(_CORE[name]), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
