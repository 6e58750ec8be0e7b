"""Figures for model cards, drawn headless with matplotlib (Agg)."""

from __future__ import annotations

from typing import Sequence


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bars(labels: Sequence[str], values: Sequence[float], *, highlight: Sequence[int] = (),
         title: str, ylabel: str):
    """One bar per item; highlighted bars (the result) drawn in another colour."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(labels) + 2), 3.6), dpi=110)
    colors = ["tab:orange" if i in set(highlight) else "tab:blue" for i in range(len(values))]
    ax.bar(range(len(values)), [v * 100 for v in values], color=colors)
    for i, v in enumerate(values):
        ax.text(i, v * 100, f"{v * 100:.1f}", ha="center", va="bottom", fontsize=8)
    lo = min(values) * 100
    ax.set_ylim(max(0.0, lo - max(5.0, (max(values) * 100 - lo) * 0.6)), min(100.0, max(values) * 100 + 3))
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def greedy_path(steps: Sequence[dict], *, title: str):
    """Greedy soup: each candidate's held-out accuracy (alone) and the soup's after each step."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.5, 0.8 * len(steps) + 2), 3.8), dpi=110)
    xs = range(len(steps))
    ax.plot(xs, [s["ingredient_top1"] * 100 for s in steps], "o", color="tab:blue", label="ingredient alone")
    ax.plot(xs, [s["soup_top1"] * 100 for s in steps], "-", color="tab:orange", label="soup so far")
    for x, s in zip(xs, steps):
        ax.plot([x], [s["candidate_top1"] * 100], "x" if not s["accepted"] else "s",
                color="tab:red" if not s["accepted"] else "tab:green", markersize=7)
    ax.plot([], [], "s", color="tab:green", label="candidate soup, kept")
    ax.plot([], [], "x", color="tab:red", label="candidate soup, rejected")
    ax.set_xticks(list(xs), [s["member"] for s in steps], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("held-out top-1 (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def robustness_curve(points: Sequence[dict], *, picked: float, title: str):
    """WiSE-FT's figure: shifted-data accuracy against held-out accuracy along α, ends marked.

    ``points``: dicts with ``alpha``, ``id_top1`` and (optionally) ``ood_top1``. Without
    shifted data the figure is held-out accuracy against α.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.2), dpi=110)
    has_ood = all(p.get("ood_top1") is not None for p in points)
    xs = [p["id_top1"] * 100 for p in points] if has_ood else [p["alpha"] for p in points]
    ys = [p["ood_top1"] * 100 for p in points] if has_ood else [p["id_top1"] * 100 for p in points]
    ax.plot(xs, ys, "-o", color="tab:blue", markersize=4, label="θ(α) = (1−α)·θ₀ + α·θ₁")
    for x, y, p in zip(xs, ys, points):
        ax.annotate(f"{p['alpha']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ends = {0.0: ("s", "tab:gray", "α=0: pretrained end"), 1.0: ("D", "tab:red", "α=1: fine-tuned end")}
    for x, y, p in zip(xs, ys, points):
        if p["alpha"] in ends:
            marker, color, label = ends[p["alpha"]]
            ax.plot([x], [y], marker, color=color, markersize=9, label=label)
        if p["alpha"] == picked:
            ax.plot([x], [y], "*", color="tab:orange", markersize=15, label=f"picked: α={picked:g}")
    if has_ood:
        ax.set_xlabel("held-out (in-distribution) top-1 (%)")
        ax.set_ylabel("shifted (out-of-distribution) top-1 (%)")
    else:
        ax.set_xlabel("α")
        ax.set_ylabel("held-out top-1 (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
