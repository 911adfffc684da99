"""The pre-stated analysis of the mechanisms study (docs/mechanisms.md), from per-fold logs alone.

Input: `<out>/<grouping>/replication_<r>/fold_logs/<Model>/<arm>_set_fold_<k>_log.csv`, one
replication per seed and fold seed, every arm of `mechanisms.arms` in each. The unit of inference
is the replication: its mean over folds. Everything below is fixed in the experiment config
(`mechanisms.analysis`, conf/experiment/ecg_mechanisms.yaml) before any number exists.

1. Primary: does the reference arm (`study`) beat each other arm? For every grouping and metric
   (final test R², mean test R² of the last k epochs, instability; lower instability is better),
   the reference minus each of the six other arms, paired by fold, is pooled over replications by
   random effects (DerSimonian-Laird, Hartung-Knapp-Sidik-Jonkman CI and two-sided p on k - 1 df;
   `inference.pool_replications`), with the exact two-sided sign-flip test over the replication
   means beside it. Holm over the six comparisons of a grouping and metric, for each test. The
   random-effects test decides (the sign-flip test cannot go below 2/2^k, 0.0625 for 5
   replications, and its Holm-corrected smallest value is 6 x 0.0625: it can confirm nothing at
   k = 5, it is there to show that). `n_agree`: replications in which the reference is better.
2. Which arms are indistinguishable from the best: per grouping and metric, the arm with the best
   pooled level (random-effects pool of its fold values) is the best; each other arm's
   replication-mean difference from it is tested for equivalence within +-margin by TOST (two
   one-sided t-tests on the k replication means, df k - 1; equivalent when both reject at alpha,
   i.e. the (1 - 2 alpha) t interval lies inside the margin), and for a difference by the
   random-effects test, Holm over the other arms.
3. A ranking figure: per metric and grouping, each arm's replication means and its pooled mean with
   the HKSJ CI.

Beside the pooled level, descriptively (added after the pooled numbers were first seen; no test or
status depends on it): the plain mean of each arm's replication means, and a note naming the blocks
where it and the pooled level pick different best arms.

Every output is computed from the logs before the first file is written, with no random draw, so
the summary regenerates byte for byte from the logs alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig
from scipy import stats as sps

from coordchannels.components import arm_order, arm_style, ordered
from coordchannels.io import write_csv, write_text
from coordchannels.logs import load_logs
from coordchannels.replicate import replication_folders
from coordchannels.settings import SettingError
from coordchannels.stages import StageContext
from coordchannels.stats.comparison import METRIC_LABELS, fold_values, holm, paired_differences
from coordchannels.stats.inference import pool_replications
from coordchannels.stats.stage import STYLE, save_png
from coordchannels.tables import markdown_table

log = logging.getLogger(__name__)

# Metrics where lower is better; every other metric (R²) is better when higher.
LOWER_IS_BETTER = ("instability",)
OUTPUTS = [
    "mechanisms_primary.csv",
    "mechanisms_ranking.csv",
    "mechanisms_replications.csv",
    "mechanisms_summary.md",
    "mechanisms_ranking.png",
]


def summary_outputs(cfg: DictConfig) -> list[str]:
    return list(OUTPUTS)


def direction(metric: str) -> int:
    """+1 where higher is better, -1 where lower is better."""
    return -1 if metric.split("_last")[0] in LOWER_IS_BETTER else 1


def metric_name(metric: str) -> str:
    base, _, last = metric.partition("_last")
    label = METRIC_LABELS.get(base, base)
    if last:
        return f"{label}, mean of last {last} epochs"
    return label if base in LOWER_IS_BETTER else f"{label}, final epoch"


def check_analysis(cfg: DictConfig) -> None:
    """The summary stage's `check`, before any stage runs: the pre-stated settings are usable."""
    a, arms = cfg.mechanisms.analysis, list(cfg.mechanisms.arms)
    if str(a.reference) not in arms:
        raise SettingError(f"mechanisms.analysis.reference={a.reference!r}: not one of mechanisms.arms {arms}")
    if len(arms) < 3:
        raise SettingError(f"mechanisms.arms={arms}: give at least 3 arms (a reference and two to rank)")
    alpha = float(a.alpha)
    if not 0 < alpha < 0.5:
        raise SettingError(f"mechanisms.analysis.alpha={a.alpha}: give a level between 0 and 0.5, e.g. 0.05")
    for metric in a.metrics:
        base, _, last = str(metric).partition("_last")
        if base not in METRIC_LABELS or (last and not (last.isdigit() and int(last) >= 1)):
            raise SettingError(
                f"mechanisms.analysis.metrics: {metric!r} is not a metric; give one of {sorted(METRIC_LABELS)}, "
                "or test_r2_last<k> (mean of the last k epochs)"
            )
        margin = a.margins.get(metric)
        if margin is None or not float(margin) > 0:
            raise SettingError(f"mechanisms.analysis.margins.{metric}={margin}: give a positive equivalence margin")


