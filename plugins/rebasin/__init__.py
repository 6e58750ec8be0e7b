"""Permutation alignment (Git Re-Basin weight matching, or activation matching) for timm models: members
trained from different starts made mergeable — ``zoo align`` and ``zoo combine --strategy rebasin``.

- ``spec.py``: which permutation acts on which axis of every tensor (the rules); ``graph.py``: how they are
  read from the model's fx graph
- ``permute.py``: permutations applied, and checked against the model's outputs
- ``match.py``: weight matching (linear assignment per group), several members (reference, MergeMany)
- ``activations.py``: activation matching (units paired by the correlation of their activations on data)
- ``repair.py``: REPAIR for BatchNorm networks; ``barrier.py``: the loss barrier along a path
- ``strategy.py``: the ``align`` and ``rebasin`` strategies; ``cli.py``: the ``zoo align`` command
"""

import zoo


@zoo.hookimpl
def zoo_strategies():
    from zoo.plugins.rebasin.strategy import Align, Rebasin

    return [Align, Rebasin]


@zoo.hookimpl
def zoo_commands(app, cli):
    from zoo.plugins.rebasin.cli import add_align

    add_align(app, cli)
