"""Independent re-runs of the ECG study, and how often each published conclusion holds.

A *replication* r (1-based) is the whole ECG study (every model, control and study, all folds)
with its own training seed and its own fold split, both `replicate.base_seed + r - 1`, so that
replication 1 is the published protocol (42 and 42). The episodes and their augmentation are the
same in every replication: they depend on neither seed.

Replication r of a grouping is an ordinary run of the app (`experiment=ecg_replications
replicate.grouping=<g> replicate.index=<r>`; conf/study/replications.yaml derives its seeds, its
run folder and its results folder `<replicate.out_dir>/<grouping>/replication_<r>/`). `make
replicate` (`python -m coordchannels -m experiment=ecg_replications`) runs every replication of
every grouping as one Hydra sweep (resumable: the runner skips finished stages and jobs), then
(coordchannels.sweep) the `replication_summary` stage of this module writes, from the
replications' committed per-fold logs alone:

- `replication_summary.csv` / `.md`: per grouping, model and metric, the published difference and
  conclusion, how many replications reach the same conclusion (direction and significance), and
  the pooled difference with a hierarchical-bootstrap CI (replications, then folds within them);
  the test R² also as the mean of the last `replicate.final_epochs` epochs, a statistic that one
  swing of a test curve moves less than the final epoch;
- `forest_<grouping>.png`: every replication's difference with its CI, the pooled estimate and the
  published value;
- `arm_levels.csv` / `arm_levels.png`: each arm's mean final test R² per replication beside the
  published one.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig

from coordchannels.io import atomic_files, write_csv, write_text
from coordchannels.logs import load_logs, order_models
from coordchannels.settings import SettingError
from coordchannels.stages import StageContext, StageError
from coordchannels.stats.comparison import (
    INSTABILITY_FITS,
    METRIC_LABELS,
    compare,
    fold_values,
    paired_differences,
    pooled,
)
from coordchannels.stats.inference import pool_replications
from coordchannels.stats.stage import STYLE, save_png
from coordchannels.tables import markdown_table

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = [
    "grouping",
    "model",
    "metric",
    "published_mean_diff",
    "published_conclusion",
    "n_replications",
    "n_agree",
    # the unit of inference is the replication: random-effects pool of the replication means
    "re_estimate",
    "re_ci_low",
    "re_ci_high",
    "re_p_two_sided",
    "tau2",
    "p_sign_flip",
    "p_sign_flip_floor",
    "loo_min",
    "loo_max",
    # secondary: the plain mean of all fold differences with the hierarchical bootstrap CI
    "pooled_mean_diff",
    "pooled_ci_low",
    "pooled_ci_high",
]
SENSITIVITY_COLUMNS = ["grouping", "model", "fit", "n_replications", "n_same_direction", *SUMMARY_COLUMNS[7:17]]
METRICS = ("train_r2", "test_r2", "instability")
GROUPINGS = {"episode", "record"}


# --------------------------------------------------------------------------------------------
# The settings of a study and of one replication
# --------------------------------------------------------------------------------------------
def check_replications(cfg: DictConfig) -> None:
    """The summary stage's `check`, before any replication of the sweep runs: replications
    `replicate.first..replicate.n` of `replicate.groupings`."""
    n, groupings = int(cfg.replicate.n), list(cfg.replicate.groupings)
    first = int(cfg.replicate.get("first", 1))
    if n < 1:
        raise SettingError(f"replicate.n={n}: give at least one replication")
    # first = n + 1 runs no replication, only the summary of replications 1..n (e.g. 10 committed
    # episode replications beside 5 record ones).
    if not 1 <= first <= n + 1:
        raise SettingError(
            f"replicate.first={first}: give a replication between 1 and replicate.n={n} (or {n + 1}: only the summary)"
        )
    if not groupings or set(groupings) - GROUPINGS:
        raise SettingError(
            f"replicate.groupings={groupings}: give one or more of {sorted(GROUPINGS)} (e.g. replicate.groupings=[record])"
        )


def check_replication(cfg: DictConfig) -> None:
    """One replication's number: replications are numbered from 1 (replication 1 is the published
    protocol), and the summary reads `replication_<r>` folders for r = 1..replicate.n only."""
    index = cfg.replicate.index
    if isinstance(index, bool) or not isinstance(index, int) or index < 1:
        raise SettingError(f"replicate.index={index!r}: give a replication number from 1 (1 = the published protocol)")


# --------------------------------------------------------------------------------------------
# The summary stage
# --------------------------------------------------------------------------------------------
def replication_folders(out: Path, grouping: str) -> list[tuple[int, Path]]:
    found = []
    for folder in (out / grouping).glob("replication_*"):
        if (folder / "fold_logs").is_dir() and folder.name.split("_")[-1].isdigit():
            found.append((int(folder.name.split("_")[-1]), folder))
    return sorted(found)


def summarised_folders(out: Path, grouping: str, cfg: DictConfig) -> list[tuple[int, Path]]:
    """Replications 1..replicate.n of `grouping`: a later one already there (a run towards a larger
    n, committed as each replication finishes) changes the summary only when n says so."""
    return [(r, folder) for r, folder in replication_folders(out, grouping) if r <= int(cfg.replicate.n)]


def replication_rows(folder: Path, final_epochs: int, cfg: DictConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """From one replication's per-fold logs: (its comparison rows, its per-fold values), with the
    test R² also as the mean of the last `final_epochs` epochs (metric `test_r2_last<k>`)."""
    s = cfg.stats
    logs = load_logs(folder / "fold_logs", ["study", "control"])
    values = fold_values(logs, s.instability)
    late = fold_values(logs, s.instability, final_epochs)
    late = late[late.metric == "test_r2"].assign(metric=f"test_r2_last{final_epochs}")
    values = pd.concat([values, late], ignore_index=True)
    rows = []
    for model in logs:
        for metric in [*METRICS, f"test_r2_last{final_epochs}"]:
            diffs = paired_differences(values, model, metric, "study", "control")
            result = compare(
                diffs["diff"].to_numpy(),
                "study",
                "control",
                s.method,
                int(s.n_resamples),
                int(s.seed),
                float(s.confidence),
            )
            rows.append({"model": model, "metric": metric, "diffs": diffs["diff"].to_numpy(), **result})
    return pd.DataFrame(rows), values


def published_rows(cfg: DictConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The published Table 3 rows and per-fold values, as re-derived from the authors' logs."""
    folder = Path(cfg.replicate.published_dir)
    table, values = folder / "comparison_table.csv", folder / "fold_values.csv"
    for path in (table, values):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the published Table 3 is re-derived by `make table3`")
    return pd.read_csv(table), pd.read_csv(values)