# --------------------------------------------------------------------------------------------
# Reading the logs
# --------------------------------------------------------------------------------------------
def fold_table(out: Path, cfg: DictConfig) -> pd.DataFrame:
    """Every per-fold value the analysis reads: grouping, replication, arm, fold, metric, value."""
    a = cfg.mechanisms.analysis
    metrics = list(a.metrics)
    model, arms = str(cfg.task.models[cfg.mechanisms.model].log_name), list(cfg.mechanisms.arms)
    frames = []
    for grouping in cfg.mechanisms.groupings:
        for r, folder in replication_folders(out, grouping):
            logs = load_logs(folder / "fold_logs", "all")
            if model not in logs:
                raise FileNotFoundError(f"{folder / 'fold_logs'}: no logs of {model}")
            missing = [arm for arm in arms if arm not in logs[model]]
            if missing:
                raise FileNotFoundError(f"{folder / 'fold_logs' / model}: no logs of arm(s) {missing}")
            logs = {model: {arm: logs[model][arm] for arm in arms}}
            values = []
            for k in sorted({int(m.partition("_last")[2] or 1) for m in metrics}):
                v = fold_values(logs, cfg.stats.instability, k)
                values.append(v.assign(metric=[m if k == 1 else f"{m}_last{k}" for m in v.metric]))
            v = pd.concat(values, ignore_index=True)
            frames.append(v[v.metric.isin(metrics)].assign(grouping=grouping, replication=r))
    if not frames:
        raise FileNotFoundError(f"no replication with per-fold logs under {out}/<grouping>/replication_<r>/fold_logs")
    table = pd.concat(frames, ignore_index=True)
    return table[["grouping", "replication", "model", "arm", "seed", "fold", "metric", "value"]]


def fold_differences(table: pd.DataFrame, grouping: str, metric: str, a: str, b: str) -> list[np.ndarray]:
    """Per replication, arm a minus arm b paired by fold (folds where either is not estimable
    left out; a replication with fewer than 2 left is left out)."""
    groups = []
    for _, rep in table[(table.grouping == grouping)].groupby("replication", sort=True):
        d = paired_differences(rep, str(rep.model.iloc[0]), metric, a, b)["diff"].to_numpy(dtype=float)
        d = d[np.isfinite(d)]
        if len(d) >= 2:
            groups.append(d)
    return groups


# --------------------------------------------------------------------------------------------
# 1. The primary question
# --------------------------------------------------------------------------------------------
def primary_table(table: pd.DataFrame, cfg: DictConfig) -> pd.DataFrame:
    a = cfg.mechanisms.analysis
    ref, alpha, confidence = str(a.reference), float(a.alpha), 1 - float(a.alpha)
    others = [arm for arm in cfg.mechanisms.arms if arm != ref]
    rows = []
    for grouping in cfg.mechanisms.groupings:
        for metric in a.metrics:
            for other in others:
                groups = fold_differences(table, grouping, metric, ref, other)
                if len(groups) < 2:
                    continue
                pool = pool_replications(groups, confidence)
                sign = direction(metric)
                rows.append(
                    {
                        "grouping": grouping,
                        "metric": metric,
                        "reference": ref,
                        "other": other,
                        "n_replications": len(groups),
                        "n_agree": int(sum(sign * g.mean() > 0 for g in groups)),
                        "estimate": pool["estimate"],
                        "ci_low": pool["ci_low"],
                        "ci_high": pool["ci_high"],
                        "tau2": pool["tau2"],
                        "p_re": pool["p_two_sided"],
                        "p_sign_flip": pool["p_sign_flip"],
                        "p_sign_flip_floor": pool["p_sign_flip_floor"],
                    }
                )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    family = frame.groupby(["grouping", "metric"], sort=False)
    frame["p_re_holm"] = family["p_re"].transform(lambda p: holm(p.to_numpy()))
    frame["p_sign_flip_holm"] = family["p_sign_flip"].transform(lambda p: holm(p.to_numpy()))
    frame["conclusion"] = [
        conclusion(r.p_re_holm, direction(r.metric) * r.estimate, alpha, r.reference, r.other)
        for r in frame.itertuples()
    ]
    return frame


