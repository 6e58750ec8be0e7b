"""The loss barrier along the straight path between two models, and how far apart their weights are.

θ(α) = (1−α)·θ_A + α·θ_B for α on a grid; at each α the held-out loss (NLL) and top-1 are measured. The
barrier is max over α of loss(θ(α)) − [(1−α)·loss(θ_A) + α·loss(θ_B)] (Frankle et al. 2020; Git Re-Basin),
the accuracy drop max over α of [(1−α)·acc_A + α·acc_B] − acc(θ(α)). θ(α) is the kit's
``zoo.kit.tensors.weights.lerp`` (float64, the ends bit for bit; integer buffers from the nearer end). With ``recompute`` the BatchNorm statistics of every interior θ(α) are re-estimated
on training data first (``zoo.kit.train.batchnorm``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from zoo.kit.tensors import lerp

if TYPE_CHECKING:  # pragma: no cover
    import torch


def grid(points: int) -> list[float]:
    return [round(i / (points - 1), 10) for i in range(points)]


def path(ctx, like, a, b, alphas: Sequence[float], split, *, recompute=None, bn_batches: int = 20,
         label: str = "path") -> dict[str, Any]:
    """Loss and top-1 along θ(α) on ``split``; ``recompute``: the training split to re-estimate BatchNorm
    statistics on at interior α (None: keep the interpolated ones)."""
    from zoo.kit.train import recompute_bn_stats

    losses, accs = [], []
    task = ctx.progress.task(label, total=len(alphas))
    for alpha in alphas:
        sd = lerp(a, b, alpha)
        model = ctx.model(sd, like)
        if recompute is not None and 0.0 < alpha < 1.0:
            recompute_bn_stats(model, recompute, bn_batches, ctx.device, seed=ctx.seed)
        m = ctx.evaluate_module(model.eval(), split)
        losses.append(m.nll)
        accs.append(m.top1)
        task.advance()
    task.close()
    return {"alphas": list(alphas), "loss": losses, "top1": accs, **summary(list(alphas), losses, accs)}


def summary(alphas, losses, accs) -> dict[str, float]:
    line = [(1 - x) * losses[0] + x * losses[-1] for x in alphas]
    acc_line = [(1 - x) * accs[0] + x * accs[-1] for x in alphas]
    return {"loss_barrier": max(l_ - m for l_, m in zip(losses, line)),
            "top1_drop": max(m - a for a, m in zip(accs, acc_line)),
            "midpoint_top1": accs[len(accs) // 2]}


def l2(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], keys) -> float:
    """‖θ_A − θ_B‖₂ over ``keys`` (the tensors the permutation spec acts on)."""
    return float(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys)) ** 0.5


def figure(curves: dict[str, dict[str, Any]], *, title: str):
    """Held-out loss and top-1 along the path, one line per variant (before, aligned, aligned + BN reset)."""
    from zoo.kit.card import pyplot

    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, c in curves.items():
        ax_loss.plot(c["alphas"], c["loss"], marker="o", ms=3, label=f"{name} (barrier {c['loss_barrier']:.3g})")
        ax_acc.plot(c["alphas"], [100 * v for v in c["top1"]], marker="o", ms=3, label=name)
    ax_loss.set(xlabel="α  (0: reference, 1: member)", ylabel="held-out loss (NLL)")
    ax_acc.set(xlabel="α  (0: reference, 1: member)", ylabel="held-out top-1 (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
