"""Stitchable Neural Networks (Pan et al., CVPR 2023): one network, many accuracy–cost points.

Anchors are pretrained members of one family, ordered small to large. A *stitch* (j, k) between
nearest anchors A and B runs A's stem and blocks 0..j, a stitching layer, then B's blocks k.. and
head. Every anchor alone is a configuration too.

Stitches are enumerated as in ziplab/SN-Net: the block ids of A and B are paired (stage by stage;
where one anchor is deeper, the shallower one's ids are mapped onto it by nearest interpolation),
a window of ``window`` paired ids slides with ``stride`` over them, every (A id, B id) inside a
window is a stitch, and the stitches a window adds share one stitching layer. Depth 12 against
depth 12 gives 34 stitches and 11 layers. A stitch is kept only where A's output and B's input
have the same token count (ViT) or spatial size (CNN); a layer whose stitches differ in channel
counts is split by them.

Stitching layers are ``nn.Linear`` on tokens and 1×1 ``nn.Conv2d`` on maps, initialised by least
squares on one batch (:func:`least_squares`); a layer shared by several stitches takes the mean
of their solutions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

import zoo
from zoo.plugins.stitch.blocks import FAMILIES, Family


@dataclass(frozen=True)
class Config:
    """One way through the network: an anchor alone, or a stitch between two nearest anchors."""

    id: int
    anchors: tuple[int, ...]  # (a,) or (front, back)
    front_block: int | None = None  # j: the front anchor runs its blocks 0..j
    back_block: int | None = None  # k: the back anchor runs its blocks k..
    layer: str | None = None  # the stitching layer's name

    @property
    def stitched(self) -> bool:
        return len(self.anchors) == 2

    def describe(self, names: Sequence[str]) -> str:
        if not self.stitched:
            return names[self.anchors[0]]
        a, b = self.anchors
        return f"{names[a]}[..{self.front_block}] → {names[b]}[{self.back_block}..]"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "anchors": list(self.anchors), "front_block": self.front_block,
                "back_block": self.back_block, "layer": self.layer}


# ---- enumeration ----------------------------------------------------------------------------
def paired_positions(depths_a: Sequence[int], depths_b: Sequence[int]) -> list[tuple[int, int]]:
    """(A block id, B block id) pairs, stage by stage: in each stage the deeper anchor's ids all appear
    and the shallower one's are mapped onto them by nearest interpolation (floor(p·d/D), as
    ``torch.nn.functional.interpolate(mode="nearest")``)."""
    out, off_a, off_b = [], 0, 0
    for da, db in zip(depths_a, depths_b):
        d = max(da, db)
        out += [(off_a + p * da // d, off_b + p * db // d) for p in range(d)]
        off_a, off_b = off_a + da, off_b + db
    return out


def window_stitches(positions: Sequence[tuple[int, int]], window: int = 2,
                    stride: int = 1) -> list[tuple[int, int, int]]:
    """Every (j, k, window index) a sliding window over the paired ids adds, in order, without repeats.

    Windows that add nothing new (the last one, with stride 1) get no index, so the indices count the
    stitching layers: depth 12 against depth 12 gives 34 stitches over 11 windows.
    """
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int, int]] = []
    layer = 0
    for i in range(0, len(positions), stride):
        ids = positions[i:i + window]
        new = [(j, k) for j, _ in ids for _, k in ids if (j, k) not in seen]
        new = list(dict.fromkeys(new))
        if not new:
            continue
        seen.update(new)
        out += [(j, k, layer) for j, k in new]
        layer += 1
    return out


# ---- least squares -----------------------------------------------------------------------
def rows(features: torch.Tensor, kind: str) -> torch.Tensor:
    """Features as (samples × channels): tokens (B, L, D) → (B·L, D); maps (B, C, H, W) → (B·H·W, C)."""
    if kind == "maps":
        features = features.permute(0, 2, 3, 1)
    return features.reshape(-1, features.shape[-1])


def least_squares(x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W, b minimising ‖x1·Wᵀ + b − x2‖ (rows are samples), in float64: X₁ = [x1, 1], M = pinv(X₁)·x2,
    W = M[:-1]ᵀ, b = M[-1] (SN-Net's initialisation, after Csiszárik et al. 2021)."""
    x1, x2 = x1.double(), x2.double()
    ones = torch.ones(len(x1), 1, dtype=x1.dtype, device=x1.device)
    m = torch.linalg.pinv(torch.cat([x1, ones], dim=1)) @ x2
    return m[:-1].T.contiguous(), m[-1].contiguous()


def stitching_layer(kind: str, c_in: int, c_out: int) -> nn.Module:
    """``nn.Linear`` per token for transformers, a 1×1 ``nn.Conv2d`` (with bias) for CNNs."""
    return nn.Linear(c_in, c_out) if kind == "tokens" else nn.Conv2d(c_in, c_out, kernel_size=1, bias=True)