def conclusion(p: float, better: float, alpha: float, ref: str, other: str) -> str:
    if p < alpha and better != 0:
        return f"{ref} better than {other}" if better > 0 else f"{ref} worse than {other}"
    return "not shown"


# --------------------------------------------------------------------------------------------
# 2. Which arms are indistinguishable from the best
# --------------------------------------------------------------------------------------------
def tost(d: np.ndarray, margin: float) -> tuple[float, float, float]:
    """Two one-sided t-tests of |mean(d)| < margin on the values d (df n - 1): (p, mean, se), p the
    larger of the two one-sided p-values (equivalence at alpha when p < alpha)."""
    d = np.asarray(d, dtype=float)
    n, mean = len(d), float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(n))
    if se == 0:  # identical differences: inside the margin or not, with certainty
        p = 0.0 if abs(mean) < margin else 1.0
        return p, mean, se
    p_low = float(sps.t.sf((mean + margin) / se, n - 1))  # H0: mean <= -margin
    p_high = float(sps.t.cdf((mean - margin) / se, n - 1))  # H0: mean >= +margin
    return max(p_low, p_high), mean, se


def level_pool(table: pd.DataFrame, grouping: str, metric: str, arm: str, confidence: float) -> dict | None:
    sel = table[(table.grouping == grouping) & (table.metric == metric) & (table.arm == arm)]
    groups = [g.value.to_numpy(dtype=float) for _, g in sel.groupby("replication", sort=True)]
    groups = [g[np.isfinite(g)] for g in groups]
    groups = [g for g in groups if len(g) >= 2]
    if len(groups) < 2:
        return None
    return pool_replications(groups, confidence) | {"mean_of_means": float(np.mean([g.mean() for g in groups]))}


def ranking_table(table: pd.DataFrame, cfg: DictConfig) -> pd.DataFrame:
    a = cfg.mechanisms.analysis
    alpha, confidence = float(a.alpha), 1 - float(a.alpha)
    arms = ordered(list(cfg.mechanisms.arms), arm_order(cfg))
    rows = []
    for grouping in cfg.mechanisms.groupings:
        for metric in a.metrics:
            margin, sign = float(a.margins[metric]), direction(metric)
            levels = {arm: level_pool(table, grouping, metric, arm, confidence) for arm in arms}
            levels = {arm: p for arm, p in levels.items() if p is not None}
            if not levels:
                continue
            best = max(levels, key=lambda arm: (sign * levels[arm]["estimate"], -arms.index(arm)))
            block = []
            for arm, pool in levels.items():
                row = {
                    "grouping": grouping,
                    "metric": metric,
                    "arm": arm,
                    "n_replications": pool["df"] + 1,
                    "pooled_mean": pool["estimate"],
                    "ci_low": pool["ci_low"],
                    "ci_high": pool["ci_high"],
                    # Descriptive, beside the pre-stated pooled level: the plain mean of the
                    # replication means, which the pooled level need not be near (it weights each
                    # replication by 1 / (its within-replication variance + tau^2)).
                    "replication_mean": pool["mean_of_means"],
                    "best": arm == best,
                    "margin": margin,
                }
                if arm != best:
                    groups = fold_differences(table, grouping, metric, arm, best)
                    diff = pool_replications(groups, confidence)
                    p_tost, mean, se = tost(np.array([g.mean() for g in groups]), margin)
                    t_crit = float(sps.t.ppf(1 - alpha, len(groups) - 1))
                    row |= {
                        "diff_vs_best": mean,  # the centre of the TOST interval
                        "tost_low": mean - t_crit * se,
                        "tost_high": mean + t_crit * se,
                        "p_tost": p_tost,
                        "p_diff": diff["p_two_sided"],
                    }
                block.append(row)
            frame = pd.DataFrame(block)
            others = frame.best == False  # noqa: E712 (a pandas mask)
            frame.loc[others, "p_diff_holm"] = holm(frame.loc[others, "p_diff"].to_numpy())
            frame["status"] = [status(r, alpha) for r in frame.itertuples()]
            frame["rank"] = (sign * -frame.pooled_mean).rank(method="min").astype(int)
            rows.append(frame)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def status(row, alpha: float) -> str:
    if row.best:
        return "best"
    if row.p_tost < alpha:
        return "equivalent to the best"
    if row.p_diff_holm < alpha:
        return "worse than the best"
    return "inconclusive"


