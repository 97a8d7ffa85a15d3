"""Markdown tables for the reports that runs write next to their figures (``report.md``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def number(value: Any, *, digits: int = 4) -> str:
    """``value`` as a table cell: floats with ``digits`` decimals (thousands separated from 100
    up), ``None`` as an em dash, anything else as ``str``."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    cell: Callable[[Any], str] = number,
) -> str:
    """A GitHub-flavoured Markdown table (no trailing newline).

    Args:
      columns: header cells.
      rows: one sequence of values per row, as long as ``columns``.
      cell: formats one value (default ``number``).

    Returns:
      The table's lines joined by newlines.
    """
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise ValueError(
                f"markdown.table: row {i} has {len(row)} cells; expected {len(columns)} "
                f"(columns {list(columns)})."
            )
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
