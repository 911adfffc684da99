"""Print a Markdown table of reproduced comparison rows beside the published ones.

    python scripts/compare_with_published.py results/ecg [results/published_table3] [--models NimeshaNet ...]

Both folders hold a `comparison_table.csv` written by the stats stage; the published one is
re-derived from the authors' per-fold logs by `make table3`. Used to keep the README's result
tables in step with the committed results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from coordchannels.stats import format_p

METRICS = {"train_r2": "train R²", "test_r2": "test R²", "instability": "instability"}


def row_text(row: pd.Series, n_resamples: int) -> str:
    return (f"{row.mean_diff:+.5f} [{row.ci_low:.5f}, {row.ci_high:.5f}] p {format_p(row.p_value, n_resamples)}"
            f", {row.conclusion}")


def levels(folder: Path) -> pd.DataFrame:
    """Mean over folds of each arm's final-epoch R^2 and instability, from fold_values.csv."""
    values = pd.read_csv(folder / "fold_values.csv")
    return values.groupby(["model", "metric", "arm"])["value"].mean()


def print_levels(ours: Path, published: Path, models: list[str]) -> None:
    mine, theirs = levels(ours), levels(published)
    print()
    print("| model | metric | arm | published mean over folds | this run |")
    print("|---|---|---|---|---|")
    for (model, metric, arm), value in mine.items():
        if model in models and metric in METRICS:
            ref = theirs.get((model, metric, arm))
            ref_text = "-" if ref is None else f"{ref:.4f}"
            print(f"| {model} | {METRICS[metric]} | {arm} | {ref_text} | {value:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ours", type=Path)
    parser.add_argument("published", type=Path, nargs="?", default=Path("results/published_table3"))
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--n-resamples", type=int, default=20000)
    args = parser.parse_args()
    ours = pd.read_csv(args.ours / "comparison_table.csv")
    published = pd.read_csv(args.published / "comparison_table.csv")
    models = args.models or list(dict.fromkeys(ours["model"]))
    print("| model | metric | published (mean diff [95% CI] p) | this run (mean diff [95% CI] p) |")
    print("|---|---|---|---|")
    for model in models:
        for metric, label in METRICS.items():
            mine = ours[(ours.model == model) & (ours.metric == metric)]
            theirs = published[(published.model == model) & (published.metric == metric)]
            if mine.empty:
                continue
            left = row_text(theirs.iloc[0], args.n_resamples) if not theirs.empty else "-"
            print(f"| {model} | {label} | {left} | {row_text(mine.iloc[0], args.n_resamples)} |")
    print_levels(args.ours, args.published, models)


if __name__ == "__main__":
    main()
