"""How zoo reads a model's permutation groups from its ``torch.fx`` graph: each value's channel axis is followed
through the graph, and the axes that must move together are joined (union–find). The rules, layer by layer,
are in ``zoo.plugins.rebasin.spec``'s docstring; :func:`walk` returns the fields of a ``Spec``.
"""


from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

import zoo



class _Node:
    """One union-find node: an axis of some size that a permutation may act on."""

    __slots__ = ("parent", "size", "origin", "fixed", "order")
    made = 0

    def __init__(self, size: int, origin: str, fixed: bool = False) -> None:
        self.parent, self.size, self.origin, self.fixed = self, size, origin, fixed
        _Node.made += 1
        self.order = _Node.made  # the earliest node of a group names it (a stream by the layer that starts it)

    def root(self) -> _Node:
        node = self
        while node.parent is not node:
            node.parent = node.parent.parent
            node = node.parent
        return node


@dataclass
class _Flow:
    """What the graph knows of one tensor value: its shape, which of its axes carry a group, and whether
    it comes from the data (its other axes are then fixed: batch, space, tokens) or only from parameters."""

    shape: tuple[int, ...]
    axes: dict[int, _Node]
    data: bool


class _Tracer(torch.fx.Tracer):
    def __init__(self, leaves: tuple[type, ...]) -> None:
        from timm.layers._fx import get_notrace_functions

        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self._leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from timm.layers._fx import get_notrace_modules

        if isinstance(m, self._leaves) or type(m) in get_notrace_modules():
            return True
        return super().is_leaf_module(m, qualname)


def _attention_types() -> tuple[type, ...]:
    from timm.layers.attention import Attention

    found = [Attention]
    try:  # older timm keeps its own copy in vision_transformer
        from timm.models.vision_transformer import Attention as VitAttention

        found.append(VitAttention)
    except ImportError:  # pragma: no cover
        pass
    return tuple(set(found))


_UNARY_FUNCTIONS = {
    F.relu, F.relu6, F.gelu, F.silu, F.mish, F.elu, F.leaky_relu, F.hardswish, F.hardsigmoid, F.sigmoid,
    F.tanh, F.dropout, F.softplus, torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.sqrt, torch.rsqrt,
    torch.abs, torch.neg, torch.clamp, torch.nn.functional.hardtanh, torch.nn.functional.selu,
}
_UNARY_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "exp", "sqrt", "rsqrt", "abs", "neg", "clamp", "clamp_",
    "contiguous", "clone", "float", "half", "bfloat16", "to", "type_as", "detach", "pow", "gelu", "silu",
}
_BINARY_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
                     torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum"}
_RESAMPLE_POS = {"resample_abs_pos_embed", "resample_abs_pos_embed_nhwc"}
_REDUCE = {"mean", "sum", "amax", "amin", "var", "std"}
_RESHAPE = {"reshape", "view", "flatten", "squeeze", "unsqueeze"}
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid,
    nn.Sigmoid, nn.Tanh, nn.Softplus, nn.SELU, nn.Hardtanh, nn.PReLU, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Softmax, nn.LogSoftmax,  # softmax over channels: equivariant
)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample)
_POOL_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.avg_pool2d, F.max_pool2d, F.interpolate,
                   F.adaptive_avg_pool1d, F.avg_pool1d, F.max_pool1d, F.pad}


