"""The one markdown-table helper: layout, and rows that do not fit the header."""

from __future__ import annotations

import pytest

from coordchannels.tables import markdown_table


def test_a_table_is_header_rule_and_a_line_per_row():
    lines = markdown_table(("model", "p"), [("NimeshaNet", 0.0625), ["LakshyaNet", "-"]])
    assert lines == ["| model | p |", "|---|---|", "| NimeshaNet | 0.0625 |", "| LakshyaNet | - |"]
    assert markdown_table(["a", "b", "c"], []) == ["| a | b | c |", "|---|---|---|"]


def test_a_row_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match=r"has 1 cells, the header 2"):
        markdown_table(["model", "p"], [["NimeshaNet"]])
