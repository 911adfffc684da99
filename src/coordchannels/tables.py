"""Markdown tables: the one place that knows a GitHub markdown table's layout.

Callers format their cells (digits, signs, p-values) and pass them in; this module only lays
them out, so that every table of the project (results/README.md, the statistics tables, the
CoordGate summaries, the benchmarks) has the same shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a GitHub markdown table: the header, the rule, then one line per row.

    Cells are written with str(); a row shorter or longer than the header is an error, since
    markdown would silently shift or drop its cells.

    >>> print("\\n".join(markdown_table(["arm", "test R²"], [["control", "0.52"], ["study", 0.65]])))
    | arm | test R² |
    |---|---|
    | control | 0.52 |
    | study | 0.65 |
    """
    lines = [table_row(header), "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"markdown table row {list(row)!r} has {len(row)} cells, the header {len(header)}")
        lines.append(table_row(row))
    return lines


def table_row(cells: Iterable[object]) -> str:
    """One line of a markdown table."""
    return "| " + " | ".join(str(c) for c in cells) + " |"
