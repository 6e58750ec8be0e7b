"""Stitching's training (on the one loop, ``zoo.kit.train.loop``), its evaluation of every configuration, the frontier
plot and the card table.

Training draws one configuration per batch from a seeded ``torch.Generator`` (as the data order);
the loop checkpoints it with the network, optimizer and scheduler after every epoch in
``.OUT.stitch/``, so ``--resume`` continues exactly. The least-squares init runs before the first
epoch and is part of the checkpointed weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import zoo
from zoo.kit.card import Section
from zoo.kit.train import resume_state

CHECKPOINT = "checkpoint.pt"


@dataclass
class Run:
    net: Any
    members: list
    labels: list[str]
    pretrained_cfg: dict
    options: Any
    ctx: Any

    def split(self, data: str):
        """``data`` ("train", "eval") through the one preprocessing every configuration gets."""
        return self.ctx.split(data, self.pretrained_cfg, labels=self.labels)


def train(run: Run) -> tuple[list[dict], dict[str, float]]:
    """Least-squares init (unless resuming), then ``epochs`` of one-configuration-per-batch training (zoo.kit.train.loop)."""
    import torch
    import torch.nn.functional as F

    from zoo.kit.train import LoopOptions, Step, autocast, to_device, train as train_loop

    net, opts, ctx = run.net, run.options, run.ctx
    device = ctx.device
    ckpt = ctx.checkpoint_dir / CHECKPOINT if ctx.checkpoint_dir is not None else None
    state = resume_state(ckpt, asdict(opts), ctx.resume, what="stitching", key="options") \
        if ckpt is not None else None
    split = run.split("train")
    net.to(device)
    if state is None:
        gen = torch.Generator().manual_seed(ctx.seed)
        pick = torch.randperm(len(split), generator=gen)[:opts.init_images]
        residual = net.init_stitching(to_device(split.images[pick], device))
        ctx.log("least-squares init on %d images: mean relative residual %.3f over %d layers"
                % (len(pick), sum(residual.values()) / max(1, len(residual)), len(residual)))
    else:
        residual = dict(state["residual"])
    if opts.epochs == 0:
        return [], residual
    ids = [c.id for c in net.configs]

    def batches(epoch, gen):  # the data order, then one configuration per batch, all from gen
        for idx in torch.randperm(len(split), generator=gen).split(opts.batch_size):
            yield idx, ids[int(torch.randint(len(ids), (1,), generator=gen))]

    def step(batch):
        idx, cfg = batch
        images, labels = to_device(split.images[idx], device), split.targets[idx].to(device)
        with autocast(device, True):
            logits = net.run(images, cfg).float()
        loss = F.cross_entropy(logits, labels, label_smoothing=opts.label_smoothing)
        return Step(loss, n=len(idx), correct=int((logits.argmax(1) == labels).sum()))

    options = LoopOptions(epochs=opts.epochs, lr=opts.lr, steps_per_epoch=-(-len(split) // opts.batch_size),
                          weight_decay=opts.weight_decay, freeze_bn=opts.bn == "frozen", label="stitch",
                          top1_note=" (sampled configurations)")
    history = train_loop(net, step, batches, options, device=device, generator=torch.Generator().manual_seed(
        ctx.seed + 1), checkpoint_dir=ctx.checkpoint_dir, state=state,
        save_extra={"options": asdict(opts), "residual": residual}, progress=ctx.progress, log=ctx.log)
    net.eval()
    return history, residual


def evaluate(run: Run) -> dict:
    """Held-out metrics of every configuration (fronts shared per batch), through the context so that
    plugins' metrics are measured too; top-1 and NLL also go into ``net.measured``. Returns id → Metrics."""
    import torch

    from zoo.kit.train import autocast, to_device

    net, ctx = run.net.eval(), run.ctx
    split = run.split("eval")
    if len(split) == 0:
        raise zoo.BadInput(f"--eval-data {ctx.eval_data} holds no images")
    logits: dict[int, list] = {c.id: [] for c in net.configs}
    task = ctx.progress.task(f"evaluating {len(net.configs)} configurations", total=len(split))
    with torch.inference_mode(), autocast(ctx.device, True):
        for images, labels in split.batches(ctx.batch_size):
            for i, out in net.all_logits(to_device(images, ctx.device)).items():
                logits[i].append(out.float().cpu())
            task.advance(len(labels))
    task.close()
    metrics = {i: ctx.metrics_of(torch.cat(parts), split.targets) for i, parts in logits.items()}
    for i, m in metrics.items():
        net.measured.setdefault(i, {}).update(top1=m.top1, nll=m.nll)
    return metrics


def pareto(net) -> list[int]:
    """Ids of the configurations no other beats on both FLOPs (fewer) and held-out top-1 (higher), by FLOPs."""
    m = net.measured
    ids = sorted(m, key=lambda i: (m[i]["gflops"], -m[i]["top1"]))
    front, best = [], -1.0
    for i in ids:
        if m[i]["top1"] > best:
            front.append(i)
            best = m[i]["top1"]
    return front


def plot_frontier(net):
    """Held-out top-1 against GFLOPs: stitches coloured by anchor pair, anchors as stars, the Pareto front."""
    from zoo.kit.card import pyplot

    plt = pyplot()
    m = net.measured
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    pairs = sorted({c.anchors for c in net.configs if c.stitched})
    for n, pair in enumerate(pairs):
        ids = [c.id for c in net.configs if c.anchors == pair]
        ax.scatter([m[i]["gflops"] for i in ids], [m[i]["top1"] * 100 for i in ids], s=14, alpha=0.75,
                   color=f"C{n}", label=f"stitched {net.names[pair[0]]} → {net.names[pair[1]]}")
    front = pareto(net)
    ax.step([m[i]["gflops"] for i in front], [m[i]["top1"] * 100 for i in front], where="post", color="black",
            lw=1, alpha=0.7, label="Pareto front")
    for c in net.configs:
        if not c.stitched:
            x, y = m[c.id]["gflops"], m[c.id]["top1"] * 100
            ax.scatter([x], [y], marker="*", s=160, color="tab:red", edgecolor="black", zorder=5)
            ax.annotate(net.names[c.anchors[0]], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.scatter([], [], marker="*", s=100, color="tab:red", edgecolor="black", label="anchors")
    ax.set_xlabel("GFLOPs per image (torch.utils.flop_counter)")
    ax.set_ylabel("held-out top-1 (%)")
    ax.set_title(f"{len(net.configs)} configurations of the stitched network")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def card_section(net) -> Section:
    m = net.measured
    front = set(pareto(net)) if all("top1" in m.get(c.id, {}) for c in net.configs) else set()
    rows = [[f"{c.id}{' ★' if c.id in front else ''}", c.describe(net.names), f"{m[c.id]['gflops']:.4g}",
             f"{m[c.id]['params']:,}", f"{m[c.id]['top1'] * 100:.2f}" if "top1" in m[c.id] else None]
            for c in sorted(net.configs, key=lambda c: m[c.id]["gflops"])]
    return Section(
        "Configurations", "Every configuration by FLOPs per image (counted by `torch.utils.flop_counter`, "
        "2 per multiply-add); `A[..j] → B[k..]` runs anchor A through block j, a stitching layer, then B from "
        "block k. ★ marks the Pareto front (no configuration is both cheaper and more accurate). "
        f"`zoo.load` runs configuration {net.active} unless you `select` another.",
        columns=["id", "configuration", "GFLOPs", "parameters", "held-out top-1 (%)"], rows=rows, level=2)