def summary_stage(cfg: DictConfig, ctx: StageContext) -> None:
    """Write the replication summary, forest plots and arm levels from the replications' logs."""
    k = int(cfg.replicate.final_epochs)
    published, published_values = published_rows(cfg)
    summary, levels, per_rep = [], [], []
    for grouping in cfg.replicate.groupings:
        folders = summarised_folders(ctx.out, grouping, cfg)
        if not folders:
            log.warning("replication_summary: no finished replication under %s", ctx.out / grouping)
            continue
        results = []
        for r, folder in folders:
            rows, values = replication_rows(folder, k, cfg)
            results.append(rows.assign(replication=r))
            means = values[values.metric == "test_r2"].groupby(["model", "arm"])["value"].mean()
            levels += [
                {"grouping": grouping, "replication": r, "model": m, "arm": a, "test_r2_mean": v}
                for (m, a), v in means.items()
            ]
        results = pd.concat(results, ignore_index=True)
        per_rep.append(results.assign(grouping=grouping))
        for (model, metric), rows in results.groupby(["model", "metric"], sort=False):
            pub = published[(published.model == model) & (published.metric == metric.split("_last")[0])]
            pub_diff = float(pub.mean_diff.iloc[0]) if len(pub) else float("nan")
            pub_conclusion = str(pub.conclusion.iloc[0]) if len(pub) else ""
            summary.append(
                {
                    "grouping": grouping,
                    "model": model,
                    "metric": metric,
                    "published_mean_diff": pub_diff,
                    "published_conclusion": pub_conclusion,
                    "n_replications": len(rows),
                    "n_agree": int((rows.conclusion == pub_conclusion).sum()),
                    **replication_pool(list(rows.diffs), float(cfg.stats.confidence)),
                    **pooled(
                        list(rows.diffs), int(cfg.stats.n_resamples), int(cfg.stats.seed), float(cfg.stats.confidence)
                    ),
                }
            )
    if not summary:
        raise StageError(f"no finished replication under {ctx.out} (run `make replicate` first)")
    table = pd.DataFrame(summary, columns=SUMMARY_COLUMNS)
    per_rep = pd.concat(per_rep, ignore_index=True).drop(columns="diffs")
    pub_levels = published_values[published_values.metric == "test_r2"].groupby(["model", "arm"])["value"].mean()
    levels = pd.DataFrame(levels)
    levels["published_test_r2_mean"] = [pub_levels.get((m, a), float("nan")) for m, a in zip(levels.model, levels.arm)]
    figures = {
        f"forest_{g}.png": forest_figure(per_rep[per_rep.grouping == g], table[table.grouping == g], published, g)
        for g in table.grouping.unique()
    }
    figures["arm_levels.png"] = levels_figure(levels)
    sensitivity = pd.DataFrame(
        [row for g in table.grouping.unique() for row in sensitivity_rows(ctx.out, g, cfg)], columns=SENSITIVITY_COLUMNS
    )
    with atomic_files(ctx.out) as tmp:  # one set, as the stats stage writes its tables and figures
        write_csv(sensitivity, tmp / "instability_sensitivity.csv")
        write_text(tmp / "instability_sensitivity.md", sensitivity_markdown(sensitivity))
        write_csv(table, tmp / "replication_summary.csv")
        write_csv(per_rep, tmp / "replications.csv")
        write_csv(levels, tmp / "arm_levels.csv")
        write_text(tmp / "replication_summary.md", summary_markdown(table, cfg, k))
        for name, fig in figures.items():
            save_png(fig, tmp / name)
    log.info(
        "replication_summary: %d rows from %d replication(s) -> %s",
        len(table),
        per_rep.groupby("grouping").replication.nunique().sum(),
        ctx.out,
    )


