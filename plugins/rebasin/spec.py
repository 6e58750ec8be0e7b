"""Which permutation acts on which axis of every tensor of a model, read from the model's own graph.

A *permutation group* is a set of hidden units that can be reordered without changing what the network
computes: the output channels of a convolution together with everything that reads them (the next
layer's input channels, a BatchNorm's statistics, a depthwise filter), or a whole residual stream
(every tensor that writes into or reads from one sum shares one permutation). zoo finds the groups by
tracing the model with ``torch.fx`` and following each tensor's channel axis through the graph:

- a Linear/Conv output starts a new group, its weight's input axis joins the group of its input;
- normalisation (BatchNorm, LayerNorm over the channels, GroupNorm with 1 or C groups), element-wise
  functions, pooling, reshapes that keep the channel axis whole and reductions carry or drop it;
- ``a + b``, ``a * gamma``, ``cat`` along another axis merge the groups of their operands (one union);
- the input image's channels and the classifier's outputs are fixed, and so is every group they join;
- timm's ``Attention`` (fused qkv) is read as one unit: its heads are permuted as units, and the dimensions
  inside a head by one permutation shared by q, k and v (q·k is unchanged; the output projection reads v's
  dimensions in their new order); its output projection starts a group like a Linear.

Anything else that touches a permuted axis in a way zoo cannot vouch for (a grouped convolution, a
reshape that splits channels, a matmul outside attention, a module with parameters zoo has no rule for)
is a :class:`zoo.BadInput` naming the module: never silently skipped. Every spec is then checked by
``zoo.plugins.rebasin.permute.check_function`` before it is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Spec:
    """``groups``: permutation name → size. ``axes``: tensor name → (the shape it is viewed as, {axis of that
    view: permutation name}); a fused tensor (qkv) is viewed with its blocks as axes of their own.
    ``where``: permutation name → the module that starts it (for messages and reports). ``nested``: an
    attention's heads group → the group of the dimensions inside each head (matched together, see
    ``zoo.plugins.rebasin.match``)."""

    groups: dict[str, int]
    axes: dict[str, tuple[tuple[int, ...], dict[int, str]]]
    where: dict[str, str] = field(default_factory=dict)
    nested: dict[str, str] = field(default_factory=dict)
    #: tensors that are buffers (BatchNorm's running statistics): permuted with their channels, but not
    #: weights, so weight matching leaves them out of its objective (as Git Re-Basin's code does)
    buffers: frozenset = frozenset()
    #: for activation matching: group → the values of the model's fx graph that carry its units, as (node name,
    #: axis); every other axis of such a value is data (batch, space, tokens). Copies in another layout (a
    #: reshape, a transpose, a dropout) are left out.
    sites: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    #: an attention's heads group → the fx nodes that call it (activation matching records their q, k, v)
    attention: dict[str, list[str]] = field(default_factory=dict)

    def users(self, group: str, *, weights_only: bool = False) -> list[tuple[str, int]]:
        """(tensor, view axis) pairs ``group`` acts on (``weights_only``: parameters, not buffers)."""
        return [(k, ax) for k, (_, axes) in self.axes.items() for ax, g in axes.items()
                if g == group and not (weights_only and k in self.buffers)]

    def describe(self) -> dict[str, Any]:
        return {"permutations": len(self.groups), "units": sum(self.groups.values()),
                "tensors": len(self.axes)}


def derive(model, input_size: tuple[int, ...], *, what: str = "the model") -> Spec:
    """The permutation spec of ``model`` for inputs of ``input_size`` (C, H, W); a layer the rules cannot
    vouch for is a :class:`zoo.BadInput` naming it."""
    import torch

    from zoo.plugins.rebasin.graph import walk

    return Spec(**walk(model, torch.randn(2, *input_size), what=what))
