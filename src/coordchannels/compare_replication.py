"""Compare a fresh replication folder with a committed one, statistic by statistic.

Per-fold logs are bit-identical only on the same CPU model and torch build: on another machine the
floating-point sums differ in their last bits and training amplifies that (one job differed by 0.06
test R² after one epoch between two CPU models). A fresh replication is therefore compared with the
committed one by what the study concludes, not byte by byte:

- per grouping, replication, model and metric, the study - control mean difference
  (`replications.csv`): it agrees when |fresh - committed| is at most the half-width of the
  committed replication's confidence interval (`--diff-tolerance` gives a fixed one instead);
- per grouping, replication, model and arm, the mean final test R² (`arm_levels.csv`): it agrees
  when |fresh - committed| <= `--level-tolerance` (default 0.05 R²).

Only the rows present in both folders are compared (a fresh run of replications 1-2 against ten
committed ones compares two). Prints a table and exits 1 when any row is outside its tolerance,
2 when the folders share no row.

    python -m coordchannels.compare_replication data/results/ecg_replications results/ecg_replications
    (make compare-replication)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from coordchannels.entry import UserError, reports_errors
from coordchannels.tables import markdown_table

DIFFS, LEVELS = "replications.csv", "arm_levels.csv"
DIFF_KEYS = ["grouping", "replication", "model", "metric"]
LEVEL_KEYS = ["grouping", "replication", "model", "arm"]
LEVEL_TOLERANCE = 0.05


def read_table(folder: Path, name: str, columns: list[str]) -> pd.DataFrame:
    path = folder / name
    if not path.is_file():
        raise UserError(f"{path} not found (give a folder written by `make replicate`, holding {DIFFS} and {LEVELS})")
    table = pd.read_csv(path)
    missing = sorted(set(columns) - set(table.columns))
    if missing:
        raise UserError(f"{path} lacks column(s) {missing} (not a replication summary of this project)")
    return table


def compare_diffs(fresh: pd.DataFrame, committed: pd.DataFrame, tolerance: float | None) -> pd.DataFrame:
    rows = fresh.merge(committed, on=DIFF_KEYS, suffixes=("_fresh", "_committed"))
    half_width = (rows.ci_high_committed - rows.ci_low_committed) / 2
    return pd.DataFrame(
        {
            **{k: rows[k] for k in DIFF_KEYS},
            "statistic": "study - control",
            "fresh": rows.mean_diff_fresh,
            "committed": rows.mean_diff_committed,
            "tolerance": half_width if tolerance is None else tolerance,
        }
    )


def compare_levels(fresh: pd.DataFrame, committed: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    rows = fresh.merge(committed, on=LEVEL_KEYS, suffixes=("_fresh", "_committed"))
    return pd.DataFrame(
        {
            **{k: rows[k] for k in ("grouping", "replication", "model")},
            "metric": "test_r2",
            "statistic": "mean of " + rows.arm,
            "fresh": rows.test_r2_mean_fresh,
            "committed": rows.test_r2_mean_committed,
            "tolerance": tolerance,
        }
    )


def comparison(fresh: Path, committed: Path, diff_tolerance: float | None, level_tolerance: float) -> pd.DataFrame:
    """Every shared statistic with its fresh and committed value, difference, tolerance and verdict."""
    diff_cols = [*DIFF_KEYS, "mean_diff", "ci_low", "ci_high"]
    level_cols = [*LEVEL_KEYS, "test_r2_mean"]
    table = pd.concat(
        [
            compare_diffs(read_table(fresh, DIFFS, diff_cols), read_table(committed, DIFFS, diff_cols), diff_tolerance),
            compare_levels(
                read_table(fresh, LEVELS, level_cols), read_table(committed, LEVELS, level_cols), level_tolerance
            ),
        ],
        ignore_index=True,
    )
    table["difference"] = table.fresh - table.committed
    table["within"] = table.difference.abs() <= table.tolerance
    return table.sort_values(["grouping", "replication", "model", "metric", "statistic"], ignore_index=True)


def render(table: pd.DataFrame) -> str:
    header = ["grouping", "rep", "model", "metric", "statistic", "fresh", "committed", "difference", "tolerance"]
    rows = [
        [r.grouping, r.replication, r.model, r.metric, r.statistic, f"{r.fresh:+.4f}", f"{r.committed:+.4f}"]
        + [f"{r.difference:+.4f}", f"{r.tolerance:.4f}", "yes" if r.within else "NO"]
        for r in table.itertuples()
    ]
    return "\n".join(markdown_table([*header, "agrees"], rows))


@reports_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("fresh", type=Path, help="the fresh replication folder (e.g. data/results/ecg_replications)")
    p.add_argument("committed", type=Path, help="the committed one (e.g. results/ecg_replications)")
    p.add_argument(
        "--diff-tolerance",
        type=float,
        default=None,
        help="fixed tolerance of study - control (default: the committed CI half-width of each row)",
    )
    p.add_argument("--level-tolerance", type=float, default=LEVEL_TOLERANCE, help="tolerance of arm means (R²)")
    a = p.parse_args(argv)
    table = comparison(a.fresh, a.committed, a.diff_tolerance, a.level_tolerance)
    if table.empty:
        print(
            f"error: {a.fresh} and {a.committed} share no replication (compare runs of the same replications)",
            file=sys.stderr,
        )
        return 2
    print(render(table))
    outside = int((~table.within).sum())
    print(
        f"\n{len(table) - outside} of {len(table)} statistics within tolerance "
        f"(study - control: {'committed CI half-width' if a.diff_tolerance is None else a.diff_tolerance}; "
        f"arm means: {a.level_tolerance} R²)"
    )
    return 1 if outside else 0


if __name__ == "__main__":
    sys.exit(main())
