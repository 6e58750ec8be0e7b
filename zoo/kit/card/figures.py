"""Figures for model cards, drawn headless with matplotlib (Agg)."""

from __future__ import annotations

from typing import Sequence


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (figures are written to files, never shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bars(labels: Sequence[str], values: Sequence[float], *, highlight: Sequence[int] = (),
         title: str, ylabel: str):
    """One bar per item; highlighted bars (the result) drawn in another colour."""
    plt = pyplot()
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
    plt = pyplot()
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


def _finish(fig, ax, title: str):
    """Title, a small legend, a light grid, a tight layout: how the curve figures end."""
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def robustness_curve(points: Sequence[dict], *, picked: float, title: str):
    """WiSE-FT's figure: shifted-data accuracy against held-out accuracy along α, ends marked.

    ``points``: dicts with ``alpha``, ``id_top1`` and (optionally) ``ood_top1``. Without
    shifted data the figure is held-out accuracy against α.
    """
    plt = pyplot()
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
    return _finish(fig, ax, title)


def sweep_curve(points: Sequence[dict], *, option: str, picked: float, title: str):
    """A swept option against held-out top-1 (and shifted top-1 where measured), the kept value starred.

    ``points``: dicts with ``value``, ``metrics`` (``top1``) and optionally ``ood_metrics``.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8), dpi=110)
    xs = [p["value"] for p in points]
    ax.plot(xs, [p["metrics"]["top1"] * 100 for p in points], "-o", color="tab:blue", markersize=4,
            label="held-out top-1")
    if all("ood_metrics" in p for p in points):
        ax.plot(xs, [p["ood_metrics"]["top1"] * 100 for p in points], "-s", color="tab:purple", markersize=4,
                label="shifted top-1")
    best = next(p for p in points if p["value"] == picked)
    ax.plot([picked], [best["metrics"]["top1"] * 100], "*", color="tab:orange", markersize=15,
            label=f"kept: {option}={picked:g}")
    ax.set_xlabel(option)
    ax.set_ylabel("top-1 (%)")
    return _finish(fig, ax, title)


def score_vs_accuracy(rows: Sequence[dict], *, metric: str, tau: float, selected: Sequence[str] = ()):
    """zoo select --validate: each member's metric score against its linear-probe accuracy, τ in the title."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.8, 4.2), dpi=110)
    chosen = set(selected)
    for i, r in enumerate(sorted(rows, key=lambda r: r["score"])):
        picked = r["spec"] in chosen
        ax.plot([r["score"]], [r["probe_top1"] * 100], "o" if picked else "s", markersize=8 if picked else 6,
                color="tab:orange" if picked else "tab:blue")
        ax.annotate(r["member"], (r["score"], r["probe_top1"] * 100), textcoords="offset points",
                    xytext=(5, 5 if i % 2 == 0 else -11), fontsize=7)  # alternate: neighbours do not overlap
    ax.margins(x=0.18, y=0.08)
    ax.plot([], [], "o", color="tab:orange", label="selected")
    ax.plot([], [], "s", color="tab:blue", label="not selected")
    ax.set_xlabel(f"{metric} score (higher: should transfer better)")
    ax.set_ylabel("linear-probe held-out top-1 (%)")
    ax.set_title(f"{metric} against linear-probe accuracy — Kendall τ = {tau:.2f}")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def training_curves(history: Sequence[dict], *, top1_title: str = "training top-1 (%)"):
    """Loss and training top-1 per epoch, one line per phase (rows' ``phase``, e.g. LP then FT) and a line
    for every other ``*_loss`` column (e.g. a discriminator's), from a training loop's history."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=110)
    phases = list(dict.fromkeys(h.get("phase") for h in history))
    colors = ("tab:gray", "tab:blue", "tab:green", "tab:orange")
    for i, phase in enumerate(phases):
        rows = [h for h in history if h.get("phase") == phase]
        label = phase.upper() if phase else "loss"
        color = colors[i % len(colors)] if phase else None
        epochs = [h["epoch"] for h in rows]
        axes[0].plot(epochs, [h["loss"] for h in rows], "-o", ms=3, color=color, label=label)
        axes[1].plot(epochs, [h["train_top1"] * 100 for h in rows], "-o", ms=3,
                     color=color or "tab:green", label=label)
    extra = [k for k in (history[0] if history else {}) if k.endswith("_loss") and k != "loss"]
    for key in extra:
        axes[0].plot([h["epoch"] for h in history], [h[key] for h in history], "-o", ms=3,
                     label=key[: -len("_loss")])
    axes[0].set_title("training loss")
    axes[1].set_title(top1_title)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def merging_coefficients(coefficients: dict[str, Sequence[float]], *, layers: Sequence[str] | None = None,
                         history: Sequence[dict] = (), title: str):
    """Learned merging coefficients (AdaMerging's λ): one line per member over its layers (``layers``: the tensor
    names, in model order), or one bar per member with one λ each (``layers`` None); beside it, the entropy
    per epoch from a training history (``loss`` and every ``entropy/TASK`` column), where there is one."""
    plt = pyplot()
    panels = 2 if history else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.6 * panels + (2.4 if layers else 0), 3.8), dpi=110,
                             squeeze=False)
    ax = axes[0][0]
    names = list(coefficients)
    if layers:
        for name in names:
            ax.plot(range(len(layers)), list(coefficients[name]), "-", lw=1.2, label=name)
        ticks = list(range(0, len(layers), max(1, len(layers) // 12)))
        ax.set_xticks(ticks, [layers[i] for i in ticks], rotation=40, ha="right", fontsize=6)
        ax.set_xlabel("tensor (model order)")
    else:
        values = [float(coefficients[n][0]) for n in names]
        ax.bar(range(len(names)), values, color="tab:blue")
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.plot([], [], "s", color="tab:blue", label="λ per member")
    ax.set_ylabel("λ")
    _finish(fig, ax, title)
    if history:
        ax = axes[0][1]
        epochs = [h["epoch"] for h in history]
        columns = [k for k in history[0] if k.startswith("entropy/")]
        if len(columns) > 1 or not columns:
            ax.plot(epochs, [h["loss"] for h in history], "-o", ms=3, color="black", label="sum over tasks")
        for key in columns:
            ax.plot(epochs, [h[key] for h in history], "-o", ms=3, label=key[len("entropy/"):])
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (0: before learning)")
        ax.set_ylabel("mean entropy of the predictions (nats)")
        _finish(fig, ax, "entropy while learning λ")
    return fig