class _Builder:
    def __init__(self, model: nn.Module, what: str) -> None:
        self.model, self.what = model, what
        self.fixed = _Node(0, "fixed", fixed=True)
        self.tensors: dict[str, tuple[tuple[int, ...], dict[int, _Node]]] = {}
        self.params = dict(model.named_parameters()) | dict(model.named_buffers())
        self.here = ""
        self.nested: list[tuple[_Node, _Node]] = []
        #: values of the graph that carry a group on an axis (for activation matching): (node name, {axis: node})
        self.values: list[tuple[str, dict[int, _Node]]] = []
        #: timm attention modules called: (node name, heads node, head dims node)
        self.attentions: list[tuple[str, _Node, _Node]] = []

    # ---- nodes -----------------------------------------------------------------------------
    def new(self, size: int, origin: str) -> _Node:
        return _Node(size, origin)

    def union(self, a: _Node, b: _Node) -> _Node:
        ra, rb = a.root(), b.root()
        if ra is rb:
            return ra
        if ra.fixed or rb.fixed:
            ra, rb = (ra, rb) if ra.fixed else (rb, ra)
        elif ra.size != rb.size:
            self.fail(f"joins {ra.size} units with {rb.size}")
        elif rb.order < ra.order:
            ra, rb = rb, ra
        rb.parent = ra
        return ra

    def bind(self, key: str, view: tuple[int, ...], axes: dict[int, _Node]) -> None:
        """Tensor ``key`` (viewed as ``view``) has ``axes`` permuted; a tensor used twice joins both uses."""
        if key not in self.params:
            self.fail(f"reads {key!r}, which is not a parameter or buffer of the model")
        if math.prod(view) != self.params[key].numel():
            self.fail(f"views {key} {tuple(self.params[key].shape)} as {view}")
        if key in self.tensors:
            old_view, old = self.tensors[key]
            if old_view != view:
                self.fail(f"uses {key} in two layouts")
            for ax, node in axes.items():
                old[ax] = self.union(old[ax], node) if ax in old else node
        else:
            self.tensors[key] = (view, dict(axes))

    def at(self, flow: _Flow | None, axis: int) -> _Node:
        """The node of ``flow``'s ``axis``: a fixed one where the data's axis carries no group."""
        if flow is None:
            return self.fixed
        axis %= len(flow.shape)
        if axis in flow.axes:
            return flow.axes[axis]
        return self.fixed if flow.data or flow.shape[axis] > 1 else self.new(flow.shape[axis], self.here)

    def fail(self, why: str) -> None:
        raise zoo.BadInput(f"{self.what}: cannot derive a permutation spec: {self.here or 'the model'} {why}. "
                           "zoo align permutes ResNets, ConvNeXts, ViTs and plain MLP/conv nets; this layer would need a "
                           "rule of its own")

    # ---- the walk --------------------------------------------------------------------------
    def run(self, example: torch.Tensor) -> dict[str, Any]:
        from torch.fx.passes.shape_prop import ShapeProp

        leaves = _attention_types()
        gm = trace(self.model, what=self.what)
        graph = gm.graph
        was = self.model.training
        gm.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
        self.model.train(was)
        modules = dict(self.model.named_modules())
        flows: dict[torch.fx.Node, Any] = {}
        for node in graph.nodes:
            self.here = _describe(node)
            if node.op == "placeholder":
                flows[node] = _Flow(_shape(node), {}, data=True) if _shape(node) else None
            elif node.op == "get_attr":
                shape = _shape(node)
                target = str(node.target)
                axes = {i: self.new(n, target) for i, n in enumerate(shape) if n > 1}
                self.bind(target, shape, axes)
                flows[node] = _Flow(shape, axes, data=False)
            elif node.op == "call_module":
                flows[node] = self.module(modules[node.target], str(node.target), node, flows, leaves)
                if isinstance(modules[node.target], leaves):
                    self.attentions.append((node.name, *self.nested[-1]))
            elif node.op in ("call_function", "call_method"):
                flows[node] = self.function(node, flows)
            flow = flows.get(node)
            if isinstance(flow, _Flow) and flow.data and flow.axes and not _is_copy(node, modules):
                self.values.append((node.name, dict(flow.axes)))
            elif node.op == "output":
                for out in _nodes(node.args[0]):
                    flow = flows.get(out)
                    if isinstance(flow, _Flow):
                        for node_ in flow.axes.values():
                            self.union(node_, self.fixed)
        return self.spec()

    def spec(self) -> dict[str, Any]:
        """The groups (name → size), each tensor's (view, {axis: group}), where each group starts, and the
        nested (heads → head dimensions) pairs: the fields of ``zoo.plugins.rebasin.spec.Spec``."""
        roots: dict[int, str] = {}
        groups, where, axes = {}, {}, {}
        for key, (view, nodes) in self.tensors.items():
            named = {}
            for ax, node in sorted(nodes.items()):
                root = node.root()
                if root.fixed:
                    continue
                if id(root) not in roots:
                    name = f"P{len(roots)}"
                    roots[id(root)] = name
                    groups[name], where[name] = root.size, root.origin
                named[ax] = roots[id(root)]
            if named:
                axes[key] = (view, named)
        nested = {roots[id(h.root())]: roots[id(d.root())] for h, d in self.nested
                  if id(h.root()) in roots and id(d.root()) in roots}
        buffers = frozenset(k for k, _ in self.model.named_buffers() if k in axes)
        sites: dict[str, list[tuple[str, int]]] = {}
        for name, value_axes in self.values:  # a value whose one permuted axis is a group's units, the rest data
            moving = [(ax, roots.get(id(n.root()))) for ax, n in value_axes.items() if not n.root().fixed]
            if len(moving) == 1 and moving[0][1] is not None:
                sites.setdefault(moving[0][1], []).append((name, moving[0][0]))
        attention = {}
        for name, h, d in self.attentions:
            if id(h.root()) in roots and id(d.root()) in roots:
                attention.setdefault(roots[id(h.root())], []).append(name)
        return {"groups": groups, "axes": axes, "where": where, "nested": nested, "buffers": buffers,
                "sites": sites, "attention": attention}

    # ---- modules -----------------------------------------------------------------------------
    def module(self, m: nn.Module, name: str, node: torch.fx.Node, flows, leaves) -> Any:
        x = flows.get(node.args[0]) if node.args else None
        shape = _shape(node)
        if isinstance(m, leaves):
            return self.attention(m, name, x, shape)
        if isinstance(m, nn.Linear):
            return self.linear(name, x, shape, m.bias is not None)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return self.conv(name, x, shape, m.groups, m.in_channels, m.out_channels, m.bias is not None)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            keys = [k for k in ("weight", "bias", "running_mean", "running_var") if getattr(m, k, None) is not None]
            return self.per_channel(name, x, shape, 1, keys)
        if isinstance(m, nn.LayerNorm):
            if len(m.normalized_shape) != 1:
                self.fail(f"normalises over {tuple(m.normalized_shape)}, not one channel axis")
            return self.per_channel(name, x, shape, -1, [k for k in ("weight", "bias") if getattr(m, k) is not None])
        if isinstance(m, nn.GroupNorm):
            if m.num_groups not in (1, m.num_channels):
                self.fail(f"is a GroupNorm with {m.num_groups} groups: only 1 or one per channel keep it unchanged "
                          "under a permutation")
            return self.per_channel(name, x, shape, 1, [k for k in ("weight", "bias") if getattr(m, k) is not None])
        if isinstance(m, _ELEMENTWISE_MODULES) and not list(m.parameters()):
            return _same(x, shape)
        if isinstance(m, _POOL_MODULES):
            return self.keep_axes(x, shape)
        if isinstance(m, nn.Flatten):
            return self.reshape(x, shape)
        self.fail(f"is a {type(m).__name__}, which zoo has no permutation rule for")

    def linear(self, name, x, shape, bias: bool) -> _Flow:
        out = self.new(shape[-1], name)
        inp = self.at(x, -1)
        w = self.params[f"{name}.weight"].shape
        self.bind(f"{name}.weight", tuple(w), {0: out, 1: inp})
        if bias:
            self.bind(f"{name}.bias", (w[0],), {0: out})
        return self._out(x, shape, len(shape) - 1, out)

    def conv(self, name, x, shape, groups, cin, cout, bias: bool) -> _Flow:
        w = tuple(self.params[f"{name}.weight"].shape)
        if groups == 1:
            out = self.new(cout, name)
            self.bind(f"{name}.weight", w, {0: out, 1: self.at(x, 1)})
        elif groups == cin == cout:  # depthwise: each filter reads its own channel
            out = self.at(x, 1)
            self.bind(f"{name}.weight", w, {0: out})
        else:
            self.fail(f"is a grouped convolution ({groups} groups of {cin // groups} channels): its channels can only "
                      "move within their group")
        if bias:
            self.bind(f"{name}.bias", (cout,), {0: out})
        return self._out(x, shape, 1, out)

    def per_channel(self, name, x, shape, axis, keys) -> _Flow:
        node = self.at(x, axis)
        for k in keys:
            self.bind(f"{name}.{k}", tuple(self.params[f"{name}.{k}"].shape), {0: node})
        return self._out(x, shape, axis % len(shape), node)

    def attention(self, m, name, x, shape) -> _Flow:
        if getattr(m, "gate", None) is not None or not hasattr(m, "qkv"):
            self.fail("is an attention variant (gated or without a fused qkv) zoo has no rule for")
        heads, head_dim = m.num_heads, m.head_dim
        dim = self.params[f"{name}.qkv.weight"].shape[1]
        h, d = self.new(heads, f"{name} heads"), self.new(head_dim, f"{name} head dims")
        self.nested.append((h, d))
        # qkv's rows are [q | k | v], each heads × head_dim: viewed as (3, heads, head_dim, in), the block axis
        # stays, heads and the dimensions inside a head are permuted alike in q, k and v
        self.bind(f"{name}.qkv.weight", (3, heads, head_dim, dim), {1: h, 2: d, 3: self.at(x, -1)})
        if getattr(m.qkv, "bias", None) is not None:
            self.bind(f"{name}.qkv.bias", (3, heads, head_dim), {1: h, 2: d})
        for norm in ("q_norm", "k_norm"):
            sub = getattr(m, norm, None)
            if isinstance(sub, nn.LayerNorm):
                for k in ("weight", "bias"):
                    if getattr(sub, k) is not None:
                        self.bind(f"{name}.{norm}.{k}", (head_dim,), {0: d})
            elif sub is not None and not isinstance(sub, nn.Identity):
                self.fail(f"normalises q or k with a {type(sub).__name__}")
        norm = getattr(m, "norm", None)
        if norm is not None and not isinstance(norm, nn.Identity):
            self.fail(f"normalises the heads' joint output with a {type(norm).__name__}, which a head permutation "
                      "does not keep unchanged")
        out = self.new(self.params[f"{name}.proj.weight"].shape[0], f"{name}.proj")
        self.bind(f"{name}.proj.weight", (out.size, heads, head_dim), {0: out, 1: h, 2: d})
        if getattr(m.proj, "bias", None) is not None:
            self.bind(f"{name}.proj.bias", (out.size,), {0: out})
        return self._out(x, shape, len(shape) - 1, out)

    def _out(self, x: _Flow | None, shape, axis: int, node: _Node) -> _Flow:
        axes = {} if x is None else {a: n for a, n in x.axes.items() if a != axis and a < len(shape)}
        axes[axis] = node
        return _Flow(tuple(shape), axes, data=True if x is None else x.data)

    # ---- functions ---------------------------------------------------------------------------------
    def function(self, node: torch.fx.Node, flows) -> Any:
        target, args = node.target, node.args
        shape = _shape(node)
        ins = [flows.get(a) if isinstance(a, torch.fx.Node) else None for a in args]
        x = ins[0] if ins else None
        tensors_in = [flows[n] for n in _nodes((args, node.kwargs)) if isinstance(flows.get(n), _Flow)]
        if shape is None:  # a size, a shape, a tuple of tensors
            return self.non_tensor(node, flows, ins)
        if not tensors_in:  # a constant made inside forward (zeros, arange): treated as data
            return _Flow(tuple(shape), {}, data=True)
        method = target if node.op == "call_method" else None
        if target in _UNARY_FUNCTIONS or method in _UNARY_METHODS or target in (F.softmax, F.log_softmax) \
                or method in ("softmax", "log_softmax"):
            if len(tensors_in) > 1 and target not in (torch.clamp,):
                return self.broadcast(tensors_in, shape)
            return _same(x, shape)
        if target in _BINARY_FUNCTIONS or method in _BINARY_METHODS:
            return self.broadcast(tensors_in, shape)
        if method in _REDUCE or target in (torch.mean, torch.sum, torch.amax, torch.var, torch.std):
            dims = node.kwargs.get("dim", args[1] if len(args) > 1 else None)
            keep = node.kwargs.get("keepdim", args[2] if len(args) > 2 else False)
            return self.reduce(x, shape, dims, keep)
        if method in _RESHAPE or target in (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze):
            return self.reshape(x, shape)
        if method in ("permute", "transpose", "movedim") or target in (torch.permute, torch.transpose):
            return self.permute_axes(x, shape, node, method or target.__name__)
        if method in ("expand", "expand_as", "repeat"):
            return self.expand(x, shape)
        if target is operator.getitem:
            return self.getitem(x, shape, args[1])
        if target in (torch.cat, torch.concat):
            return self.cat(node, flows, shape)
        if target in _POOL_FUNCTIONS:
            return self.keep_axes(x, shape)
        if target is F.layer_norm or getattr(target, "__name__", "") == "rms_norm":
            return self.fn_norm(node, flows, x, shape)
        if target is F.group_norm:
            return self.fn_group_norm(node, flows, x, shape)
        if target is F.linear:
            return self.fn_linear(node, flows, x, shape)
        if getattr(target, "__name__", "") in _RESAMPLE_POS:  # timm's position-embedding resize: space only
            return self.broadcast([x], shape) if x.shape == tuple(shape) else self._resampled(x, shape)
        self.fail(f"calls {getattr(target, '__name__', target)}, which zoo has no permutation rule for")

    def _resampled(self, x: _Flow, shape) -> _Flow:
        last = len(x.shape) - 1
        if set(x.axes) - {last}:
            self.fail("resizes a position embedding along a permuted axis")
        return _Flow(tuple(shape), {len(shape) - 1: x.axes[last]} if last in x.axes else {}, data=x.data)

    def non_tensor(self, node, flows, ins) -> Any:
        if node.target in ("unbind", "split", "chunk") or node.target in (torch.unbind, torch.split, torch.chunk):
            x = ins[0]
            dim = node.kwargs.get("dim", node.args[-1] if node.target == "unbind" and len(node.args) > 1 else 0)
            if isinstance(x, _Flow) and (dim % len(x.shape)) in x.axes:
                self.fail("splits a tensor along its permuted channels")
            metas = node.meta.get("tensor_meta")
            if isinstance(x, _Flow) and isinstance(metas, (tuple, list)):
                return [self.reshape(x, tuple(m.shape)) if node.target == "unbind" else _same(x, tuple(m.shape))
                        for m in metas]
        if node.op == "call_function" and node.target is operator.getitem and isinstance(ins[0], list):
            return ins[0][node.args[1]]
        return None

    def broadcast(self, tensors: list[_Flow], shape) -> _Flow:
        out_axes: dict[int, _Node] = {}
        n = len(shape)
        for j in range(n):
            if shape[j] == 1:
                continue
            found = []
            for f in tensors:
                i = j - (n - len(f.shape))
                if i < 0 or f.shape[i] != shape[j]:
                    continue
                if i in f.axes:
                    found.append(f.axes[i])
                elif f.data:
                    found.append(self.fixed)
            node = None
            for other in found:
                node = other if node is None else self.union(node, other)
            if node is not None and not node.root().fixed:
                out_axes[j] = node
        return _Flow(tuple(shape), out_axes, data=any(f.data for f in tensors))

    def reduce(self, x: _Flow, shape, dims, keep) -> _Flow:
        nd = len(x.shape)
        if dims is None:
            return _Flow(tuple(shape), {}, data=x.data)
        dims = {d % nd for d in ((dims,) if isinstance(dims, int) else dims)}
        axes, j = {}, 0
        for i in range(nd):
            if i in dims:
                j += 1 if keep else 0
                continue
            if i in x.axes:
                axes[j] = x.axes[i]
            j += 1
        return _Flow(tuple(shape), axes, data=x.data)

    def reshape(self, x: _Flow, shape) -> _Flow:
        """A reshape keeps a permuted axis when the axis comes out whole: the same size, after the same product."""
        axes = {}
        for i, node in x.axes.items():
            before = math.prod(x.shape[:i])
            j = _axis_after(shape, before, x.shape[i])
            if j is None:
                self.fail(f"reshapes {tuple(x.shape)} to {tuple(shape)}, splitting or merging a permuted axis")
            axes[j] = node
        return _Flow(tuple(shape), axes, data=x.data)

    def permute_axes(self, x: _Flow, shape, node, how: str) -> _Flow:
        nd = len(x.shape)
        rest = [a for a in node.args[1:]]
        if how == "permute":
            order = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else list(rest)
            order = [d % nd for d in order]
        else:
            a, b = (d % nd for d in rest[:2])
            order = list(range(nd))
            if how == "transpose":
                order[a], order[b] = order[b], order[a]
            else:
                order.pop(a)
                order.insert(b, a)
        inverse = {src: dst for dst, src in enumerate(order)}
        return _Flow(tuple(shape), {inverse[i]: n for i, n in x.axes.items()}, data=x.data)

    def expand(self, x: _Flow, shape) -> _Flow:
        lead = len(shape) - len(x.shape)
        axes = {}
        for i, node in x.axes.items():
            if shape[i + lead] != x.shape[i]:
                self.fail("repeats a tensor along a permuted axis")
            axes[i + lead] = node
        return _Flow(tuple(shape), axes, data=x.data)

    def keep_axes(self, x: _Flow, shape) -> _Flow:
        """Pooling, resizing and padding act on space: the channel axis keeps its place and size."""
        for i in x.axes:
            if i >= len(shape) or shape[i] != x.shape[i]:
                self.fail("pools or pads across a permuted axis")
        return _Flow(tuple(shape), dict(x.axes), data=x.data)

    def getitem(self, x: _Flow, shape, index) -> _Flow:
        index = index if isinstance(index, tuple) else (index,)
        nd = len(x.shape)
        if any(i is Ellipsis for i in index):
            k = index.index(Ellipsis)
            fill = nd - (len([i for i in index if i is not None]) - 1)
            index = index[:k] + (slice(None),) * fill + index[k + 1:]
        index = index + (slice(None),) * (nd - len([i for i in index if i is not None]))
        axes, src, dst = {}, 0, 0
        for item in index:
            if item is None:
                dst += 1
                continue
            if src in x.axes:
                whole = isinstance(item, slice) and item.step in (None, 1) and (item.start in (None, 0)) \
                    and (item.stop is None or (isinstance(item.stop, int) and item.stop >= x.shape[src]))
                if not whole:
                    self.fail("indexes into a permuted axis")
                axes[dst] = x.axes[src]
            if isinstance(item, slice):
                dst += 1
            elif not isinstance(item, int):
                self.fail("indexes a tensor with a tensor")
            src += 1
        return _Flow(tuple(shape), axes, data=x.data)

    def cat(self, node, flows, shape) -> _Flow:
        parts = [flows.get(p) for p in node.args[0]]
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0) % len(shape)
        parts = [p if isinstance(p, _Flow) else _Flow(tuple(s), {}, True)
                 for p, s in zip(parts, (_shape(p) for p in node.args[0]))]
        for p in parts:
            if dim in p.axes:
                self.fail("concatenates tensors along a permuted axis")
        axes = {}
        for j in range(len(shape)):
            if j == dim or shape[j] == 1:
                continue
            nodes = [p.axes[j] if j in p.axes else self.fixed for p in parts if p.data or j in p.axes]
            acc = None
            for n_ in nodes:
                acc = n_ if acc is None else self.union(acc, n_)
            if acc is not None and not acc.root().fixed:
                axes[j] = acc
        return _Flow(tuple(shape), axes, data=any(p.data for p in parts))

    def fn_norm(self, node, flows, x, shape) -> _Flow:
        normalized = node.args[1] if len(node.args) > 1 else node.kwargs["normalized_shape"]
        if len(normalized) != 1:
            self.fail(f"normalises over {tuple(normalized)}, not one channel axis")
        ch = self.at(x, -1)
        self._affine(node, flows, ch)
        return self._out(x, shape, len(shape) - 1, ch)

    def fn_group_norm(self, node, flows, x, shape) -> _Flow:
        groups = node.args[1] if len(node.args) > 1 else node.kwargs["num_groups"]
        if groups not in (1, x.shape[1]):
            self.fail(f"is a GroupNorm with {groups} groups: only 1 or one per channel keep it unchanged under a "
                      "permutation")
        ch = self.at(x, 1)
        self._affine(node, flows, ch)
        return self._out(x, shape, 1, ch)

    def _affine(self, node, flows, ch: _Node) -> None:
        """A functional norm's weight and bias (arguments 2 and 3, or by keyword) follow its channels."""
        for pos, key in ((2, "weight"), (3, "bias")):
            arg = node.args[pos] if len(node.args) > pos else node.kwargs.get(key)
            if isinstance(arg, torch.fx.Node) and isinstance(flows.get(arg), _Flow):
                self.union(self.at(flows[arg], 0), ch)

    def fn_linear(self, node, flows, x, shape) -> _Flow:
        weight = flows.get(node.args[1]) if len(node.args) > 1 else flows.get(node.kwargs.get("weight"))
        if not isinstance(weight, _Flow) or weight.data:
            self.fail("calls F.linear with a weight that is not a parameter")
        self.union(self.at(weight, 1), self.at(x, -1))
        out = self.at(weight, 0)
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        if isinstance(bias, torch.fx.Node) and isinstance(flows.get(bias), _Flow):
            self.union(self.at(flows[bias], 0), out)
        return self._out(x, shape, len(shape) - 1, out)


