"""The loss barrier along the straight path between two models (the kit's ``zoo.kit.measure`` ``loss_path``,
which `zoo inspect` measures too), how far apart their weights are, and the figure of the paths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from zoo.kit.measure import alpha_grid as grid  # noqa: F401  (the names this plugin's modules use)
from zoo.kit.measure import loss_path as path  # noqa: F401
from zoo.kit.measure import path_barrier as summary  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    import torch


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