# --------------------------------------------------------------------------------------------
# Tables, figure, the stage
# --------------------------------------------------------------------------------------------
def replication_means(table: pd.DataFrame) -> pd.DataFrame:
    means = table.groupby(["grouping", "metric", "arm", "replication"], sort=False).value.agg(["mean", "count"])
    return means.reset_index().rename(columns={"mean": "value", "count": "n_folds"})


def decimals(metric: str) -> int:
    """Instability values are a hundredth of the R² values: two more decimals."""
    return 6 if direction(metric) < 0 else 4


def fmt_p(p: float) -> str:
    """A p-value for a reader: never printed as 0 (the smallest shown is < 0.0001)."""
    if not np.isfinite(p):
        return "—"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.001 else f"{p:.3f}"


def summary_markdown(primary: pd.DataFrame, ranking: pd.DataFrame, cfg: DictConfig) -> str:
    a = cfg.mechanisms.analysis
    ref, alpha = str(a.reference), float(a.alpha)
    n_rep = ", ".join(f"{g}: {n}" for g, n in primary.groupby("grouping", sort=False).n_replications.max().items())
    floor = primary.p_sign_flip_floor.min() if len(primary) else float("nan")
    margins = ", ".join(f"{metric_name(m)} ±{float(a.margins[m]):g}" for m in a.metrics)
    lines = [
        "# Which coordinate mechanism helps? (the pre-stated analysis, docs/mechanisms.md)",
        "",
        f"Replications per grouping: {n_rep}. Unit of inference: the replication (its mean over folds). "
        f"*Pooled*: random effects (DerSimonian-Laird, HKSJ {1 - alpha:.0%} CI, two-sided p on k − 1 df). "
        f"*Holm*: over the {max(len(cfg.mechanisms.arms) - 1, 1)} comparisons of one grouping and metric. "
        f"*Sign-flip*: exact, two-sided, over the replication means; it cannot go below {floor:.4g}. "
        f"`n_agree`: replications in which {ref} is better. Lower instability is better.",
        "",
        f"## Does {ref} beat each other arm?",
        "",
    ]
    rows = []
    for r in primary.itertuples():
        n = decimals(r.metric)
        rows.append(
            [r.grouping, metric_name(r.metric), r.other]
            + [f"{r.estimate:+.{n}f} [{r.ci_low:+.{n}f}, {r.ci_high:+.{n}f}]", fmt_p(r.p_re), fmt_p(r.p_re_holm)]
            + [fmt_p(r.p_sign_flip), fmt_p(r.p_sign_flip_holm), f"{r.n_agree}/{r.n_replications}", r.conclusion]
        )
    lines += markdown_table(
        ["grouping", "metric", f"{ref} − other", "pooled [CI]", "p (RE)", "p (RE, Holm)", "p (sign-flip)"]
        + ["p (sign-flip, Holm)", "n_agree", "conclusion"],
        rows,
    )
    shown = primary[primary.conclusion != "not shown"]
    alone = int((shown.p_sign_flip_holm >= alpha).sum())
    lines += [
        "",
        f"{len(shown)} of {len(primary)} comparisons are shown by the random-effects test (Holm); {alone} of them "
        f"rest on its model alone: the sign-flip test (Holm) does not reach {alpha:g} there"
        + (
            f" (it cannot: its smallest Holm-corrected value here is {holm_floor:.4g})."
            if (holm_floor := floor * (len(cfg.mechanisms.arms) - 1)) >= alpha
            else "."
        ),
        "",
        "## Which arms are indistinguishable from the best?",
        "",
        f"Equivalence margins: {margins}. *TOST*: two one-sided t-tests on the replication-mean differences "
        f"from the best arm (df k − 1); equivalent when p (TOST) < {alpha:g}, i.e. the {1 - 2 * alpha:.0%} "
        "interval lies inside the margin. *Worse*: the random-effects difference from the best, Holm over the "
        "other arms; an arm both different and equivalent (a difference smaller than the margin) is listed as "
        "equivalent. The best arm is chosen from these data (its pooled level), so these statements are "
        "conditional on that choice.",
        "",
    ]
    metric_rank = {m: i for i, m in enumerate(a.metrics)}
    rows = []
    for r in ranking.sort_values(
        ["grouping", "metric", "rank"], key=lambda c: c.map(metric_rank) if c.name == "metric" else c, kind="stable"
    ).itertuples():
        n = decimals(r.metric)
        vs = "" if r.best else f"{r.diff_vs_best:+.{n}f} [{r.tost_low:+.{n}f}, {r.tost_high:+.{n}f}]"
        rows.append(
            [
                r.grouping,
                metric_name(r.metric),
                r.rank,
                r.arm,
                f"{r.pooled_mean:.{n}f} [{r.ci_low:.{n}f}, {r.ci_high:.{n}f}]",
                f"{r.replication_mean:.{n}f}",
            ]
            + [vs, "" if r.best else fmt_p(r.p_tost), "" if r.best else fmt_p(r.p_diff_holm), r.status]
        )
    lines += markdown_table(
        ["grouping", "metric", "rank", "arm", "pooled mean [CI]", "mean of replications", "− best [TOST interval]"]
        + ["p (TOST)", "p (difference, Holm)", "status"],
        rows,
    )
    lines += ["", weighting_note(ranking)]
    return "\n".join(lines) + "\n"