#: values that are another value's numbers in another layout (or the same ones): not recorded twice as sites
_COPY_METHODS = _RESHAPE | {"permute", "transpose", "movedim", "contiguous", "clone", "float", "half", "bfloat16", "to",
                             "type_as", "detach", "expand", "expand_as"}
_COPY_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose,
                   F.dropout}
_COPY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Flatten)


def _is_copy(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_method":
        return node.target in _COPY_METHODS
    if node.op == "call_module":
        return isinstance(modules[node.target], _COPY_MODULES)
    return node.target in _COPY_FUNCTIONS


def trace(model: nn.Module, *, what: str = "the model") -> torch.fx.GraphModule:
    """``model``'s fx graph as zoo reads it (timm's leaf modules and functions, attention whole), sharing its
    modules and weights; the same architecture gives the same node names."""
    tracer = _Tracer(_attention_types())
    try:
        graph = tracer.trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure is the same message
        raise zoo.BadInput(f"{what}: torch.fx cannot trace the model ({type(e).__name__}: {e}); zoo align needs "
                           "a traceable model") from None
    return torch.fx.GraphModule(tracer.root, graph)


def _axis_after(shape, before: int, size: int) -> int | None:
    prod = 1
    for j, n in enumerate(shape):
        if prod == before and n == size:
            return j
        prod *= n
    return None


def _same(x: _Flow | None, shape) -> _Flow | None:
    if x is None:
        return None
    return _Flow(tuple(shape), dict(x.axes), data=x.data)


def _shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _nodes(value) -> list[torch.fx.Node]:
    if isinstance(value, torch.fx.Node):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _nodes(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _nodes(v)]
    return []


def _describe(node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target}"
    stack = node.meta.get("nn_module_stack") or {}
    inside = next(reversed(stack.values()), None) if stack else None
    where = f" in {inside[0] if isinstance(inside, tuple) else inside}" if inside else ""
    return f"{getattr(node.target, '__name__', node.target)}{where}"


def walk(model: nn.Module, example: torch.Tensor, *, what: str) -> dict[str, Any]:
    """The permutation groups of ``model`` (traced on ``example``): the fields of a ``Spec``."""
    return _Builder(model, what).run(example)