def replication_pool(groups: list, confidence: float) -> dict:
    """The summary's inference columns: replications as the unit (coordchannels.stats.inference)."""
    pool = pool_replications(groups, confidence)
    return {
        "re_estimate": pool["estimate"],
        "re_ci_low": pool["ci_low"],
        "re_ci_high": pool["ci_high"],
        "re_p_two_sided": pool["p_two_sided"],
        "tau2": pool["tau2"],
        "p_sign_flip": pool["p_sign_flip"],
        "p_sign_flip_floor": pool["p_sign_flip_floor"],
        "loo_min": pool["loo_min"],
        "loo_max": pool["loo_max"],
    }


def sensitivity_rows(out: Path, grouping: str, cfg: DictConfig) -> list[dict]:
    """The instability study - control difference under each fit of the smooth trend
    (stats.smooth_curve): does any conclusion depend on the scripts' spline?"""
    rows = []
    folders = summarised_folders(out, grouping, cfg)
    logs = [load_logs(folder / "fold_logs", ["study", "control"]) for _, folder in folders]
    for fit in INSTABILITY_FITS:
        values = [fold_values(lg, cfg.stats.instability, 1, fit) for lg in logs]
        for model in logs[0]:
            groups = [
                paired_differences(v, model, "instability", "study", "control")["diff"].to_numpy() for v in values
            ]
            means = np.array([g.mean() for g in groups])
            rows.append(
                {
                    "grouping": grouping,
                    "model": model,
                    "fit": fit,
                    "n_replications": len(groups),
                    "n_same_direction": int((means < 0).sum()),
                    **replication_pool(groups, float(cfg.stats.confidence)),
                }
            )
    return rows


