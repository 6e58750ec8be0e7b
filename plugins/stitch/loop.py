"""Stitching's training loop, its evaluation of every configuration, the frontier plot and the card table.

Training draws one configuration per batch from a seeded ``torch.Generator`` (as the data order);
both are checkpointed with the network, optimizer and scheduler after every epoch in
``.OUT.stitch/``, so ``--resume`` continues exactly. The least-squares init runs before the first
epoch and is part of the checkpointed weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from zoo.kit import card, checkpoint
from zoo.kit.errors import BadInput

CHECKPOINT = "checkpoint.pt"


@dataclass
class Run:
    net: Any
    members: list
    labels: list[str]
    pretrained_cfg: dict
    options: Any
    ctx: Any

    def split(self, source: str):
        from zoo.kit.data import data_config, load_split

        return load_split(source, data_config(self.pretrained_cfg), label_names=self.labels,
                          num_classes=len(self.labels), progress=self.ctx.progress)


def train(run: Run) -> tuple[list[dict], dict[str, float]]:
    """Least-squares init (unless resuming), then ``epochs`` of one-configuration-per-batch training."""
    import torch
    import torch.nn.functional as F
    from timm.scheduler import CosineLRScheduler

    from zoo.kit.device import amp_step, autocast, grad_scaler, to_device

    net, opts, ctx = run.net, run.options, run.ctx
    device = ctx.device
    ckpt = ctx.checkpoint_dir / CHECKPOINT if ctx.checkpoint_dir is not None else None
    state = checkpoint.resume_state(ckpt, asdict(opts), ctx.resume, what="stitching", key="options") \
        if ckpt is not None else None
    split = run.split(ctx.train_data)
    net.to(device)
    if state is None:
        gen = torch.Generator().manual_seed(ctx.seed)
        pick = torch.randperm(len(split), generator=gen)[:opts.init_images]
        residual = net.init_stitching(to_device(split.images[pick], device))
        ctx.log("least-squares init on %d images: mean relative residual %.3f over %d layers"
                % (len(pick), sum(residual.values()) / max(1, len(residual)), len(residual)))
    if opts.epochs == 0:
        return [], residual
    steps_per_epoch = -(-len(split) // opts.batch_size)
    total = steps_per_epoch * opts.epochs
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    sched = CosineLRScheduler(opt, t_initial=total, lr_min=opts.lr * 0.01, t_in_epochs=False)
    scaler = grad_scaler(device)
    gen = torch.Generator().manual_seed(ctx.seed + 1)
    history: list[dict] = []
    start = 0
    if state is not None:
        start = checkpoint.restore_training(state, net, opt, sched, scaler, gen)
        history, residual = list(state["history"]), dict(state["residual"])
        ctx.log(f"resuming from epoch {start} of {opts.epochs} ({ckpt.parent})")
    ids = [c.id for c in net.configs]
    step = start * steps_per_epoch
    for epoch in range(start, opts.epochs):
        net.train()
        if opts.bn == "frozen":
            from zoo.kit.batchnorm import freeze_bn_stats

            freeze_bn_stats(net)
        task = ctx.progress.task(f"stitch epoch {epoch + 1}/{opts.epochs}", total=steps_per_epoch)
        sums = torch.zeros(3, dtype=torch.float64)  # loss·n, correct, n
        for idx in torch.randperm(len(split), generator=gen).split(opts.batch_size):
            cfg = ids[int(torch.randint(len(ids), (1,), generator=gen))]
            images, labels = to_device(split.images[idx], device), split.targets[idx].to(device)
            with autocast(device, True):
                logits = net.run(images, cfg).float()
            loss = F.cross_entropy(logits, labels, label_smoothing=opts.label_smoothing)
            step = amp_step(loss, opt, scaler, sched, step)
            sums += torch.tensor([loss.item() * len(idx), int((logits.argmax(1) == labels).sum()), len(idx)],
                                 dtype=torch.float64)
            task.describe(f"stitch epoch {epoch + 1}/{opts.epochs} · loss {sums[0] / sums[2]:.4f} · "
                          f"top-1 {sums[1] / sums[2]:.3f}")
            task.advance()
        task.close()
        history.append({"epoch": epoch + 1, "loss": float(sums[0] / sums[2]), "train_top1": float(sums[1] / sums[2]),
                        "lr": opt.param_groups[0]["lr"]})
        ctx.log(f"epoch {epoch + 1}/{opts.epochs}: loss {history[-1]['loss']:.4f}, "
                f"train top-1 (sampled configurations) {history[-1]['train_top1']:.4f}")
        if ckpt is not None:
            checkpoint.save(ckpt, checkpoint.training_state(epoch + 1, net, opt, sched, scaler, gen, history=history,
                                                           options=asdict(opts), residual=residual))
    net.eval()
    return history, residual


def evaluate(run: Run) -> None:
    """Held-out top-1 and NLL of every configuration, into ``net.measured`` (fronts shared per batch)."""
    import torch
    import torch.nn.functional as F

    from zoo.kit.device import autocast, to_device

    net, ctx = run.net.eval(), run.ctx
    split = run.split(ctx.eval_data)
    if len(split) == 0:
        raise BadInput(f"--eval-data {ctx.eval_data} holds no images")
    correct = {c.id: 0 for c in net.configs}
    nll = {c.id: 0.0 for c in net.configs}
    task = ctx.progress.task(f"evaluating {len(net.configs)} configurations", total=len(split))
    with torch.inference_mode(), autocast(ctx.device, True):
        for images, labels in split.batches(ctx.batch_size):
            for i, logits in net.all_logits(to_device(images, ctx.device)).items():
                logits = logits.float().cpu()
                correct[i] += int((logits.argmax(1) == labels).sum())
                nll[i] += float(F.cross_entropy(logits, labels, reduction="sum"))
            task.advance(len(labels))
    task.close()
    for i in correct:
        net.measured.setdefault(i, {}).update(top1=correct[i] / len(split), nll=nll[i] / len(split))


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
    from zoo.kit.plots import pyplot

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


def card_section(net) -> card.Section:
    m = net.measured
    front = set(pareto(net)) if all("top1" in m.get(c.id, {}) for c in net.configs) else set()
    rows = [[f"{c.id}{' ★' if c.id in front else ''}", c.describe(net.names), f"{m[c.id]['gflops']:.4g}",
             f"{m[c.id]['params']:,}", f"{m[c.id]['top1'] * 100:.2f}" if "top1" in m[c.id] else None]
            for c in sorted(net.configs, key=lambda c: m[c.id]["gflops"])]
    return card.Section(
        "Configurations", "Every configuration by FLOPs per image (counted by `torch.utils.flop_counter`, "
        "2 per multiply-add); `A[..j] → B[k..]` runs anchor A through block j, a stitching layer, then B from "
        "block k. ★ marks the Pareto front (no configuration is both cheaper and more accurate). "
        f"`zoo.load` runs configuration {net.active} unless you `select` another.",
        columns=["id", "configuration", "GFLOPs", "parameters", "held-out top-1 (%)"], rows=rows, level=2)
