"""Print Markdown summaries of a multi-arm results folder (written with stats.compare=all).

    python scripts/summarise_arms.py results/ecg_arms/episode [--model NimeshaNet]

Two tables: each arm's mean +- SD over folds of the final train R^2, test R^2 and instability
(from fold_values.csv), and every arm against `control` and `study` on test R^2 and instability
with Holm-corrected p-values (from all_pairs_table.csv).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from coordchannels.logs import order_arms

METRICS = {"train_r2": "train R²", "test_r2": "test R²", "instability": "instability"}


def levels_table(values: pd.DataFrame, model: str) -> str:
    rows = ["| arm | " + " | ".join(METRICS.values()) + " |", "|---|" + "---|" * len(METRICS)]
    values = values[values.model == model]
    for arm in order_arms(set(values.arm)):
        cells = []
        for metric in METRICS:
            v = values[(values.arm == arm) & (values.metric == metric)]["value"]
            cells.append(f"{v.mean():.4f} ± {v.std(ddof=1):.4f}")
        rows.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def versus_table(pairs: pd.DataFrame, model: str, reference: str) -> str:
    rows = [
        f"| arm − {reference} | metric | mean diff | 95% CI | p (Holm) | conclusion (Holm) |",
        "|---|---|---|---|---|---|",
    ]
    pairs = pairs[pairs.model == model]
    for arm in order_arms(set(pairs.arm_a) | set(pairs.arm_b)):
        for metric in ("test_r2", "instability"):
            hit = pairs[
                (pairs.metric == metric)
                & (
                    ((pairs.arm_a == arm) & (pairs.arm_b == reference))
                    | ((pairs.arm_a == reference) & (pairs.arm_b == arm))
                )
            ]
            if hit.empty:
                continue
            r = hit.iloc[0]
            sign = 1 if r.arm_a == arm else -1  # report as arm - reference
            lo, hi = sorted((sign * r.ci_low, sign * r.ci_high))
            verdict = r.conclusion_holm
            rows.append(
                f"| {arm} | {METRICS[metric]} | {sign * r.mean_diff:+.4f} | [{lo:.4f}, {hi:.4f}] | "
                f"{r.p_holm:.4f} | {verdict} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", default="NimeshaNet")
    args = parser.parse_args()
    values = pd.read_csv(args.folder / "fold_values.csv")
    pairs = pd.read_csv(args.folder / "all_pairs_table.csv")
    print(levels_table(values, args.model))
    for reference in ("control", "study"):
        print()
        print(versus_table(pairs, args.model, reference))


if __name__ == "__main__":
    main()