# ---- the network ------------------------------------------------------------------------
class SNNet(nn.Module):
    """Anchors, stitching layers and the configurations; ``forward`` runs the selected one.

    ``select(id)`` or ``select(max_gflops=…, max_params=…)`` picks a configuration (the most accurate
    within the budget when accuracies were measured, else the most costly). ``measured`` holds each
    configuration's ``gflops``, ``params`` and, once evaluated, ``top1``.
    """

    def __init__(self, anchors: Sequence[nn.Module], *, names: Sequence[str], family: str,
                 configs: Sequence[Config], layers: dict[str, tuple[int, int]],
                 measured: dict[int, dict[str, float]] | None = None, default: int | None = None):
        super().__init__()
        self.anchors = nn.ModuleList(anchors)
        self.names = list(names)
        self.family: Family = FAMILIES[family]
        self.configs = list(configs)
        self.stitch = nn.ModuleDict({name: stitching_layer(self.family.features, c_in, c_out)
                                     for name, (c_in, c_out) in layers.items()})
        self.by_id = {c.id: c for c in self.configs}
        self.measured = {int(k): dict(v) for k, v in (measured or {}).items()}
        #: the id of the configuration ``forward`` runs (default: the largest anchor)
        self.active = len(anchors) - 1 if default is None else default

    # ---- building ---------------------------------------------------------------------
    @classmethod
    def build(cls, anchors: Sequence[nn.Module], names: Sequence[str], *, input_size: Sequence[int],
              window: int = 2, stride: int = 1) -> SNNet:
        """Enumerate the configurations of anchors ordered small to large (nearest pairs only)."""
        from zoo.plugins.stitch.blocks import family_of

        if len(anchors) < 2:
            raise zoo.BadInput(f"stitching needs at least 2 anchors of one family, got {len(anchors)}; give two or more "
                               "members (-m small -m large)")
        families = [family_of(m, n) for m, n in zip(anchors, names)]
        family = families[0]
        for f, n in zip(families, names):
            if f is not family:
                raise zoo.BadInput(f"anchors {names[0]} ({family.name}) and {n} ({f.name}) are of different families and "
                                   f"cannot be stitched; give members of one family (all {family.name}, or all {f.name})")
        depths = [family.depths(m) for m in anchors]
        for d, n in zip(depths, names):
            if len(d) != len(depths[0]):
                raise zoo.BadInput(f"anchors {names[0]} and {n} have {len(depths[0])} and {len(d)} stages; stitching pairs "
                                   "blocks stage by stage, so anchors must share the stage layout of one family")
        probe = torch.zeros(1, *input_size)
        shapes = []
        with torch.no_grad():
            for m in anchors:
                outs = _block_outputs(family, m.eval(), probe)
                shapes.append(([tuple(t.shape) for t in outs[1:]], [tuple(t.shape) for t in outs[:-1]]))
        configs = [Config(i, (i,)) for i in range(len(anchors))]
        layers: dict[str, tuple[int, int]] = {}
        for a in range(len(anchors) - 1):
            b = a + 1
            outs_a, ins_b = shapes[a][0], shapes[b][1]
            groups: dict[tuple[int, int, int], str] = {}
            for j, k, w in window_stitches(paired_positions(depths[a], depths[b]), window, stride):
                if not _fits(outs_a[j], ins_b[k], family.features):
                    continue
                key = (w, outs_a[j][_channel_axis(family)], ins_b[k][_channel_axis(family)])
                if key not in groups:
                    groups[key] = f"{a}-{b}_{len(groups)}"
                    layers[groups[key]] = key[1:]
                configs.append(Config(len(configs), (a, b), j, k, groups[key]))
            if not groups:
                raise zoo.BadInput(f"anchors {names[a]} and {names[b]}: no block of one has the shape the other expects "
                                   f"({outs_a[0]} vs {ins_b[0]}…); they cannot be stitched (same patch size and input "
                                   "resolution are needed)")
        return cls(anchors, names=names, family=family.name, configs=configs, layers=layers)

    # ---- running ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, self.by_id[self.active])

    def run(self, x: torch.Tensor, config: Config | int) -> torch.Tensor:
        cfg = self.by_id[config] if isinstance(config, int) else config
        if not cfg.stitched:
            return self.anchors[cfg.anchors[0]](x)  # the anchor itself: its outputs exactly
        f, fam = self.anchors[cfg.anchors[0]], self.family
        h = fam.stem(f, x)
        for block in fam.blocks(f)[:cfg.front_block + 1]:
            h = block(h)
        return self.back(self.stitch[cfg.layer](h), cfg)

    def back(self, h: torch.Tensor, cfg: Config) -> torch.Tensor:
        """The back anchor from block k on, given the stitching layer's output."""
        b = self.anchors[cfg.anchors[1]]
        for block in self.family.blocks(b)[cfg.back_block:]:
            h = block(h)
        return self.family.head(b, h)

    def all_logits(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Every configuration's output on ``x``; each front anchor's blocks run once for all its stitches."""
        out: dict[int, torch.Tensor] = {}
        fronts: dict[int, list[torch.Tensor]] = {}
        for cfg in self.configs:
            if not cfg.stitched:
                out[cfg.id] = self.anchors[cfg.anchors[0]](x)
                continue
            a = cfg.anchors[0]
            if a not in fronts:
                fronts[a] = _block_outputs(self.family, self.anchors[a], x)[1:]
            out[cfg.id] = self.back(self.stitch[cfg.layer](fronts[a][cfg.front_block]), cfg)
        return out

    # ---- choosing -----------------------------------------------------------------------
    def select(self, config: int | None = None, *, max_gflops: float | None = None,
               max_params: float | None = None) -> SNNet:
        """Run configuration ``config`` from now on, or the best one within a FLOPs / parameter budget."""
        if config is not None:
            if int(config) not in self.by_id:
                raise zoo.BadInput(f"configuration {config} does not exist; ids run from {min(self.by_id)} to "
                                   f"{max(self.by_id)} (zoo stitch list FOLDER shows them)")
            self.active = int(config)
            return self
        if max_gflops is None and max_params is None:
            raise zoo.BadInput("select() needs a configuration id, max_gflops or max_params")
        self.active = self.best_within(max_gflops=max_gflops, max_params=max_params)
        return self

    def best_within(self, *, max_gflops: float | None = None, max_params: float | None = None) -> int:
        meas = {c.id: self.cost(c.id) for c in self.configs}
        ok = [i for i, m in meas.items() if (max_gflops is None or m["gflops"] <= max_gflops)
              and (max_params is None or m["params"] <= max_params)]
        if not ok:
            cheapest = min(meas, key=lambda i: (meas[i]["gflops"], meas[i]["params"]))
            smallest = min(meas, key=lambda i: meas[i]["params"])
            raise zoo.BadInput(f"no configuration meets the budget (max_gflops={max_gflops}, max_params={max_params}); "
                               f"the cheapest is configuration {cheapest} at {meas[cheapest]['gflops']:.4g} GFLOPs and the "
                               f"smallest is {smallest} with {meas[smallest]['params']:,} parameters")
        key = "top1" if all("top1" in self.measured.get(i, {}) for i in ok) else "gflops"
        return max(ok, key=lambda i: (meas[i][key], -meas[i]["params"]))

    @property
    def config(self) -> Config:
        return self.by_id[self.active]

    # ---- cost ---------------------------------------------------------------------------
    def cost(self, config: int) -> dict[str, float]:
        m = self.measured.setdefault(config, {})
        if "params" not in m:
            m["params"] = self.param_count(config)
        if "gflops" not in m:
            raise zoo.BadInput("this network's FLOPs were never counted; call count_flops(input_size) first")
        return m

    def param_count(self, config: int | Config) -> int:
        """Parameters a configuration uses: its front's stem and blocks ..j, the layer, its back's blocks k.. and head."""
        cfg = self.by_id[config] if isinstance(config, int) else config
        return sum(p.numel() for _, p in self.used_parameters(cfg))

    def used_parameters(self, cfg: Config):
        """(state-dict key, tensor) of every parameter and buffer ``cfg`` reads."""
        for key, t in self.state_dict(keep_vars=True).items():
            if uses(self, cfg, key) and isinstance(t, nn.Parameter):
                yield key, t

    def used_state(self, cfg: Config) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if uses(self, cfg, k)}

    def count_flops(self, input_size: Sequence[int], progress: Any = None) -> None:
        """FLOPs of every configuration for one image, counted by ``torch.utils.flop_counter`` (2 per multiply-add).

        Each part is counted once (every anchor's stem, blocks and head, every stitching layer on the
        input it sees) and a configuration's FLOPs are the sum of its parts: one pass per anchor instead of
        one per configuration (counting runs every op through Python). Tests check the sums against
        counting each configuration's own run.
        """
        device = next(self.parameters()).device
        x = torch.zeros(1, *input_size, device=device)
        was = self.training
        self.eval()
        task = progress.task("counting FLOPs", total=len(self.anchors) + len(self.stitch)) if progress else None
        with torch.no_grad():
            parts = []  # per anchor: (stem, [block 0, block 1, …], head) FLOPs, and each block's output
            for model in self.anchors:
                parts.append(_part_flops(self.family, model, x))
                if task:
                    task.advance()
            layer_flops: dict[str, int] = {}
            for cfg in self.configs:
                if cfg.stitched and cfg.layer not in layer_flops:
                    h = parts[cfg.anchors[0]][3][cfg.front_block]
                    layer_flops[cfg.layer] = _counted(self.stitch[cfg.layer], h)[1]
                    if task:
                        task.advance()
            for cfg in self.configs:
                stem, blocks, head, _ = parts[cfg.anchors[0]]
                if cfg.stitched:
                    _, blocks_b, head, _ = parts[cfg.anchors[1]]
                    total = (stem + sum(blocks[:cfg.front_block + 1]) + layer_flops[cfg.layer]
                             + sum(blocks_b[cfg.back_block:]) + head)
                else:
                    total = stem + sum(blocks) + head
                m = self.measured.setdefault(cfg.id, {})
                m["gflops"] = total / 1e9
                m["params"] = self.param_count(cfg)
        if task:
            task.close()
        self.train(was)

    # ---- least-squares initialisation ------------------------------------------------------------
    @torch.no_grad()
    def init_stitching(self, x: torch.Tensor) -> dict[str, float]:
        """Least-squares init of every stitching layer on the batch ``x``; returns each layer's relative
        residual ‖X₁M − X₂‖/‖X₂‖ (averaged over the stitches that share it)."""
        kind = self.family.features
        was = self.training
        self.eval()
        by_layer: dict[str, list[Config]] = {}
        for cfg in self.configs:
            if cfg.stitched:
                by_layer.setdefault(cfg.layer, []).append(cfg)
        residual = {}
        for a in range(len(self.anchors) - 1):  # one pair at a time: two anchors' features in memory
            outs_a = _block_outputs(self.family, self.anchors[a], x)
            ins_b = _block_outputs(self.family, self.anchors[a + 1], x)
            for name, cfgs in by_layer.items():
                if cfgs[0].anchors[0] != a:
                    continue
                pairs = [(rows(outs_a[c.front_block + 1], kind).double(), rows(ins_b[c.back_block], kind).double())
                         for c in cfgs]
                solved = [least_squares(x1, x2) for x1, x2 in pairs]
                w = torch.stack([s[0] for s in solved]).mean(0)
                b = torch.stack([s[1] for s in solved]).mean(0)
                layer = self.stitch[name]
                layer.weight.copy_(w.reshape(layer.weight.shape).to(layer.weight))
                layer.bias.copy_(b.to(layer.bias))
                errs = [float((x1 @ w.T + b - x2).norm() / x2.norm().clamp_min(1e-12)) for x1, x2 in pairs]
                residual[name] = sum(errs) / len(errs)
            del outs_a, ins_b
        self.train(was)
        return residual


def _block_outputs(family: Family, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """[stem output, block 0 output, block 1 output, …]: item k is the input of block k."""
    h = family.stem(model, x)
    out = [h]
    for block in family.blocks(model):
        h = block(h)
        out.append(h)
    return out


def _counted(fn, *args) -> tuple[Any, int]:
    """``fn(*args)`` and the FLOPs ``torch.utils.flop_counter`` counts in it."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        out = fn(*args)
    return out, counter.get_total_flops()


def _part_flops(family: Family, model: nn.Module, x: torch.Tensor) -> tuple[int, list[int], int, list[torch.Tensor]]:
    """FLOPs of ``model``'s stem, of each block and of its head on ``x``, and each block's output."""
    h, stem = _counted(family.stem, model, x)
    blocks, outs = [], []
    for block in family.blocks(model):
        h, n = _counted(block, h)
        blocks.append(n)
        outs.append(h)
    _, head = _counted(family.head, model, h)
    return stem, blocks, head, outs


def _channel_axis(family: Family) -> int:
    return -1 if family.features == "tokens" else 1


def _fits(out_shape: tuple, in_shape: tuple, kind: str) -> bool:
    """A stitch needs the same token count (tokens) or spatial size (maps); channels may differ."""
    return out_shape[1] == in_shape[1] if kind == "tokens" else out_shape[2:] == in_shape[2:]


def uses(net: SNNet, cfg: Config, key: str) -> bool:
    """Whether state-dict ``key`` of ``net`` is read by configuration ``cfg``."""
    if key.startswith("stitch."):
        return cfg.stitched and key.split(".")[1] == cfg.layer
    _, index, rest = key.split(".", 2)
    a = int(index)
    if a not in cfg.anchors:
        return False
    if not cfg.stitched:
        return True
    part = net.family.part_of(net.anchors[a], rest)
    if a == cfg.anchors[0]:  # the front: stem and blocks 0..j
        return part == "stem" or (isinstance(part, int) and part <= cfg.front_block)
    return part == "head" or (isinstance(part, int) and part >= cfg.back_block)
