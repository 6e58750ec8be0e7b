"""Model-card sections that strategies fill: a title, a paragraph, and a table of rows.

A strategy appends :class:`Section` s to ``Combined.card_sections``; zoo renders every card from one
template (``zoo/api/modelcard.md``, through huggingface_hub's ``ModelCard.from_template``), so a
strategy never writes Markdown tables by hand::

    result.card_sections.append(card.Section(
        "Greedy soup", "Ingredients in order of held-out accuracy.",
        columns=["member", "alone", "kept"], rows=[["a", 0.91, "yes"], ["b", 0.88, "no"]]))

Floats in rows are shown with four decimals (``digits``); a cell may also be a string already formatted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass
class Section:
    """One section of a model card: ``title``, Markdown ``text`` before the table, optional table, ``after``."""

    title: str
    text: str = ""
    columns: Sequence[str] = ()
    rows: Sequence[Sequence[Any]] = ()
    after: str = ""
    digits: int = 4
    #: heading level: 3 nests it under the card's "Details"; 2 makes it a top-level section
    level: int = 3
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def table(self) -> str:
        return table(self.columns, self.rows, digits=self.digits) if self.columns else ""

    def markdown(self) -> str:
        parts = [f"{'#' * self.level} {self.title}", self.text.strip(), self.table(), self.after.strip()]
        return "\n\n".join(p for p in parts if p)


def cell(value: Any, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` decimals, None as a dash, ``|`` escaped."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, digits: int = 4) -> str:
    """A Markdown table; every row has one cell per column."""
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"a card table row has {len(row)} cells for {len(columns)} columns: {list(row)}")
    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render(section: Section | str) -> str:
    """A section as Markdown (a plain string, as older plugins return, is kept as it is)."""
    return section if isinstance(section, str) else section.markdown()
