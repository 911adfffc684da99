"""Statistics of SPEC section 7: per-fold metrics, paired bootstrap of arm differences, Table 3.

Per model and (seed, fold) the final-epoch train and test R^2 and the instability of the test
curve (squared residuals of a smoothing spline, mean by default) are compared between two arms,
paired by fold: d_i = a_i - b_i. The bootstrap resamples the d_i with replacement, either
Monte-Carlo (`numpy.random.default_rng(seed)`, fresh per comparison: this reproduces the
published confidence intervals) or by enumerating all n^n resamples. `coordchannels.stats.stage.stats_stage` writes the
comparison table (csv, md, tex), every per-fold value and every per-fold difference.

Thin or incomplete evidence is refused or flagged, never silently turned into a conclusion:

* the logs must hold every (seed, fold) unit of a complete run: folds 1..`stats.expected_folds`
  (default `task.data.n_folds`, else 5) times the seeds `stats.expected_seeds` (default
  `train.seeds` when the logs are this config's training logs, else the seeds present). A missing
  log is an error naming it; with `stats.allow_incomplete=true` the units present in every arm
  are compared instead and the tables say INCOMPLETE;
* a comparison needs at least 2 paired units (with one, every resample is that one difference:
  p = 0 and a zero-width CI);
* every table states the number of paired units and of epochs, and whether the run was limited
  (fewer epochs than the protocol's `stats.protocol_epochs` = 15, or `train.limit_train` /
  `train.limit_test` set, in this config or in the job records (`jobs/`) beside the logs);
* the spline instability needs at least 4 epochs (logs with fewer are refused) and is NOT
  ESTIMABLE below 5: UnivariateSpline is cubic (k = 3), so through k + 1 = 4 points it
  interpolates exactly and the residual is zero by construction. Such rows keep their place in
  the tables with no mean, CI or effect size, p = 1 (no evidence) and the conclusion
  "not estimable"; their per-fold values are NaN.

These settings are read with defaults when the config does not define them; override them with
`++stats.allow_incomplete=true`, `++stats.expected_folds=10`, etc.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf
from scipy.interpolate import LSQUnivariateSpline, UnivariateSpline, make_smoothing_spline

from coordchannels.io import write_csv, write_text
from coordchannels.logs import MIN_EPOCHS, Expected, FoldLog, LogError, load_logs, order_arms, unit_key
from coordchannels.stats.inference import sign_flip
from coordchannels.tables import markdown_table as table_lines

log = logging.getLogger(__name__)

METRICS = ("instability", "test_r2", "train_r2")
# How much evidence stands behind each row, stated in every table.
EVIDENCE_COLUMNS = ["n_units", "n_epochs", "limited", "complete"]
# p_value and conclusion are the paper's method (one-sided bootstrap p, 95% bootstrap CI); the exact
# sign-flip p-values stand beside them (coordchannels.stats.inference).
EXACT_COLUMNS = ["p_exact_one_sided", "p_exact_two_sided", "conclusion_exact", "all_same_sign"]
TABLE_COLUMNS = [
    "model",
    "metric",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_value",
    "conclusion",
    *EXACT_COLUMNS,
    *EVIDENCE_COLUMNS,
]
METRIC_LABELS = {"instability": "Instability", "test_r2": "Test R²", "train_r2": "Train R²"}
METRIC_LATEX = {"instability": "Instability", "test_r2": "Test $R^2$", "train_r2": "Train $R^2$"}
# Exact enumeration materialises n^n resample means; beyond this it is a memory hazard.
MAX_EXACT_RESAMPLES = 10_000_000
# The trainer's mark of a reduced-scale run in each model's log folder (the published layout reads
# only *_log.csv, so the mark travels with copied logs): the train.limit_* settings the logs had.
SCALE_MARK = "reduced_scale.json"
LIMIT_KEYS = ("limit_train", "limit_test")
# The protocol of the paper: 15 epochs on all samples; fewer makes a run "limited".
PROTOCOL_EPOCHS = 15
# A cubic spline (UnivariateSpline's default k = 3) needs k + 1 = 4 points, and through exactly 4
# it interpolates: the instability is only estimable from 5 epochs on.
MIN_SPLINE_POINTS = MIN_EPOCHS
MIN_INSTABILITY_EPOCHS = MIN_SPLINE_POINTS + 1
# A paired comparison needs at least this many (seed, fold) units.
MIN_UNITS = 2


# ---------------------------------------------------------------- per-fold metrics


def smooth_curve(epochs: np.ndarray, curve: np.ndarray, fit: str = "spline") -> np.ndarray:
    """The smooth trend the instability measures roughness around.

    `spline` (the scripts', hence the published numbers'): scipy's UnivariateSpline with its default
    smoothing s = number of points. On R² curves (residuals ~0.01-0.1) that s is never binding, so
    it places no interior knot: the fit is the least-squares cubic polynomial. The alternatives, for
    the sensitivity analysis only: `gcv`, a cubic smoothing spline whose penalty is chosen by
    generalised cross-validation (scipy's make_smoothing_spline); `knots3`, a least-squares cubic
    spline with 3 interior knots at equal spacing.
    """
    if fit == "spline":
        return UnivariateSpline(epochs, curve)(epochs)
    if fit == "gcv":
        return make_smoothing_spline(epochs, curve)(epochs)
    if fit == "knots3":
        knots = np.linspace(epochs[0], epochs[-1], 5)[1:-1]
        return LSQUnivariateSpline(epochs, curve, knots)(epochs)
    raise ValueError(f"instability fit {fit!r}: expected one of {', '.join(INSTABILITY_FITS)}")


INSTABILITY_FITS = ("spline", "gcv", "knots3")


def instability(epochs: np.ndarray, curve: np.ndarray, how: str = "mean", fit: str = "spline") -> float:
    """Roughness of a test curve: squared residuals around a smooth fit (`smooth_curve`; the default
    is the scripts' UnivariateSpline, in effect a least-squares cubic).

    The scripts (and hence the published numbers) take the mean; the paper's text says sum.
    Refused below 4 epochs (the cubic spline's minimum); note that with exactly 4 it is 0 by
    construction (see `instability_estimable`).
    """
    epochs = np.asarray(epochs, dtype=float)
    curve = np.asarray(curve, dtype=float)
    if len(epochs) < MIN_SPLINE_POINTS:
        raise ValueError(
            f"the spline instability needs at least {MIN_SPLINE_POINTS} epochs (a cubic spline, k = 3, "
            f"needs k + 1 points); got {len(epochs)}"
        )
    residuals = curve - smooth_curve(epochs, curve, fit)
    squared = residuals**2
    if how == "mean":
        return float(squared.mean())
    if how == "sum":
        return float(squared.sum())
    raise ValueError(f"stats.instability={how!r}: expected 'mean' or 'sum'")


def instability_estimable(n_epochs: int) -> bool:
    """Whether n epochs leave the spline a residual: not with 4, through which a cubic interpolates."""
    return n_epochs >= MIN_INSTABILITY_EPOCHS


def fold_metrics(fold_log: FoldLog, how: str = "mean", final_epochs: int = 1, fit: str = "spline") -> dict[str, float]:
    """The three compared values of one fold: instability (NaN when not estimable), final test
    R^2, final train R^2. `final_epochs` = k > 1 takes the mean of the last k epochs instead of the
    last one (the paper's value), which a single swing of the test curve moves less."""
    n = len(fold_log.epochs)
    k = int(final_epochs)
    if not 1 <= k <= n:
        raise ValueError(f"stats.final_epochs={final_epochs}: must be between 1 and the {n} epochs of {fold_log.path}")
    inst = (
        float("nan")
        if MIN_SPLINE_POINTS <= n < MIN_INSTABILITY_EPOCHS
        else instability(fold_log.epochs, fold_log.test, how, fit)
    )
    return {
        "instability": inst,
        "test_r2": float(np.mean(fold_log.test[-k:])),
        "train_r2": float(np.mean(fold_log.train[-k:])),
    }


def fold_values(
    logs: dict[str, dict[str, list[FoldLog]]], how: str = "mean", final_epochs: int = 1, fit: str = "spline"
) -> pd.DataFrame:
    """Long table of every per-fold value: model, arm, seed, fold, metric, value."""
    rows = [
        {"model": model, "arm": arm, "seed": fl.seed, "fold": fl.fold, "metric": metric, "value": value}
        for model, arms in logs.items()
        for arm, fold_logs in arms.items()
        for fl in fold_logs
        for metric, value in fold_metrics(fl, how, final_epochs, fit).items()
    ]
    frame = pd.DataFrame(rows, columns=["model", "arm", "seed", "fold", "metric", "value"])
    frame["seed"] = frame["seed"].astype("Int64")  # empty for single-seed layouts
    return frame


def paired_differences(values: pd.DataFrame, model: str, metric: str, arm_a: str, arm_b: str) -> pd.DataFrame:
    """Per (seed, fold) of one model and metric: value of arm a, of arm b, and d = a - b."""
    sel = values[(values.model == model) & (values.metric == metric)]
    key = ["seed", "fold"]
    a = sel[sel.arm == arm_a].set_index(key)["value"]
    b = sel[sel.arm == arm_b].set_index(key)["value"]
    if set(a.index) != set(b.index):
        raise ValueError(f"{model}: arms {arm_a!r} and {arm_b!r} do not have the same (seed, fold) units")
    units = sorted(a.index, key=lambda u: unit_key((None if pd.isna(u[0]) else int(u[0]), int(u[1]))))
    frame = pd.DataFrame(
        {
            "model": model,
            "metric": metric,
            "seed": pd.array([u[0] for u in units], dtype="Int64"),
            "fold": [u[1] for u in units],
            "arm_a": arm_a,
            "arm_b": arm_b,
            "value_a": a.loc[units].to_numpy(),
            "value_b": b.loc[units].to_numpy(),
        }
    )
    frame["diff"] = frame["value_a"] - frame["value_b"]
    return frame


# ---------------------------------------------------------------- paired bootstrap


def montecarlo_means(d: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of `n_resamples` resamples (with replacement) of the paired differences `d`.

    A fresh `default_rng(seed)` per comparison drawing an (n_resamples, n) index matrix is the
    draw that reproduces the published CIs exactly (legacy `np.random.seed` + `choice` does not).
    """
    d = np.asarray(d, dtype=float)
    if n_resamples < 1:
        raise ValueError(f"stats.n_resamples={n_resamples}: must be at least 1")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(d), size=(n_resamples, len(d)))
    return d[index].mean(axis=1)


def exact_means(d: np.ndarray) -> np.ndarray:
    """Means of all n^n resamples of `d` (every index tuple once, in itertools.product order)."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n**n > MAX_EXACT_RESAMPLES:
        raise ValueError(
            f"exact bootstrap of {n} paired units needs {n}^{n} = {n**n:.3g} resamples "
            f"(limit {MAX_EXACT_RESAMPLES:.0e}); use stats.method=montecarlo"
        )
    sums = np.zeros(1)
    for _ in range(n):  # sums over all index tuples, built one position at a time
        sums = np.add.outer(sums, d).ravel()
    return sums / n


def resample_means(d: np.ndarray, method: str, n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap distribution of the mean paired difference by the configured method."""
    if method == "montecarlo":
        return montecarlo_means(d, n_resamples, seed)
    if method == "exact":
        return exact_means(d)
    raise ValueError(f"stats.method={method!r}: expected 'montecarlo' or 'exact'")


def one_sided_p(mean_diff: float, means: np.ndarray) -> float:
    """Share of resampled means at or beyond zero on the side away from the observed mean."""
    if mean_diff > 0:
        return float(np.mean(means <= 0))
    if mean_diff < 0:
        return float(np.mean(means >= 0))
    return 1.0  # an observed mean of exactly zero carries no evidence either way


def effect_size(d: np.ndarray) -> float:
    """Mean paired difference over the SD (ddof=1) of the differences; +-inf if they are all equal."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return float("nan")
    sd = d.std(ddof=1)
    if sd == 0:
        return float(np.sign(d.mean()) * np.inf) if d.mean() != 0 else float("nan")
    return float(d.mean() / sd)


def conclusion(ci_low: float, ci_high: float, arm_a: str, arm_b: str) -> str:
    """'a > b' or 'a < b' when the CI excludes zero, else 'not significant' (as in the paper)."""
    if ci_low > 0:
        return f"{arm_a} > {arm_b}"
    if ci_high < 0:
        return f"{arm_a} < {arm_b}"
    return "not significant"


def compare(
    d: np.ndarray,
    arm_a: str,
    arm_b: str,
    method: str = "montecarlo",
    n_resamples: int = 20000,
    seed: int = 42,
    confidence: float = 0.95,
) -> dict:
    """Paired bootstrap summary of the differences d = a - b (one row of the table, plus extras)."""
    d = np.asarray(d, dtype=float)
    if len(d) < MIN_UNITS:
        raise ValueError(
            f"a paired bootstrap needs at least {MIN_UNITS} paired units; got {len(d)} (every resample of "
            "one difference is that difference: p = 0 and a zero-width CI, whatever the data)"
        )
    if not np.all(np.isfinite(d)):
        raise ValueError(f"paired differences must be finite numbers; got {d.tolist()}")
    if not 0 < confidence < 1:
        raise ValueError(f"stats.confidence={confidence}: must lie strictly between 0 and 1")
    means = resample_means(d, method, n_resamples, seed)
    tail = (1 - confidence) / 2 * 100
    ci_low, ci_high = np.percentile(means, [tail, 100 - tail])
    mean_diff = float(d.mean())
    return {
        "mean_diff": mean_diff,
        "ci_low": float(ci_low),
        "ci_high": float(ci_high),
        "p_value": one_sided_p(mean_diff, means),
        "conclusion": conclusion(ci_low, ci_high, arm_a, arm_b),
        **exact_test(d, arm_a, arm_b, 1 - confidence),
        "effect_size": effect_size(d),
        "n_units": len(d),
        "n_resamples": len(means),
        "all_same_sign": bool(np.all(d > 0) or np.all(d < 0)),
    }


def exact_test(d: np.ndarray, arm_a: str, arm_b: str, alpha: float) -> dict:
    """The exact sign-flip p-values of d = a - b: one-sided in the direction of the observed mean
    (the side the bootstrap p looks at) and two-sided, with the two-sided conclusion at `alpha`."""
    mean = float(np.mean(d))
    side = "greater" if mean > 0 else "less"
    one = sign_flip(d, side) if mean != 0 else 1.0
    two = sign_flip(d, "two-sided")
    verdict = "not significant" if two >= alpha or mean == 0 else f"{arm_a} {'>' if mean > 0 else '<'} {arm_b}"
    return {"p_exact_one_sided": one, "p_exact_two_sided": two, "conclusion_exact": verdict}


# ---------------------------------------------------------------- two-level (hierarchical) bootstrap


def hierarchical_means(groups: Sequence[np.ndarray], n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap means of units nested in groups (folds in replications): each resample draws as
    many groups as there are, with replacement, then within each drawn group as many of its units
    as it has, with replacement; the statistic is the mean over all drawn units.

    Both sources of variation count: which replications (training seed and fold split) happened,
    and which folds within them.
    """
    groups = [np.asarray(g, dtype=float) for g in groups]
    if len(groups) < 1 or any(len(g) < 1 for g in groups):
        raise ValueError("a hierarchical bootstrap needs at least one group, each with at least one unit")
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(groups), size=(n_resamples, len(groups)))
    sums, counts = np.zeros(n_resamples), np.zeros(n_resamples)
    for slot in range(len(groups)):
        for j, g in enumerate(groups):
            rows = np.flatnonzero(pick[:, slot] == j)
            if rows.size:
                draws = g[rng.integers(0, len(g), size=(rows.size, len(g)))]
                sums[rows] += draws.sum(axis=1)
                counts[rows] += len(g)
    return sums / counts


def hierarchical_exact(groups: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every outcome of `hierarchical_means`' draw with its probability, for small cases (tests):
    (means, weights), weights summing to 1."""
    groups = [np.asarray(g, dtype=float) for g in groups]
    k = len(groups)
    # Per group: the sums of all len(g)^len(g) unit draws (each equally likely) and their count.
    draw_sums = [exact_means(g) * len(g) for g in groups]
    means, weights = [], []
    for choice in itertools.product(range(k), repeat=k):
        total = np.zeros(1)
        for j in choice:
            total = np.add.outer(total, draw_sums[j]).ravel()
        n = sum(len(groups[j]) for j in choice)
        means.append(total / n)
        weights.append(np.full(total.size, 1.0 / (k**k * total.size)))
    return np.concatenate(means), np.concatenate(weights)


def pooled(groups: Sequence[np.ndarray], n_resamples: int = 20000, seed: int = 42, confidence: float = 0.95) -> dict:
    """Pooled mean of nested paired differences with its hierarchical-bootstrap percentile CI."""
    means = hierarchical_means(groups, n_resamples, seed)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {
        "pooled_mean_diff": float(np.mean(np.concatenate([np.asarray(g, float) for g in groups]))),
        "pooled_ci_low": float(low),
        "pooled_ci_high": float(high),
    }


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control over the given tests)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


# ---------------------------------------------------------------- comparisons of arms


def arm_pairs(arms: Sequence[str], compare_cfg) -> list[tuple[str, str]]:
    """The (a, b) pairs to compare, diff = a - b: the configured pair, or all pairs (later - earlier)."""
    if isinstance(compare_cfg, str):
        ordered = order_arms(list(arms))
        return [(later, earlier) for earlier, later in itertools.combinations(ordered, 2)]
    a, b = (str(x) for x in compare_cfg)
    return [(a, b)]


def not_estimable(d: np.ndarray, n_epochs: int, n_resamples: int) -> dict:
    """The row of an instability that cannot be estimated: no numbers, p = 1 (no evidence)."""
    return {
        "mean_diff": float("nan"),
        "ci_low": float("nan"),
        "ci_high": float("nan"),
        "p_value": 1.0,
        "conclusion": f"not estimable ({n_epochs} epochs; needs {MIN_INSTABILITY_EPOCHS})",
        "p_exact_one_sided": 1.0,
        "p_exact_two_sided": 1.0,
        "conclusion_exact": f"not estimable ({n_epochs} epochs; needs {MIN_INSTABILITY_EPOCHS})",
        "effect_size": float("nan"),
        "n_units": len(d),
        "n_resamples": n_resamples,
        "all_same_sign": False,
    }


def compare_all(
    values: pd.DataFrame,
    logs: dict[str, dict[str, list[FoldLog]]],
    compare_cfg,
    method: str,
    n_resamples: int,
    seed: int,
    confidence: float,
    evidence: dict[str, dict] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every comparison: (results, one row per model x pair x metric; per-fold differences).

    `evidence`: per model, the columns EVIDENCE_COLUMNS except n_units, added to each row.
    """
    results, differences = [], []
    for model, arms in logs.items():
        n_epochs = len(next(iter(arms.values()))[0].epochs)
        for arm_a, arm_b in arm_pairs(list(arms), compare_cfg):
            for metric in METRICS:
                diffs = paired_differences(values, model, metric, arm_a, arm_b)
                d = diffs["diff"].to_numpy()
                if len(d) < MIN_UNITS:
                    units = ", ".join(
                        f"fold {f}" + ("" if pd.isna(s) else f" seed {s}") for s, f in zip(diffs.seed, diffs.fold)
                    )
                    raise LogError(
                        f"{model}: {arm_a} - {arm_b} has {len(d)} paired unit(s) ({units}); a paired comparison "
                        f"needs at least {MIN_UNITS} (with one, every resample equals it: p = 0 and a zero-width CI)"
                    )
                if metric == "instability" and not instability_estimable(n_epochs):
                    summary = not_estimable(d, n_epochs, n_resamples)
                else:
                    summary = compare(d, arm_a, arm_b, method, n_resamples, seed, confidence)
                summary["fold_diffs"] = diffs["diff"].tolist()
                row = {"model": model, "arm_a": arm_a, "arm_b": arm_b, "metric": metric, **summary}
                row.update((evidence or {}).get(model, {"n_epochs": n_epochs}))
                results.append(row)
                differences.append(diffs)
    return pd.DataFrame(results), pd.concat(differences, ignore_index=True)


def add_holm(results: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """The Holm adjustment of the exact two-sided sign-flip p over the pairs of each model and
    metric, with the conclusion that survives the correction. (Its floor is the exact test's:
    with 5 folds no pair can reach p_holm < 0.0625.)"""
    out = results.copy()
    out["p_holm"] = out.groupby(["model", "metric"])["p_exact_two_sided"].transform(lambda p: holm(p.to_numpy()))
    alpha = 1 - confidence

    def holm_conclusion(row) -> str:
        if str(row.conclusion).startswith("not estimable"):
            return row.conclusion
        if row.p_holm >= alpha or row.mean_diff == 0:
            return "not significant"
        return f"{row.arm_a} {'>' if row.mean_diff > 0 else '<'} {row.arm_b}"

    out["conclusion_holm"] = out.apply(holm_conclusion, axis=1)
    return out


# ---------------------------------------------------------------- formatting


def format_p(p: float, n_resamples: int) -> str:
    """A bootstrap p: 5 decimals; below one resample in B (i.e. none at or beyond zero) as '<1/B',
    e.g. <0.00005."""
    floor = 1 / n_resamples
    return f"<{floor:.5f}" if p < floor else f"{p:.5f}"


def format_bootstrap_p(p: float, n_resamples: int, n_units: int, same_sign: bool) -> str:
    """The paper's bootstrap p as printed: when every difference has the same sign no resample of
    them can cross zero, so its p is 0 by construction, not evidence: say so instead of a number."""
    return f"all {n_units} same sign" if same_sign else format_p(p, n_resamples)


def format_exact_p(p: float) -> str:
    """An exact sign-flip p: 4 significant digits (its values are multiples of 1/2^n)."""
    return f"{p:.4g}"


def _num(x: float) -> str:
    return "n/a" if np.isnan(x) else f"{x:.5f}"


def _p_cell(row, p: float) -> str:
    """The bootstrap p as printed; 'n/a' for a row whose value could not be estimated."""
    if np.isnan(row.mean_diff):
        return "n/a"
    return format_bootstrap_p(p, row.n_resamples, row.n_units, bool(getattr(row, "all_same_sign", False)))


def _exact_cell(row, p: float) -> str:
    return "n/a" if np.isnan(row.mean_diff) else format_exact_p(p)


def _ci_cell(row) -> str:
    return "n/a" if np.isnan(row.mean_diff) else f"[{_num(row.ci_low)}, {_num(row.ci_high)}]"


def describe(method: str, n_resamples: int, seed: int, how: str, confidence: float, n_units=()) -> str:
    """Sentences saying how the numbers were made and what they can show, for the table captions:
    the unit of inference, each p-value's test and sidedness, and the exact test's floor."""
    draw = (
        f"{n_resamples} Monte-Carlo resamples (seed {seed})" if method == "montecarlo" else "all n^n resamples (exact)"
    )
    floors = ", ".join(f"{2 / 2**n:.4g} for n = {n}" for n in sorted(set(n_units)))
    return (
        f"Unit of inference: the paired (seed, fold) unit. The paper's method: paired bootstrap, {draw}; "
        f"{confidence:.0%} percentile CI, its conclusion, and a ONE-SIDED p = share of resampled means at or beyond 0 "
        "on the far side from the mean ('all n same sign' where every difference has one sign: that p is 0 by "
        "construction). Beside it the EXACT sign-flip test over all 2^n sign patterns, TWO-SIDED, and its conclusion "
        f"at {1 - confidence:.2g}; it cannot go below 2/2^n ({floors or 'n/a'}). "
        f"Instability = {how} of squared residuals of scipy's UnivariateSpline (default smoothing s = number of "
        "epochs, which on these curves places no interior knot: a least-squares cubic) fitted to the test R² curve."
    )


def markdown_table(results: pd.DataFrame, note: str, confidence: float, all_pairs: bool = False) -> str:
    """Table 3 as Markdown, with the exact test, effect size and per-fold differences the paper omits."""
    header = ["Model"] + (["Comparison"] if all_pairs else [])
    header += ["Metric", "Mean diff", f"{confidence:.0%} CI (bootstrap)", "p (bootstrap, one-sided)", "Conclusion"]
    header += ["p (exact, two-sided)"]
    if all_pairs:
        header += ["p (exact, Holm)", "Conclusion (exact, Holm)"]
    else:
        header += ["Conclusion (exact)"]
    header += ["Effect size (mean/SD)", "Per-fold differences"]
    rows = []
    for row in results.itertuples():
        cells = [row.model] + ([f"{row.arm_a} − {row.arm_b}"] if all_pairs else [])
        cells += [
            METRIC_LABELS.get(row.metric, row.metric),
            _num(row.mean_diff),
            _ci_cell(row),
            _p_cell(row, row.p_value),
            row.conclusion,
            _exact_cell(row, row.p_exact_two_sided),
        ]
        if all_pairs:
            cells += [_exact_cell(row, row.p_holm), row.conclusion_holm]
        else:
            cells += [row.conclusion_exact]
        effect = "n/a" if np.isnan(row.effect_size) else f"{row.effect_size:.3f}"
        cells += [effect, ", ".join(_num(x) for x in row.fold_diffs)]
        rows.append(cells)
    return f"{note}\n\n" + "\n".join(table_lines(header, rows)) + "\n"


def _tex(text: str) -> str:
    """Escape the LaTeX specials that can occur in model and arm names."""
    for char, repl in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(char, repl)
    return text.replace(">", "$>$").replace("<", "$<$")


def _math(cell: str) -> str:
    """A number in math mode; words ('n/a', 'all 5 same sign') as text."""
    return cell if cell == "n/a" or cell[:1].isalpha() else f"${cell}$"


def _tex_note(note: str) -> str:
    """The Markdown caption sentence in LaTeX: escaped, with its few Unicode symbols as math."""
    return _tex(note).replace("R²", "$R^2$").replace("n^n", "$n^n$").replace("−", "$-$")


def latex_table(results: pd.DataFrame, note: str, confidence: float, all_pairs: bool = False) -> str:
    """Table 3 as a LaTeX (booktabs) table; the model name heads its group of rows, as in the paper."""
    head = ["Model"] + (["Comparison"] if all_pairs else [])
    head += ["Metric", "Mean diff", f"{confidence:.0%} CI".replace("%", r"\%"), "$p$ (bootstrap, 1-s.)", "Conclusion"]
    head += ["$p$ (exact, 2-s.)"]
    spec = "l" + ("l" if all_pairs else "") + "lrcrlr"
    if all_pairs:
        head += ["$p_\\mathrm{Holm}$ (exact)", "Conclusion (exact, Holm)"]
        spec += "rl"
    body, previous = [], None
    for row in results.itertuples():
        cells = [_tex(row.model) if row.model != previous else ""]
        if all_pairs:
            cells.append(f"{_tex(row.arm_a)} $-$ {_tex(row.arm_b)}")
        cells += [
            METRIC_LATEX.get(row.metric, _tex(row.metric)),
            _math(_num(row.mean_diff)),
            _math(_ci_cell(row)),
            _math(_p_cell(row, row.p_value)),
            _tex(row.conclusion),
            _math(_exact_cell(row, row.p_exact_two_sided)),
        ]
        if all_pairs:
            cells += [_math(_exact_cell(row, row.p_holm)), _tex(row.conclusion_holm)]
        body.append(" & ".join(cells) + r" \\")
        previous = row.model
    return "\n".join(
        [
            "% Generated by coordchannels.stats; needs \\usepackage{booktabs}.",
            r"\begin{table}[ht]",
            r"\centering",
            f"\\caption{{{_tex_note(note)}}}",
            f"\\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(head) + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
            "",
        ]
    )


# ---------------------------------------------------------------- the stage


def output_names(all_pairs: bool) -> list[str]:
    """Files the stats stage writes into stats.out_dir."""
    stem = "all_pairs_table" if all_pairs else "comparison_table"
    return [f"{stem}.csv", f"{stem}.md", f"{stem}.tex", "fold_values.csv", "fold_differences.csv"]


def table_names(cfg: DictConfig) -> list[str]:
    """The tables the statistics write for this config."""
    return output_names(isinstance(compare_setting(cfg), str))


def compare_setting(cfg: DictConfig):
    """stats.compare as a plain value: the string 'all' or a list [a, b]."""
    value = cfg.stats.compare
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


def _setting(cfg: DictConfig, key: str, default=None):
    """An optional setting: its value, or `default` when the config lacks it or holds null."""
    value = OmegaConf.select(cfg, key, default=None)
    if isinstance(value, (ListConfig, DictConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return default if value is None else value


def _same_folder(a, b) -> bool:
    return a is not None and b is not None and Path(str(a)).resolve() == Path(str(b)).resolve()


def complete_run(cfg: DictConfig) -> Expected:
    """The (seed, fold) units a complete run has, from the config (see the module docstring)."""
    folds = _setting(cfg, "stats.expected_folds")
    if folds is None:
        n_folds = _setting(cfg, "task.data.n_folds")
        folds, source = (5, "SPEC default") if n_folds is None else (n_folds, "task.data.n_folds")
    else:
        source = "stats.expected_folds"
    folds = list(range(1, int(folds) + 1)) if isinstance(folds, (int, str)) else [int(f) for f in folds]
    if not folds or min(folds) < 1:
        raise ValueError(f"{source}={folds}: give the number of folds (>= 1) or a list of fold numbers")
    seeds = _setting(cfg, "stats.expected_seeds")
    train_seeds = _setting(cfg, "train.seeds")
    if seeds is None and train_seeds and _same_folder(_setting(cfg, "stats.logs_dir"), _setting(cfg, "train.logs_dir")):
        seeds, source = train_seeds, f"{source}, train.seeds"
    elif seeds is not None:
        source = f"{source}, stats.expected_seeds"
    if seeds is not None:
        seeds = [int(x) for x in ([seeds] if isinstance(seeds, int) else seeds)]
        # the trainer names a seed in the log names only when a run has several
        seeds = (None,) if len(seeds) == 1 else tuple(seeds)
    return Expected(tuple(sorted(set(folds))), seeds, source)


def run_limits(cfg: DictConfig, logs_dir: Path) -> list[str]:
    """train.limit_train / limit_test set in this config, in the job records beside the logs
    (`<run_dir>/jobs/`, written by the trainer with every finished log) or in the mark the trainer
    leaves in each model's log folder (`reduced_scale.json`), which travels with copied logs."""
    found = {}
    for mark in sorted(Path(logs_dir).glob(f"*/{SCALE_MARK}")):
        try:
            found.update({k: v for k, v in json.loads(mark.read_text()).items() if k in LIMIT_KEYS and v is not None})
        except (OSError, ValueError, AttributeError) as exc:  # unreadable: still say the run was reduced
            log.warning("stats: could not read %s (%s)", mark, exc)
            found.setdefault("limit_train", f"unknown ({mark} unreadable)")
    for record in sorted((Path(logs_dir).parent / "jobs").glob("*/*.json")):
        try:
            train = json.loads(record.read_text())["fingerprint"]["train"]
        except (OSError, ValueError, KeyError, TypeError) as exc:  # the trainer checks records properly
            log.warning("stats: could not read the job record %s (%s)", record, exc)
            continue
        found.update({key: train[key] for key in LIMIT_KEYS if train.get(key) is not None})
    for key in LIMIT_KEYS:
        value = _setting(cfg, f"train.{key}")
        if value is not None:
            found[key] = value
    return [f"train.{key}={value}" for key, value in found.items()]


def evidence(logs, limits: list[str], protocol_epochs: int) -> dict[str, dict]:
    """Per model: n_epochs, limited, complete (the table's evidence columns) and the reasons."""
    out = {}
    for model, arms in logs.items():
        n_epochs = len(next(iter(arms.values()))[0].epochs)
        reasons = ([f"{n_epochs} epochs (protocol: {protocol_epochs})"] if n_epochs < protocol_epochs else []) + limits
        out[model] = {
            "n_epochs": n_epochs,
            "limited": bool(reasons),
            "complete": model not in logs.missing,
            "_reasons": reasons,
        }
    return out


def limited_line(info: dict[str, dict]) -> str | None:
    """The LIMITED RUN sentence of `evidence` (None for runs at the paper's scale)."""
    reasons = sorted({r for i in info.values() if i["limited"] for r in i["_reasons"]})
    if not reasons:
        return None
    return f"LIMITED RUN ({', '.join(reasons)}): not the paper's protocol; do not compare with the published numbers."


def limited_note(cfg: DictConfig, logs) -> str | None:
    """The LIMITED RUN sentence for these logs, for the figures' titles."""
    protocol = int(_setting(cfg, "stats.protocol_epochs", PROTOCOL_EPOCHS))
    return limited_line(evidence(logs, run_limits(cfg, Path(cfg.stats.logs_dir)), protocol))


def evidence_lines(results: pd.DataFrame, info: dict[str, dict], logs, expected: Expected) -> list[str]:
    """Sentences for the table headings: units, epochs, and loudly any limit or gap."""
    groups: dict[tuple, list[str]] = {}
    for model, rows in results.groupby("model", sort=False):
        key = (tuple(sorted(set(rows.n_units))), info[model]["n_epochs"])
        groups.setdefault(key, []).append(model)
    parts = []
    for (units, n_epochs), models in groups.items():
        who = "" if len(groups) == 1 else f"{', '.join(models)}: "
        n = "/".join(str(u) for u in units)
        parts.append(f"{who}{n} paired (seed, fold) units per comparison, {n_epochs} epochs per fold")
    lines = [f"Evidence: {'; '.join(parts)}; a complete run has {expected.describe()}."]
    limited = limited_line(info)
    if limited:
        lines.append(limited)
    if logs.missing:
        n_missing = sum(len(paths) for paths in logs.missing.values())
        names = ", ".join(f"{p.parent.name}/{p.name}" for paths in logs.missing.values() for p in paths[:3])
        lines.append(
            f"INCOMPLETE: {n_missing} expected log(s) missing (e.g. {names}); compared on the units "
            "present in every arm (stats.allow_incomplete=true)."
        )
    thin = sorted({info[m]["n_epochs"] for m in info if not instability_estimable(info[m]["n_epochs"])})
    if thin:
        lines.append(
            f"Instability NOT ESTIMABLE with {'/'.join(map(str, thin))} epochs: the spline is cubic (k = 3), "
            f"so through 4 points it interpolates and leaves no residual; it needs at least "
            f"{MIN_INSTABILITY_EPOCHS} epochs."
        )
    return lines


def load_checked_logs(cfg: DictConfig):
    """The logs as the statistics use them: checked against the expected units of a complete
    run, incomplete sets refused unless stats.allow_incomplete (then the missing ones listed)."""
    allow = _setting(cfg, "stats.allow_incomplete", False)
    if not isinstance(allow, bool):
        raise ValueError(f"stats.allow_incomplete={allow!r}: expected true or false")
    logs = load_logs(cfg.stats.logs_dir, compare_setting(cfg), complete_run(cfg), allow)
    for model, paths in logs.missing.items():
        log.warning(
            "stats: INCOMPLETE logs of %s: %d missing (%s); comparing the units present in every arm "
            "because stats.allow_incomplete=true",
            model,
            len(paths),
            ", ".join(p.name for p in paths),
        )
    return logs


def build_outputs(cfg: DictConfig, logs=None) -> dict[str, pd.DataFrame | str]:
    """Read (unless `logs` are given), validate and compute every table; return {file name: table
    or text}. Writes nothing."""
    s = cfg.stats
    compare_cfg = compare_setting(cfg)
    all_pairs = isinstance(compare_cfg, str)
    logs = load_checked_logs(cfg) if logs is None else logs
    expected = logs.expected
    protocol = int(_setting(cfg, "stats.protocol_epochs", PROTOCOL_EPOCHS))
    info = evidence(logs, run_limits(cfg, Path(s.logs_dir)), protocol)
    columns = {m: {k: v for k, v in i.items() if not k.startswith("_")} for m, i in info.items()}
    final_epochs = int(_setting(cfg, "stats.final_epochs", 1))
    values = fold_values(logs, s.instability, final_epochs)
    results, differences = compare_all(
        values, logs, compare_cfg, s.method, int(s.n_resamples), int(s.seed), float(s.confidence), columns
    )
    n_res = int(s.n_resamples)
    note = describe(s.method, n_res, int(s.seed), s.instability, float(s.confidence), results.n_units)
    if final_epochs > 1:
        note += f" Train and test R² are the mean of the last {final_epochs} epochs (the paper: the last one)."
    names = output_names(all_pairs)
    if all_pairs:
        results = add_holm(results, float(s.confidence))
        note += (
            " Holm correction over the arm pairs of each model and metric, on the exact two-sided p; "
            "with 5 folds its floor is the exact test's, 0.0625, so no pair can be significant at 0.05."
        )
        table = results[
            [
                "model",
                "arm_a",
                "arm_b",
                "metric",
                "mean_diff",
                "ci_low",
                "ci_high",
                "p_value",
                "conclusion",
                "effect_size",
                "p_exact_one_sided",
                "p_exact_two_sided",
                "all_same_sign",
                "p_holm",
                "conclusion_holm",
                *EVIDENCE_COLUMNS,
            ]
        ]
    else:
        a, b = compare_cfg
        note = f"Difference = {a} − {b}. " + note
        table = results[TABLE_COLUMNS]
    lines = evidence_lines(results, info, logs, expected)
    for line in lines[1:]:
        log.warning("stats: %s", line)
    return {
        names[0]: table,
        names[1]: markdown_table(results, "\n\n".join([note, *lines]), float(s.confidence), all_pairs),
        names[2]: latex_table(results, " ".join([note, *lines]), float(s.confidence), all_pairs),
        names[3]: values,
        names[4]: differences,
    }


def write_outputs(outputs: dict[str, pd.DataFrame | str], out: Path) -> None:
    for name, content in outputs.items():
        if isinstance(content, pd.DataFrame):
            write_csv(content, out / name)
        else:
            write_text(out / name, content)
