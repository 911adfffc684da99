"""Per-fold final values of several sets of ECG per-fold logs side by side (issue 16).

Each source is `label=folder` (a folder in the published log layout). For every (model, arm,
fold) log found: final-epoch train R^2, final-epoch test R^2 and instability (SPEC section 7,
mean of squared spline residuals). Writes `fold_table.csv` (long) and `fold_table.md` (wide, with
per-arm means over the folds present and the number of folds each mean covers). No bootstrap
here: partial arms get means only, clearly labelled with their fold count.

  .venv/bin/python scripts/authors_ecg/summarise_authors_ecg.py --out results/authors_scripts_ecg \
      published=<published logs> theirs=results/authors_scripts_ecg/fold_logs ours=results/ecg/fold_logs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from coordchannels.entry import UserError, reports_errors
from coordchannels.logs import read_log
from coordchannels.stats.comparison import fold_metrics
from coordchannels.tables import markdown_table

METRICS = ["train_r2", "test_r2", "instability", "test_r2_mean_last5"]


def collect(label: str, root: Path, models: list[str]) -> list[dict]:
    rows = []
    for model in models:
        for arm in ("control", "study"):
            for fold in range(1, 6):
                path = root / model / f"{arm}_set_fold_{fold}_log.csv"
                if path.exists():
                    fl = read_log(path, model, arm, None, fold)
                    m = fold_metrics(fl)
                    # The level of the test curve, less sensitive to where the last epoch lands.
                    m["test_r2_mean_last5"] = float(fl.test[-5:].mean())
                    rows += [
                        {"source": label, "model": model, "arm": arm, "fold": fold, "metric": k, "value": v}
                        for k, v in m.items()
                    ]
    return rows


@reports_errors
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", help="label=folder, in the order of the table's columns")
    p.add_argument("--out", required=True)
    p.add_argument("--models", nargs="+", default=["NimeshaNet"])
    a = p.parse_args(argv)
    labels, rows = [], []
    for s in a.sources:
        label, sep, folder = s.partition("=")
        if not sep or not label or not folder:
            raise UserError(f"source {s!r}: give it as label=folder (e.g. ours=results/ecg/fold_logs)")
        found = collect(label, Path(folder), a.models)
        if not found:
            raise UserError(
                f"{folder} (source {label}) holds no per-fold log of {', '.join(a.models)} "
                "(give a folder in the published layout: <model>/<arm>_set_fold_<k>_log.csv)"
            )
        labels.append(label)
        rows += found
    df = pd.DataFrame(rows)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "fold_table.csv", index=False)
    lines = [
        "# Final-epoch values per fold",
        "",
        "Written by `scripts/authors_ecg/summarise_authors_ecg.py`. Sources: "
        + ", ".join(f"`{s}`" for s in labels)
        + ". A blank cell: that job has no log (not run or not finished).",
        "",
    ]
    for model in a.models:
        for metric in METRICS:
            sel = df[(df.model == model) & (df.metric == metric)]
            if sel.empty:
                continue
            wide = sel.pivot_table(index=["arm", "fold"], columns="source", values="value").reindex(columns=labels)
            rows = [
                [arm, fold, *("" if pd.isna(r[c]) else f"{r[c]:.4f}" for c in labels)]
                for (arm, fold), r in wide.iterrows()
            ]
            for arm in ("control", "study"):
                cells = []
                for c in labels:
                    v = sel[(sel.arm == arm) & (sel.source == c)]["value"]
                    cells.append(f"**{v.mean():.4f}** (n={len(v)})" if len(v) else "")
                rows.append([arm, "mean", *cells])
            lines += [f"## {model}: {metric}", "", *markdown_table(["arm", "fold", *labels], rows), ""]
    (out / "fold_table.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
