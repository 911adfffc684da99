"""Markdown tables: the one place that knows a GitHub markdown table's layout.

Callers format their cells (digits, signs, p-values) and pass them in; this module only lays
them out, so that every table of the project (results/README.md, the statistics, replication and
mechanisms tables, the CoordGate and deblurring summaries, the benchmarks) has the same shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(
    header: Sequence[object], rows: Iterable[Sequence[object]], align: str | None = None, pad_empty: bool = True
) -> list[str]:
    """The lines of a GitHub markdown table: the header, the rule, then one line per row.

    Cells are written with str(); a row shorter or longer than the header is an error, since
    markdown would silently shift or drop its cells. `align`, one letter per column (`l` left,
    `r` right, `c` centred), writes the rule as a row of its own (`| --- | ---: |`); without it the
    columns take the renderer's default (`|---|---|`). `pad_empty=False` writes an empty cell as
    `| |` instead of `|  |`.

    >>> print("\\n".join(markdown_table(["arm", "test R²"], [["control", "0.52"], ["study", 0.65]])))
    | arm | test R² |
    |---|---|
    | control | 0.52 |
    | study | 0.65 |
    >>> print("\\n".join(markdown_table(["model", "PSNR", "CI"], [["blurred", "26.18", ""]], "lrl", pad_empty=False)))
    | model | PSNR | CI |
    | --- | ---: | --- |
    | blurred | 26.18 | |
    """
    if align is None:
        rule = "|" + "---|" * len(header)
    elif len(align) != len(header) or set(align) - set(RULES):
        raise ValueError(f"markdown table alignment {align!r}: give one of {sorted(RULES)} per column ({len(header)})")
    else:
        rule = table_row(RULES[a] for a in align)
    lines = [table_row(header, pad_empty), rule]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"markdown table row {list(row)!r} has {len(row)} cells, the header {len(header)}")
        lines.append(table_row(row, pad_empty))
    return lines


# The rule cell of a left, right and centred column.
RULES = {"l": "---", "r": "---:", "c": ":---:"}


def table_row(cells: Iterable[object], pad_empty: bool = True) -> str:
    """One line of a markdown table (an empty cell as `|  |`, or `| |` with pad_empty=False)."""
    texts = [str(c) for c in cells]
    if pad_empty:
        return "| " + " | ".join(texts) + " |"
    return "|" + "|".join(f" {t} " if t else " " for t in texts) + "|"
