"""Merge methods: ``merge_method`` makes a strategy of a pure per-tensor function (the merge contract:
its options from the signature, ``key`` and ``stats`` filled in, ``prepare``/``report``/``check``).
"""

from zoo.kit._infra.exports import lazy

#: name → the module that holds it
NAMES = {
    "merge_method": "zoo.kit.merge.method",
    "model_thresholds": "zoo.kit.merge.topk",
    "zero_below": "zoo.kit.merge.topk",
}
__all__ = sorted(NAMES)
__getattr__ = lazy(__name__, NAMES)
