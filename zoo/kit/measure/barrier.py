"""The loss barrier along the straight path between two models of one architecture.

θ(α) = (1−α)·θ_A + α·θ_B for α on a grid; at each α the held-out loss (NLL) and top-1 are measured. The
barrier is max over α of loss(θ(α)) − [(1−α)·loss(θ_A) + α·loss(θ_B)] (Frankle et al. 2020; Git Re-Basin),
the accuracy drop max over α of [(1−α)·acc_A + α·acc_B] − acc(θ(α)). θ(α) is the kit's
``zoo.kit.tensors.weights.lerp`` (float64, the ends bit for bit; integer buffers from the nearer end). With
``recompute`` the BatchNorm statistics of every interior θ(α) are re-estimated on training data first
(``zoo.kit.train.batchnorm``). `zoo align --report` and `zoo inspect` both measure it here.
"""

from __future__ import annotations

from typing import Any, Sequence


def alpha_grid(points: int) -> list[float]:
    """``points`` values of α evenly spaced on [0, 1], both ends included."""
    return [round(i / (points - 1), 10) for i in range(points)]


def loss_path(ctx, like, a, b, alphas: Sequence[float], split, *, recompute=None, bn_batches: int = 20,
              label: str = "path") -> dict[str, Any]:
    """Loss and top-1 along θ(α) on ``split`` (models built and evaluated by the strategy Context ``ctx``);
    ``recompute``: the training split to re-estimate BatchNorm statistics on at interior α (None: keep the
    interpolated ones). Returns the curves and :func:`path_barrier`'s summary."""
    from zoo.kit.tensors.weights import lerp
    from zoo.kit.train.batchnorm import recompute_bn_stats

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
    return {"alphas": list(alphas), "loss": losses, "top1": accs, **path_barrier(list(alphas), losses, accs)}


def path_barrier(alphas, losses, accs) -> dict[str, float]:
    """The loss barrier, the top-1 drop below the straight line between the ends, and top-1 at the midpoint."""
    line = [(1 - x) * losses[0] + x * losses[-1] for x in alphas]
    acc_line = [(1 - x) * accs[0] + x * accs[-1] for x in alphas]
    return {"loss_barrier": max(l_ - m for l_, m in zip(losses, line)),
            "top1_drop": max(m - a for a, m in zip(accs, acc_line)),
            "midpoint_top1": accs[len(accs) // 2]}