def level_best_disagreements(ranking: pd.DataFrame) -> list[tuple[str, str, str, str]]:
    """(grouping, metric, best by pooled level, best by mean of replication means) for every block
    where the two name different arms."""
    out = []
    for (grouping, metric), block in ranking.groupby(["grouping", "metric"], sort=False):
        sign = direction(metric)
        by_level = block.loc[block.best, "arm"].iloc[0]
        by_mean = block.loc[(sign * block.replication_mean).idxmax(), "arm"]
        if by_mean != by_level:
            out.append((grouping, metric, by_level, by_mean))
    return out


def weighting_note(ranking: pd.DataFrame) -> str:
    """Why a ranked arm can differ from the best with the 'wrong' sign: the best is chosen by the
    weighted pooled level, the differences are plain means of paired replication differences."""
    blocks = ranking.groupby(["grouping", "metric"], sort=False).ngroups
    off = level_best_disagreements(ranking)
    text = (
        "*Mean of replications* (descriptive, not part of the pre-stated analysis): the plain mean of the "
        "arm's replication means. The pooled level weights each replication by 1 / (its within-replication "
        "variance + τ²), so replications whose folds agree count more and the pooled level need not be near "
        "the plain mean; the difference from the best (TOST column) is a plain mean of paired replication "
        "differences, so an arm can differ from the best in its favour. "
    )
    if not off:
        return text + f"In all {blocks} grouping × metric blocks both name the same best arm."
    named = "; ".join(f"{g}, {metric_name(m)}: pooled level {lv}, mean of replications {mn}" for g, m, lv, mn in off)
    return text + f"In {len(off)} of {blocks} grouping × metric blocks they name different best arms ({named})."


# How the ranking figure marks each arm's status (docs/mechanisms.md, section 2); "inconclusive" is
# left unmarked.
STATUS_MARK = {"best": "best", "equivalent to the best": "≈ best", "worse than the best": "worse"}


