"""Checks for the PNG figures zoo writes: the file is the figure of the data it reports, not just a file.

A written PNG is decoded and compared pixel for pixel with the same plotting function drawn again, in the
test, from the numbers in the output's own zoo.json / ranking.json; the test then checks the lines of that
redrawn figure against those numbers. Together: the PNG shows exactly the reported data.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def decode(source) -> np.ndarray:
    """A PNG file (path) or PNG bytes (file object) as an RGBA float array."""
    from matplotlib.image import imread

    return imread(str(source) if isinstance(source, (str, Path)) else source, format="png")


def assert_png_is(path: Path, fig) -> np.ndarray:
    """``path`` decodes to the pixels of ``fig`` (saved as zoo saves figures), and is not blank."""
    got = decode(path)
    w, h = fig.get_size_inches() * fig.dpi
    assert got.shape[:2] == (round(h), round(w)), (got.shape, w, h)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    want = decode(buf)
    assert got.shape == want.shape and np.array_equal(got, want), f"{path.name} is not the figure of its data"
    colors = np.unique(got.reshape(-1, got.shape[-1]), axis=0)
    assert len(colors) > 16, f"{path.name} is nearly blank ({len(colors)} colours)"
    return got


def lines(fig) -> dict[str, tuple[list[float], list[float]]]:
    """``{label: (xdata, ydata)}`` of every line with a non-default label in ``fig``'s first axes."""
    ax = fig.axes[0]
    return {ln.get_label(): ([float(x) for x in ln.get_xdata()], [float(y) for y in ln.get_ydata()])
            for ln in ax.get_lines() if not ln.get_label().startswith("_")}
