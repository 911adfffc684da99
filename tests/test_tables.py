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


def test_alignment_writes_a_spaced_rule_and_empty_cells_can_be_one_space():
    lines = markdown_table(["model", "PSNR", "CI"], [["blurred input", 0, ""], ["U-Net(1)", "29.05", "a to b"]], "lrl")
    assert lines == [
        "| model | PSNR | CI |",
        "| --- | ---: | --- |",
        "| blurred input | 0 |  |",
        "| U-Net(1) | 29.05 | a to b |",
    ]
    # pad_empty=False: the layout of the committed deblurring table (results/deblur/table.md)
    compact = markdown_table(["a", "b", "c"], [["", "x", ""]], "lrc", pad_empty=False)
    assert compact == ["| a | b | c |", "| --- | ---: | :---: |", "| | x | |"]


@pytest.mark.parametrize("align", ["lr", "lrx"])
def test_an_alignment_that_does_not_fit_the_columns_is_refused(align):
    with pytest.raises(ValueError, match="alignment"):
        markdown_table(["a", "b", "c"], [], align)
