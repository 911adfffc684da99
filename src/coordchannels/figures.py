"""Saving figures: the PNG, written atomically, beside the table of the numbers it draws.

A figure is never the only record of its numbers: `save_figure` writes the data drawn as CSV
next to the PNG, so a reader can check a point or redraw the figure without the code.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure

from coordchannels.io import atomic_path, write_csv

# The project's figure style. Applied while saving too: generic font families are resolved when
# the figure is drawn, and savefig draws it.
STYLE = {"font.family": "serif", "font.serif": ["STIXGeneral", "DejaVu Serif"], "mathtext.fontset": "stix"}


def save_png(fig: Figure, path: Path, dpi: int = 120, style: dict | None = STYLE) -> None:
    """Write the figure atomically (the temporary name has no .png suffix, so say the format).
    `style=None` saves with matplotlib's defaults (figures drawn without the project's style)."""
    with rc_context(style or {}), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def save_figure(fig: Figure, path: Path, data: pd.DataFrame, data_path: Path | None = None, dpi: int = 120) -> None:
    """The figure as PNG at `path` and the data it draws as CSV at `data_path` (default: `path`
    with a .csv suffix); the CSV first, so a PNG is never on disk without its numbers."""
    if Path(path).suffix != ".png":
        raise ValueError(f"save_figure writes PNG files; {path} does not end in .png")
    write_csv(data, data_path or Path(path).with_suffix(".csv"))
    save_png(fig, path, dpi)
