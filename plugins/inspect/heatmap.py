"""The heat-map of the pairwise loss barriers (matplotlib, through the kit's ``pyplot``)."""

from __future__ import annotations


def barrier_matrix(names: list[str], barriers: dict) -> list[list[float]]:
    """The symmetric matrix of ``{"a|b": {"loss_barrier": x}}``, zero on the diagonal."""
    index = {n: i for i, n in enumerate(names)}
    m = [[0.0] * len(names) for _ in names]
    for key, curve in barriers.items():
        a, b = key.split("|", 1)
        m[index[a]][index[b]] = m[index[b]][index[a]] = curve["loss_barrier"]
    return m


def figure(names: list[str], barriers: dict):
    """One annotated cell per pair: the loss barrier along θ(α) between the two members."""
    from zoo.kit.card import pyplot

    plt = pyplot()
    m = barrier_matrix(names, barriers)
    size = 1.2 + 0.7 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    top = max((v for row in m for v in row), default=0.0)
    for i, row in enumerate(m):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7,
                    color="black" if top and v > 0.6 * top else "white")
    fig.colorbar(im, ax=ax, label="loss barrier (held-out NLL)")
    ax.set_title("loss barrier along θ(α) = (1−α)·θ_row + α·θ_col", fontsize=9)
    fig.tight_layout()
    return fig