def sensitivity_markdown(table: pd.DataFrame) -> str:
    lines = [
        "# Instability: does any conclusion depend on the smoothing?",
        "",
        "The instability is the mean squared residual of the test R² curve around a smooth fit. `spline` is the "
        "scripts' (and the published numbers'): scipy's UnivariateSpline with default smoothing s = 15 for 15 "
        "epochs, which on these curves places no interior knot, i.e. a least-squares cubic polynomial. `gcv`: "
        "a cubic smoothing spline with its penalty chosen by generalised cross-validation; `knots3`: a "
        "least-squares cubic spline with 3 equally spaced interior knots. Study − control per replication "
        "(mean over its folds), pooled over replications by random effects (DerSimonian-Laird, HKSJ 95% CI, "
        "two-sided p on k − 1 df) and the exact two-sided sign-flip test over replication means. "
        "`study < control`: replications whose mean difference is negative.",
        "",
        *markdown_table(
            ["grouping", "model", "fit", "study < control", "pooled (random effects) [95% CI]", "p (RE, two-sided)"]
            + ["p (sign-flip, two-sided)"],
            [
                [r.grouping, r.model, r.fit, f"{r.n_same_direction}/{r.n_replications}"]
                + [f"{r.re_estimate:+.4f} [{r.re_ci_low:+.4f}, {r.re_ci_high:+.4f}]", f"{r.re_p_two_sided:.3g}"]
                + [f"{r.p_sign_flip:.3g}"]
                for r in table.itertuples()
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


def summary_outputs(cfg: DictConfig) -> list[str]:
    return [
        "replication_summary.csv",
        "replication_summary.md",
        "replications.csv",
        "arm_levels.csv",
        "arm_levels.png",
        "instability_sensitivity.csv",
        "instability_sensitivity.md",
    ]


def summary_markdown(table: pd.DataFrame, cfg: DictConfig, k: int) -> str:
    n_reps = ", ".join(f"{g}: {n}" for g, n in table.groupby("grouping", sort=False).n_replications.max().items())
    lines = [
        "# Does the published ECG result replicate?",
        "",
        f"Each replication has its own training seed and fold split (seed = {cfg.replicate.base_seed} + r - 1; "
        f"replication 1 is the published protocol); replications per grouping: {n_reps}.",
        "",
        "**Unit of inference: the replication** (its mean study − control difference over its 5 folds). "
        "*Pooled (random effects)*: DerSimonian-Laird between-replication variance with the "
        "Hartung-Knapp-Sidik-Jonkman 95% CI and **two-sided** p (t on k − 1 df). *p (sign-flip)*: the exact "
        "**two-sided** sign-flip test over the replication means (floor 2/2^k: 0.0625 for 5 replications, 0.002 "
        "for 10). *Leave-one-out*: the range of the pooled estimate with each replication left out in turn. "
        "`n_agree` is descriptive, not a test: replications whose own conclusion (the paper's method: paired "
        "bootstrap over 5 folds, 95% percentile CI) equals the published one. *Plain mean [hierarchical "
        "bootstrap]* (secondary): the mean of all fold differences with a two-level percentile bootstrap "
        f"(replications, then folds; {cfg.stats.n_resamples} resamples), which is too narrow at these sizes. "
        f"`test_r2_last{k}`: test R² as the mean of the last {k} epochs, a statistic **chosen after seeing** "
        "replications 1-5 (secondary, never the primary reading).",
        "",
        *markdown_table(
            ["grouping", "model", "metric", "published", "n_agree", "pooled (random effects) [95% CI]"]
            + ["p (RE, two-sided)", "p (sign-flip, two-sided)", "leave-one-out", "plain mean [hierarchical bootstrap]"],
            [
                [row.grouping, row.model, row.metric, f"{row.published_mean_diff:+.5f} ({row.published_conclusion})"]
                + [f"{row.n_agree}/{row.n_replications}"]
                + [f"{row.re_estimate:+.5f} [{row.re_ci_low:+.5f}, {row.re_ci_high:+.5f}]", f"{row.re_p_two_sided:.3g}"]
                + [f"{row.p_sign_flip:.3g}", f"{row.loo_min:+.4f} to {row.loo_max:+.4f}"]
                + [f"{row.pooled_mean_diff:+.5f} [{row.pooled_ci_low:+.5f}, {row.pooled_ci_high:+.5f}]"]
                for row in table.itertuples()
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


def metric_label(metric: str) -> str:
    """A metric's name for a reader: 'test R² (mean of last 5 epochs)' for test_r2_last5."""
    base, _, last = metric.partition("_last")
    label = METRIC_LABELS.get(base, base)
    if last:
        return f"{label} (mean of last {last} epochs)"
    return f"{label} (final epoch)" if base != "instability" else label


def forest_figure(per_rep: pd.DataFrame, table: pd.DataFrame, published: pd.DataFrame, grouping: str) -> Figure:
    """One panel per model and metric: replications' differences with CIs, pooled and published."""
    models = order_models(list(dict.fromkeys(per_rep.model)))
    metrics = list(dict.fromkeys(per_rep.metric))
    with rc_context(STYLE):
        fig = Figure(
            figsize=(3.6 * len(metrics), 0.5 * per_rep.replication.nunique() * len(models) + 2.5), layout="constrained"
        )
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(models), len(metrics), squeeze=False)
        for i, model in enumerate(models):
            for j, metric in enumerate(metrics):
                ax = axes[i][j]
                rows = per_rep[(per_rep.model == model) & (per_rep.metric == metric)].sort_values("replication")
                y = np.arange(len(rows))
                ax.errorbar(
                    rows.mean_diff,
                    y,
                    xerr=[rows.mean_diff - rows.ci_low, rows.ci_high - rows.mean_diff],
                    fmt="o",
                    color="tab:blue",
                    capsize=3,
                    label="replication (bootstrap 95% CI)",
                )
                pool = table[(table.model == model) & (table.metric == metric)].iloc[0]
                yp = len(rows) + 0.5
                ax.errorbar(
                    [pool.re_estimate],
                    [yp],
                    xerr=[[pool.re_estimate - pool.re_ci_low], [pool.re_ci_high - pool.re_estimate]],
                    fmt="D",
                    color="black",
                    capsize=3,
                    label="pooled (random effects, HKSJ)",
                )
                pub = published[(published.model == model) & (published.metric == metric.split("_last")[0])]
                if len(pub):
                    p = pub.iloc[0]
                    ax.errorbar(
                        [p.mean_diff],
                        [yp + 1],
                        xerr=[[p.mean_diff - p.ci_low], [p.ci_high - p.mean_diff]],
                        fmt="s",
                        color="tab:red",
                        capsize=3,
                        label="published",
                    )
                ax.axvline(0, color="0.5", linewidth=0.8)
                ax.set_yticks(
                    [*y, yp, yp + 1], [f"replication {r}" for r in rows.replication] + ["pooled", "published"]
                )
                ax.set_title(f"{model}\n{metric_label(metric)}", fontsize=9)
                ax.set_xlabel("study − control", fontsize=9)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8)
        fig.suptitle(f"ECG replications, {grouping} grouping", fontweight="bold")
    return fig


def levels_figure(levels: pd.DataFrame) -> Figure:
    """Mean final test R² of each arm per replication (dots) against the published mean (bar)."""
    panels = list(dict.fromkeys(zip(levels.grouping, levels.model)))
    ncols = min(2, len(panels))
    with rc_context(STYLE):
        fig = Figure(figsize=(5.5 * ncols, 3.6 * math.ceil(len(panels) / ncols)), layout="constrained")
        FigureCanvasAgg(fig)
        axes = np.atleast_1d(fig.subplots(math.ceil(len(panels) / ncols), ncols, squeeze=False)).ravel()
        for ax, (grouping, model) in zip(axes, panels):
            sel = levels[(levels.grouping == grouping) & (levels.model == model)]
            arms = list(dict.fromkeys(sel.arm))
            for x, arm in enumerate(arms):
                rows = sel[sel.arm == arm]
                ax.scatter(
                    np.full(len(rows), x),
                    rows.test_r2_mean,
                    color="tab:blue",
                    zorder=3,
                    label="replications" if x == 0 else None,
                )
                ax.hlines(
                    rows.published_test_r2_mean.iloc[0],
                    x - 0.3,
                    x + 0.3,
                    color="tab:red",
                    label="published" if x == 0 else None,
                )
            ax.set_xticks(range(len(arms)), arms)
            ax.set_xlim(-0.6, len(arms) - 0.4)
            ax.set_ylabel("mean final test R²")
            ax.set_title(f"{model}, {grouping} grouping", fontsize=10)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=9)
        fig.suptitle("Each arm's mean final test R² over 5 folds: one dot per replication", fontweight="bold")
    return fig


if __name__ == "__main__":  # the command of the removed replication loop: say what replaced it
    raise SystemExit(
        "error: the replications are a sweep of the app now: `python -m coordchannels -m "
        "experiment=ecg_replications [overrides]` (`make replicate`; docs/replication.md)"
    )
