"""The strategy contract: what a strategy is (``Strategy``), what it gets (``Context``), what it returns
(``Combined``), its typed options (``option``; ``compose`` and ``part`` to reuse another's) and the errors
it raises for users (``BadInput``: exit 2, ``IncompatibleMembers``, ``ZooError``).
"""

from zoo.kit._infra.exports import lazy

#: name → the module that holds it
NAMES = {
    "Strategy": "zoo.kit.strategy.context",
    "Context": "zoo.kit.strategy.context",
    "Combined": "zoo.kit.strategy.context",
    "option": "zoo.kit.strategy.options",
    "compose": "zoo.kit.strategy.options",
    "part": "zoo.kit.strategy.options",
    "ZooError": "zoo.kit.strategy.errors",
    "BadInput": "zoo.kit.strategy.errors",
    "IncompatibleMembers": "zoo.kit.strategy.errors",
    "parse_pairs": "zoo.kit.strategy.options",
}
__all__ = sorted(NAMES)
__getattr__ = lazy(__name__, NAMES)
