"""Statistics (SPEC section 7): instability, paired bootstrap, Holm, tables, and Table 3 itself."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from coordchannels.logs import LogError, log_path
from coordchannels.stats.comparison import (
    TABLE_COLUMNS,
    compare,
    effect_size,
    exact_means,
    format_p,
    holm,
    instability,
    montecarlo_means,
    one_sided_p,
)
from tests.conftest import PUBLISHED_LOGS, call_stage, require
from tests.helpers import write_log, write_set

# The paper's Table 3 (SPEC section 7): (model, metric) -> (mean diff, CI low, CI high, p).
PUBLISHED = {
    ("NimeshaNet", "instability"): (-0.01532, -0.03198, -0.00487, 0.0),
    ("NimeshaNet", "test_r2"): (0.03571, 0.01000, 0.08362, 0.0),
    ("NimeshaNet", "train_r2"): (0.05213, 0.04720, 0.05642, 0.0),
    ("Reduced Parameter NimeshaNet", "instability"): (-0.03083, -0.08236, -0.00301, 0.0),
    ("Reduced Parameter NimeshaNet", "test_r2"): (0.01569, -0.01430, 0.03772, 0.13945),
    ("Reduced Parameter NimeshaNet", "train_r2"): (0.03493, 0.03071, 0.03923, 0.0),
    ("LakshyaNet", "instability"): (-0.00002, -0.00007, 0.00002, 0.18470),
    ("LakshyaNet", "test_r2"): (0.02898, 0.02362, 0.03349, 0.0),
    ("LakshyaNet", "train_r2"): (0.04187, 0.03929, 0.04514, 0.0),
    ("Reduced Parameter LakshyaNet", "instability"): (-0.00006, -0.00007, -0.00005, 0.0),
    ("Reduced Parameter LakshyaNet", "test_r2"): (0.02516, 0.02196, 0.02760, 0.0),
    ("Reduced Parameter LakshyaNet", "train_r2"): (0.03327, 0.03199, 0.03452, 0.0),
}


def stats_cfg(make_cfg, logs, out, *extra):
    return make_cfg(f"stats.logs_dir={logs}", f"stats.out_dir={out}", *extra)


# ---------------------------------------------------------------- instability


def test_instability_of_a_cubic_is_zero():
    epochs = np.arange(1, 16, dtype=float)
    curve = 0.1 + 0.05 * epochs - 0.004 * epochs**2 + 0.0001 * epochs**3
    assert instability(epochs, curve) == pytest.approx(0, abs=1e-20)


def test_instability_equals_least_squares_cubic_residuals_when_the_spline_stays_cubic():
    # With default smoothing s = number of points, the spline stays a single cubic (no interior
    # knots) while the cubic's residual sum of squares is below s: it is then the LSQ cubic.
    epochs = np.arange(1, 16, dtype=float)
    wobble = 0.05 * np.sin(1.7 * epochs)
    curve = 0.6 + 0.02 * epochs + wobble
    residuals = curve - np.polyval(np.polyfit(epochs, curve, 3), epochs)
    assert instability(epochs, curve, "mean") == pytest.approx(np.mean(residuals**2), rel=1e-8)
    assert instability(epochs, curve, "sum") == pytest.approx(np.sum(residuals**2), rel=1e-8)
    with pytest.raises(ValueError, match="stats.instability='median'"):
        instability(epochs, curve, "median")


# ---------------------------------------------------------------- bootstrap


def test_exact_means_enumerate_every_resample():
    d = np.array([0.3, -1.0, 2.5, 0.25])
    brute = np.array([np.mean(d[list(idx)]) for idx in itertools.product(range(4), repeat=4)])
    np.testing.assert_allclose(exact_means(d), brute, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="use stats.method=montecarlo"):
        exact_means(np.arange(9.0))


def test_montecarlo_converges_to_exact_enumeration():
    d = np.array([0.02, -0.01, 0.05, 0.03])
    exact = compare(d, "study", "control", method="exact")
    mc = compare(d, "study", "control", method="montecarlo", n_resamples=200_000, seed=1)
    assert exact["n_resamples"] == 256 and mc["n_resamples"] == 200_000
    assert mc["ci_low"] == pytest.approx(exact["ci_low"], abs=2e-3)
    assert mc["ci_high"] == pytest.approx(exact["ci_high"], abs=2e-3)
    assert mc["p_value"] == pytest.approx(exact["p_value"], abs=3e-3)
    # exact p: resamples with mean <= 0, counted by hand
    brute = [np.mean(d[list(i)]) <= 0 for i in itertools.product(range(4), repeat=4)]
    assert exact["p_value"] == pytest.approx(np.mean(brute))


def test_montecarlo_is_seeded():
    d = np.array([1.0, 2.0, -0.5, 0.7, 0.1])
    np.testing.assert_array_equal(montecarlo_means(d, 1000, 3), montecarlo_means(d, 1000, 3))
    assert not np.array_equal(montecarlo_means(d, 1000, 3), montecarlo_means(d, 1000, 4))


def test_resampling_is_paired(tmp_path, make_cfg):
    # Folds differ wildly (R² from -50 to 0.85) but study is control + 0.1 in every fold: a paired
    # bootstrap sees only the constant difference, so the CI has zero width; an unpaired one would
    # span ~+-20. (R² is never above 1: the logs are refused if it is.)
    control = np.array([-50.0, -20.0, 0.3, 0.85, -10.0])
    for fold, c in enumerate(control, start=1):
        for arm, value in (("control", c), ("study", c + 0.1)):
            path = log_path(tmp_path / "logs", "NimeshaNet", arm, fold)
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"epoch": range(1, 7), "train_r2": value, "test_r2": value}).to_csv(path, index=False)
    call_stage(stats_cfg(make_cfg, tmp_path / "logs", tmp_path / "out"), "stats")
    table = pd.read_csv(tmp_path / "out" / "comparison_table.csv").set_index("metric")
    for metric in ("test_r2", "train_r2"):
        row = table.loc[metric]
        assert row.ci_low == pytest.approx(0.1) and row.ci_high == pytest.approx(0.1)
        assert row.conclusion == "study > control" and row.p_value == 0


def test_p_value_side_effect_size_and_formatting():
    means = np.array([-0.2, 0.0, 0.1, 0.3])
    assert one_sided_p(0.05, means) == 0.5  # -0.2 and 0.0 are at or below zero
    assert one_sided_p(-0.05, means) == 0.75
    assert effect_size(np.array([1.0, 2.0, 3.0])) == pytest.approx(2.0)
    assert effect_size(np.array([0.5, 0.5])) == np.inf
    assert format_p(0.0, 20000) == "<0.00005" and format_p(0.13945, 20000) == "0.13945"
    assert format_p(0.0, 3125) == "<0.00032"


def test_holm_step_down():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.001]), [0.5, 0.002])
    np.testing.assert_allclose(holm([0.6, 0.7]), [1.0, 1.0])


# ---------------------------------------------------------------- the stage


def test_published_table3_is_reproduced(tmp_path, make_cfg):
    logs = require(PUBLISHED_LOGS, "published per-fold logs")
    call_stage(stats_cfg(make_cfg, logs, tmp_path), "stats")
    table = pd.read_csv(tmp_path / "comparison_table.csv")
    assert list(table.columns) == TABLE_COLUMNS
    assert [tuple(k) for k in table[["model", "metric"]].to_numpy()] == list(PUBLISHED)
    for row in table.itertuples():
        mean, low, high, p = PUBLISHED[(row.model, row.metric)]
        assert round(row.mean_diff, 5) == pytest.approx(mean, abs=1e-12), row
        assert abs(row.ci_low - low) <= 1e-3 and abs(row.ci_high - high) <= 1e-3, row
        assert abs(row.p_value - p) <= 0.01 or (row.p_value < 1e-3 and p < 1e-3), row
        # default_rng(seed) per comparison reproduces the published draw to the printed digit
        assert (round(row.ci_low, 5), round(row.ci_high, 5), round(row.p_value, 5)) == pytest.approx((low, high, p))
    assert (table.n_units == 5).all() and (table.n_epochs == 15).all()
    assert table.complete.all() and not table.limited.any()
    md = (tmp_path / "comparison_table.md").read_text()
    # The paper's bootstrap p is 0 when all 5 differences share a sign: printed as what it is, with
    # the exact two-sided sign-flip p (its floor, 2/32) and conclusion beside it.
    assert (
        "| NimeshaNet | Instability | -0.01532 | [-0.03198, -0.00487] | all 5 same sign | study < control "
        "| 0.0625 | not significant |"
    ) in md
    assert "<0.0000" not in md and "| 0.00000 |" not in md  # no p below what a test can reach
    assert "ONE-SIDED" in md and "TWO-SIDED" in md and "Unit of inference: the paired (seed, fold) unit" in md
    assert "0.0625 for n = 5" in md
    assert (
        "Evidence: 5 paired (seed, fold) units per comparison, 15 epochs per fold; a complete run has folds 1-5"
    ) in md
    assert "LIMITED" not in md and "INCOMPLETE" not in md
    assert "all 5 same sign & study $<$ control & $0.0625$" in (tmp_path / "comparison_table.tex").read_text()
    assert (table.p_exact_two_sided >= 1 / 16).all() and (table.conclusion_exact == "not significant").all()
    diffs = pd.read_csv(tmp_path / "fold_differences.csv")
    assert len(diffs) == 4 * 3 * 5
    assert len(pd.read_csv(tmp_path / "fold_values.csv")) == 4 * 2 * 3 * 5


def test_published_exact_and_sum_options(tmp_path, make_cfg):
    logs = require(PUBLISHED_LOGS, "published per-fold logs")
    call_stage(stats_cfg(make_cfg, logs, tmp_path / "exact", "stats.method=exact"), "stats")
    exact = pd.read_csv(tmp_path / "exact" / "comparison_table.csv")
    row = exact[(exact.model == "Reduced Parameter NimeshaNet") & (exact.metric == "test_r2")].iloc[0]
    assert row.p_value == pytest.approx(0.14112, abs=1e-5)  # 441 of the 3125 resamples
    assert "all 5 same sign" in (tmp_path / "exact" / "comparison_table.md").read_text()
    call_stage(stats_cfg(make_cfg, logs, tmp_path / "sum", "stats.instability=sum"), "stats")
    summed = pd.read_csv(tmp_path / "sum" / "fold_values.csv")
    mean = pd.read_csv(tmp_path / "exact" / "fold_values.csv")
    inst = summed.metric == "instability"
    np.testing.assert_allclose(summed.value[inst], 15 * mean.value[inst])  # 15 epochs


def test_compare_any_pair_and_all_pairs_with_holm(tmp_path, make_cfg):
    write_set(tmp_path / "logs", models=("NimeshaNet", "Extra"), arms=("none", "control", "study"))
    # Default output ignores the third arm and keeps exactly the 7 columns.
    call_stage(stats_cfg(make_cfg, tmp_path / "logs", tmp_path / "pair"), "stats")
    table = pd.read_csv(tmp_path / "pair" / "comparison_table.csv")
    assert list(table.columns) == TABLE_COLUMNS and len(table) == 2 * 3
    assert set(pd.read_csv(tmp_path / "pair" / "fold_values.csv").arm) == {"control", "study"}
    # Any two arms.
    call_stage(stats_cfg(make_cfg, tmp_path / "logs", tmp_path / "cn", "stats.compare=[control,none]"), "stats")
    row = pd.read_csv(tmp_path / "cn" / "comparison_table.csv").iloc[1]
    assert row.metric == "test_r2" and row.mean_diff == pytest.approx(0.01) and row.conclusion == "control > none"
    # All pairs: later - earlier in arm order, Holm over the 3 pairs of each model and metric.
    call_stage(stats_cfg(make_cfg, tmp_path / "logs", tmp_path / "all", "stats.compare=all"), "stats")
    allp = pd.read_csv(tmp_path / "all" / "all_pairs_table.csv")
    assert not (tmp_path / "all" / "comparison_table.csv").exists()
    assert len(allp) == 2 * 3 * 3
    pairs = list(dict.fromkeys(zip(allp.arm_a, allp.arm_b)))
    assert pairs == [("control", "none"), ("study", "none"), ("study", "control")]
    for _, group in allp.groupby(["model", "metric"]):
        np.testing.assert_allclose(group.p_holm, holm(group.p_exact_two_sided))
    assert "Holm" in (tmp_path / "all" / "all_pairs_table.md").read_text()


def test_multi_seed_units_are_paired(tmp_path, make_cfg):
    write_set(tmp_path / "logs", seeds=(1, 2, 3), folds=[1, 2])
    call_stage(stats_cfg(make_cfg, tmp_path / "logs", tmp_path / "out", "stats.expected_folds=2"), "stats")
    diffs = pd.read_csv(tmp_path / "out" / "fold_differences.csv")
    assert len(diffs[diffs.metric == "test_r2"]) == 6
    assert sorted(zip(diffs.seed[:6], diffs.fold[:6])) == [(s, f) for s in (1, 2, 3) for f in (1, 2)]


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda root: log_path(root, "NimeshaNet", "study", 4).unlink(), "study_set_fold_4_log.csv"),
        (lambda root: write_log(log_path(root, "NimeshaNet", "control", 2), epochs=9), "same epochs"),
        (
            lambda root: write_log(log_path(root, "NimeshaNet", "control", 2), columns=["epoch", "train", "test_r2"]),
            "columns epoch,train,test_r2",
        ),
        (
            lambda root: log_path(root, "NimeshaNet", "study", 1).write_text(
                "epoch,train_r2,test_r2\n1,0.1,0.2\n2,nan,0.3\n3,0.2,0.3\n4,0.2,0.3\n"
            ),
            "NaN",
        ),
        (lambda root: [log_path(root, "NimeshaNet", "study", k).unlink() for k in range(1, 6)], "no logs of arm"),
    ],
)
def test_bad_input_writes_no_output(tmp_path, make_cfg, breakage, message):
    logs = write_set(tmp_path / "logs")
    breakage(logs)
    out = tmp_path / "out"
    with pytest.raises(LogError, match=message):
        call_stage(stats_cfg(make_cfg, logs, out), "stats")
    assert not out.exists() or not any(out.iterdir())


def test_tables_follow_the_logs_and_settings_of_each_run(tmp_path, make_cfg):
    logs = write_set(tmp_path / "logs")
    out = tmp_path / "out"
    call_stage(stats_cfg(make_cfg, logs, out), "stats")
    monte_carlo = (out / "comparison_table.md").read_text()
    call_stage(stats_cfg(make_cfg, logs, out, "stats.method=exact"), "stats")
    assert (out / "comparison_table.md").read_text() != monte_carlo


# ---------------------------------------------------------------- thin or incomplete evidence


def test_one_paired_unit_is_refused(tmp_path, make_cfg):
    with pytest.raises(ValueError, match="at least 2 paired units; got 1"):
        compare(np.array([0.01]), "study", "control")
    logs = write_set(tmp_path / "logs", folds=[1])
    out = tmp_path / "out"
    with pytest.raises(LogError, match=r"NimeshaNet: study - control has 1 paired unit\(s\) \(fold 1\); .* at least 2"):
        call_stage(stats_cfg(make_cfg, logs, out, "stats.expected_folds=1"), "stats")
    # also when incomplete sets are allowed: one unit is never enough
    with pytest.raises(LogError, match="at least 2"):
        call_stage(stats_cfg(make_cfg, logs, out, "stats.allow_incomplete=true"), "stats")
    assert not out.exists() or not any(out.iterdir())


def test_fold_missing_in_both_arms_is_refused_naming_the_logs(tmp_path, make_cfg):
    logs = write_set(tmp_path / "logs", folds=[1, 2, 3, 4])  # fold 5 of 5 (task.data.n_folds) missing
    out = tmp_path / "out"
    with pytest.raises(LogError) as err:
        call_stage(stats_cfg(make_cfg, logs, out), "stats")
    message = str(err.value)
    assert "control_set_fold_5_log.csv" in message and "study_set_fold_5_log.csv" in message
    assert "folds 1-5" in message and "stats.allow_incomplete=true" in message
    assert not out.exists() or not any(out.iterdir())


def test_incomplete_set_when_allowed_is_flagged_in_every_table(tmp_path, make_cfg):
    logs = write_set(tmp_path / "logs", epochs=15)
    log_path(logs, "NimeshaNet", "study", 2).unlink()  # one arm only: fold 2 cannot be paired
    log_path(logs, "NimeshaNet", "control", 5).unlink()
    log_path(logs, "NimeshaNet", "study", 5).unlink()
    out = tmp_path / "out"
    call_stage(stats_cfg(make_cfg, logs, out, "stats.allow_incomplete=true"), "stats")
    table = pd.read_csv(out / "comparison_table.csv")
    assert (table.n_units == 3).all() and (~table.complete).all() and (~table.limited).all()
    assert sorted(pd.read_csv(out / "fold_differences.csv").fold.unique()) == [1, 3, 4]
    for name in ("comparison_table.md", "comparison_table.tex"):
        text = (out / name).read_text()
        assert "INCOMPLETE: 3 expected log(s) missing" in text, name
        assert "study_set_fold_2" in text.replace("\\_", "_"), name  # the .tex escapes the underscores
        assert "3 paired (seed, fold) units per comparison, 15 epochs per fold" in text, name


def test_four_epochs_instability_is_not_estimable_and_the_run_is_flagged_limited(tmp_path, make_cfg):
    # A cubic spline through 4 points interpolates them: the residual is 0 by construction, and a
    # bootstrap of such zeros used to give "study < control, p 0.003" on a difference of -0.00000.
    logs = write_set(tmp_path / "logs", epochs=4)
    out = tmp_path / "out"
    call_stage(stats_cfg(make_cfg, logs, out), "stats")
    table = pd.read_csv(out / "comparison_table.csv").set_index("metric")
    inst = table.loc["instability"]
    assert inst.conclusion == "not estimable (4 epochs; needs 5)"
    assert np.isnan(inst.mean_diff) and np.isnan(inst.ci_low) and np.isnan(inst.ci_high) and inst.p_value == 1
    assert table.loc["test_r2"].conclusion == "study > control"  # the final R² is still compared
    assert (table.n_epochs == 4).all() and table.limited.all() and table.complete.all() and (table.n_units == 5).all()
    values = pd.read_csv(out / "fold_values.csv")
    assert values[values.metric == "instability"].value.isna().all()
    md = (out / "comparison_table.md").read_text()
    assert "| NimeshaNet | Instability | n/a | n/a | n/a | not estimable (4 epochs; needs 5) |" in md
    assert "LIMITED RUN (4 epochs (protocol: 15))" in md and "Instability NOT ESTIMABLE with 4 epochs" in md
    assert "LIMITED RUN" in (out / "comparison_table.tex").read_text()
    # all pairs: the Holm columns carry the same verdict
    call_stage(stats_cfg(make_cfg, logs, tmp_path / "all", "stats.compare=all"), "stats")
    allp = pd.read_csv(tmp_path / "all" / "all_pairs_table.csv").set_index("metric")
    assert allp.loc["instability"].conclusion_holm.startswith("not estimable")
    assert {"n_units", "n_epochs", "limited", "complete"} <= set(allp.columns)


def test_spline_instability_refuses_fewer_than_four_epochs():
    with pytest.raises(ValueError, match="needs at least 4 epochs .*got 3"):
        instability(np.arange(1.0, 4.0), np.array([0.1, 0.2, 0.25]))
    assert instability(np.arange(1.0, 5.0), np.array([0.1, 0.3, 0.2, 0.4])) == pytest.approx(0, abs=1e-20)


def test_train_limits_mark_the_run_limited(tmp_path, make_cfg):
    logs = write_set(tmp_path / "logs", epochs=15)
    call_stage(stats_cfg(make_cfg, logs, tmp_path / "full"), "stats")
    assert not pd.read_csv(tmp_path / "full" / "comparison_table.csv").limited.any()
    assert "LIMITED" not in (tmp_path / "full" / "comparison_table.md").read_text()
    call_stage(stats_cfg(make_cfg, logs, tmp_path / "cfg", "train.limit_train=16"), "stats")
    assert pd.read_csv(tmp_path / "cfg" / "comparison_table.csv").limited.all()
    assert "LIMITED RUN (train.limit_train=16)" in (tmp_path / "cfg" / "comparison_table.md").read_text()
    # the job records beside the logs say so too, when stats run later on their own
    record = tmp_path / "jobs" / "NimeshaNet" / "control_set_fold_1_log.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"epochs": 15, "fingerprint": {"train": {"limit_train": null, "limit_test": 12}}}')
    call_stage(stats_cfg(make_cfg, logs, tmp_path / "record"), "stats")
    assert "LIMITED RUN (train.limit_test=12)" in (tmp_path / "record" / "comparison_table.md").read_text()


def test_expected_seeds_follow_train_seeds_for_this_configs_logs(tmp_path, make_cfg):
    cfg = make_cfg("train.seeds=[1,2,3]", "task.data.n_folds=2")
    write_set(Path(cfg.train.logs_dir), seeds=(1, 2), folds=[1, 2])  # seed 3 never ran
    with pytest.raises(LogError, match=r"control_set_seed_3_fold_1_log\.csv.*seeds 1, 2, 3"):
        call_stage(cfg, "stats")


def test_folds_beyond_the_expected_ones_are_an_error(tmp_path, make_cfg):
    logs = write_set(tmp_path / "logs", folds=range(1, 7))
    with pytest.raises(LogError, match=r"fold_6_log\.csv.*not one of the expected units, folds 1-5.*expected_folds"):
        call_stage(stats_cfg(make_cfg, logs, tmp_path / "out"), "stats")
    call_stage(stats_cfg(make_cfg, logs, tmp_path / "out", "stats.expected_folds=6"), "stats")
    assert (pd.read_csv(tmp_path / "out" / "comparison_table.csv").n_units == 6).all()