def ranking_figure(means: pd.DataFrame, ranking: pd.DataFrame, cfg: DictConfig) -> Figure:
    """Rows: metrics; columns: groupings. Per arm its replication means (dots, a line at their
    mean) and pooled mean with CI (black); the best arm's margin shaded."""
    a = cfg.mechanisms.analysis
    metrics, groupings = list(a.metrics), list(cfg.mechanisms.groupings)
    arms = ordered(list(cfg.mechanisms.arms), arm_order(cfg))
    with rc_context(STYLE):
        fig = Figure(figsize=(0.9 * len(arms) * len(groupings) + 1.5, 2.9 * len(metrics) + 0.8), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(metrics), len(groupings), squeeze=False)
        for i, metric in enumerate(metrics):
            for j, grouping in enumerate(groupings):
                ax = axes[i][j]
                rank = ranking[(ranking.grouping == grouping) & (ranking.metric == metric)].set_index("arm")
                for x, arm in enumerate(arms):
                    _, colour, _ = arm_style(cfg, arm, x)
                    reps = means[(means.grouping == grouping) & (means.metric == metric) & (means.arm == arm)]
                    reps = reps.sort_values("replication")
                    offsets = np.linspace(-0.18, 0.18, len(reps)) if len(reps) > 1 else np.zeros(len(reps))
                    ax.scatter(x + offsets, reps.value, s=14, color=colour, alpha=0.8, zorder=3)
                    if len(reps):
                        ax.hlines(reps.value.mean(), x - 0.24, x + 0.24, color=colour, linewidth=1, zorder=2)
                    if arm in rank.index:
                        r = rank.loc[arm]
                        ax.errorbar(
                            [x + 0.32],
                            [r.pooled_mean],
                            yerr=[[r.pooled_mean - r.ci_low], [r.ci_high - r.pooled_mean]],
                            fmt="D",
                            color="black",
                            markersize=4,
                            capsize=3,
                        )
                        if r.best:
                            low = r.pooled_mean - r.margin
                            if direction(metric) < 0:
                                low = max(low, 0.0)  # an instability is a mean square: never below 0
                            ax.axhspan(low, r.pooled_mean + r.margin, color="0.9", zorder=0)
                        if r.status in STATUS_MARK:
                            ax.annotate(
                                STATUS_MARK[r.status],
                                (x, max(reps.value.max(), r.ci_high)),
                                xytext=(0, 4),
                                textcoords="offset points",
                                ha="center",
                                fontsize=7,
                            )
                ax.set_xticks(range(len(arms)), arms, rotation=35, ha="right", fontsize=8)
                ax.set_xlim(-0.6, len(arms) - 0.3)
                ax.margins(y=0.12)  # room for the status marks above the highest arm
                ax.set_ylabel(metric_name(metric), fontsize=9)
                ax.set_title(f"{grouping} grouping", fontsize=10)
        fig.suptitle(
            "Each arm per replication (dots: mean over folds; line: their mean) and pooled (black: random effects, "
            f"{1 - float(a.alpha):.0%} CI, each replication weighted by its precision); "
            "grey band: the best arm ± the equivalence margin;\n"
            "≈ best: equivalent to the best (TOST); worse: worse than the best (random effects, Holm); "
            "unmarked: inconclusive",
            fontsize=9,
        )
    return fig


def summary_stage(cfg: DictConfig, ctx: StageContext) -> None:
    """The `mechanisms_summary` stage: tables and ranking figure from the replications' logs."""
    table = fold_table(ctx.out, cfg)
    primary, ranking = primary_table(table, cfg), ranking_table(table, cfg)
    if primary.empty:
        raise FileNotFoundError(f"{ctx.out}: fewer than 2 replications with logs of every arm; nothing to pool")
    means = replication_means(table)
    text = summary_markdown(primary, ranking, cfg)
    fig = ranking_figure(means, ranking, cfg)
    write_csv(primary, ctx.out / "mechanisms_primary.csv")
    write_csv(ranking, ctx.out / "mechanisms_ranking.csv")
    write_csv(means, ctx.out / "mechanisms_replications.csv")
    write_text(ctx.out / "mechanisms_summary.md", text)
    save_png(fig, ctx.out / "mechanisms_ranking.png")
    log.info("mechanisms_summary: %d comparisons, %d ranked arm rows -> %s", len(primary), len(ranking), ctx.out)
