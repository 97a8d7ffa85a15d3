"""The one Markdown table helper of the reports."""

import pytest

from metagrad import markdown


def test_table_formats_cells_and_checks_row_lengths():
    text = markdown.table(["name", "loss", "n"], [["a", 1.23456, 3], ["b", None, 12345.0]])
    assert text.splitlines() == [
        "| name | loss | n |",
        "|---|---|---|",
        "| a | 1.2346 | 3 |",
        "| b | — | 12,345 |",
    ]
    assert markdown.table(["x"], [[0.5]], cell=lambda v: f"<{v}>").endswith("| <0.5> |")
    with pytest.raises(ValueError, match="row 0 has 1 cells; expected 2"):
        markdown.table(["x", "y"], [[1]])
