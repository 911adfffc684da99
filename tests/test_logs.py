"""Per-fold log layout: names, discovery, model/arm order and every kind of bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from coordchannels.logs import (
    LogError,
    discover,
    load_logs,
    log_path,
    order_arms,
    order_models,
    parse_log_name,
    read_log,
)
from tests.helpers import write_log, write_set


def test_names_round_trip_including_seed_and_underscored_arm():
    assert parse_log_name(log_path("x", "M", "control", 3).name) == ("control", None, 3)
    assert parse_log_name(log_path("x", "M", "coordconv_norm", 2, seed=7).name) == ("coordconv_norm", 7, 2)
    assert parse_log_name("notes.csv") is None


def test_models_in_table3_order_then_alphabetical(tmp_path):
    models = (
        "Zeta",
        "LakshyaNet",
        "Reduced Parameter NimeshaNet",
        "Alpha",
        "NimeshaNet",
        "Reduced Parameter LakshyaNet",
    )
    write_set(tmp_path, models=models, folds=[1, 2])
    assert list(discover(tmp_path)) == [
        "NimeshaNet",
        "Reduced Parameter NimeshaNet",
        "LakshyaNet",
        "Reduced Parameter LakshyaNet",
        "Alpha",
        "Zeta",
    ]
    assert order_models(["B", "A"]) == ["A", "B"]
    assert order_arms(["study", "zzz", "coordgate", "control", "none"]) == [
        "none",
        "control",
        "study",
        "coordgate",
        "zzz",
    ]


def test_two_d_logs_average_the_coordinates(tmp_path):
    path = log_path(tmp_path, "LakshyaNet", "control", 1)
    write_log(path, dims=2)
    frame = pd.read_csv(path)
    fl = read_log(path)
    assert fl.dims == 2
    np.testing.assert_allclose(fl.train, (frame.train_r2_h + frame.train_r2_k) / 2)
    np.testing.assert_allclose(fl.test, (frame.test_r2_h + frame.test_r2_k) / 2)


def test_multi_seed_units_and_other_arms(tmp_path):
    write_set(tmp_path, arms=("control", "study", "coordgate"), seeds=(1, 2), folds=[1, 2, 3])
    logs = load_logs(tmp_path, ["study", "control"])
    assert list(logs["NimeshaNet"]) == ["control", "study"]  # only the compared arms, baseline first
    assert [fl.unit for fl in logs["NimeshaNet"]["study"]] == [(s, f) for s in (1, 2) for f in (1, 2, 3)]
    assert list(load_logs(tmp_path, "all")["NimeshaNet"]) == ["control", "study", "coordgate"]


# ---------------------------------------------------------------- bad input


def test_missing_fold_file_is_named(tmp_path):
    write_set(tmp_path)
    log_path(tmp_path, "NimeshaNet", "study", 3).unlink()
    with pytest.raises(LogError, match=r"missing per-fold log .*NimeshaNet/study_set_fold_3_log\.csv"):
        load_logs(tmp_path)


def test_fold_gap_in_every_arm_is_a_missing_fold(tmp_path):
    write_set(tmp_path, folds=[1, 2, 4, 5])
    with pytest.raises(LogError, match=r"control_set_fold_3_log\.csv"):
        load_logs(tmp_path)


def test_folds_with_different_epoch_counts(tmp_path):
    write_set(tmp_path, epochs=6)
    write_log(log_path(tmp_path, "NimeshaNet", "study", 2), epochs=5)
    with pytest.raises(LogError, match=r"study_set_fold_2_log\.csv: 5 epochs .* same epochs"):
        load_logs(tmp_path)


def test_missing_column(tmp_path):
    write_set(tmp_path)
    path = log_path(tmp_path, "NimeshaNet", "control", 4)
    pd.read_csv(path).drop(columns="train_r2").to_csv(path, index=False)
    with pytest.raises(LogError, match=r"control_set_fold_4_log\.csv: columns epoch,test_r2 are not"):
        load_logs(tmp_path)


def test_misnamed_column(tmp_path):
    write_set(tmp_path)
    path = log_path(tmp_path, "NimeshaNet", "control", 1)
    write_log(path, columns=["epoch", "train_R2", "test_r2"])
    with pytest.raises(LogError, match=r"control_set_fold_1_log\.csv: columns epoch,train_R2,test_r2"):
        load_logs(tmp_path)


def test_nan_value(tmp_path):
    write_set(tmp_path)
    path = log_path(tmp_path, "NimeshaNet", "study", 5)
    frame = pd.read_csv(path)
    frame.loc[2, "test_r2"] = np.nan
    frame.to_csv(path, index=False)
    with pytest.raises(LogError, match=r"study_set_fold_5_log\.csv: 1 missing, NaN .*'test_r2' at data row 3"):
        load_logs(tmp_path)


def test_empty_folder_and_missing_folder(tmp_path):
    (tmp_path / "NimeshaNet").mkdir()
    with pytest.raises(LogError, match="no per-fold logs found"):
        load_logs(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_logs(tmp_path / "nowhere")


def test_control_without_study(tmp_path):
    write_set(tmp_path, arms=("control",))
    with pytest.raises(LogError, match=r"NimeshaNet: no logs of arm\(s\) study .*arms present: control"):
        load_logs(tmp_path)
    with pytest.raises(LogError, match="only arm 'control'"):
        load_logs(tmp_path, "all")


def test_misnamed_file_and_empty_file_and_short_log(tmp_path):
    write_set(tmp_path)
    bad = tmp_path / "NimeshaNet" / "control_fold_6_log.csv"
    bad.write_text("epoch,train_r2,test_r2\n")
    with pytest.raises(LogError, match="control_fold_6_log.csv: file name does not follow"):
        load_logs(tmp_path)
    bad.unlink()
    log_path(tmp_path, "NimeshaNet", "control", 2).write_text("")
    with pytest.raises(LogError, match="control_set_fold_2_log.csv: not a readable CSV"):
        load_logs(tmp_path)
    write_log(log_path(tmp_path, "NimeshaNet", "control", 2), epochs=3)
    with pytest.raises(LogError, match="3 epoch rows; the instability spline needs at least 4"):
        load_logs(tmp_path)


def test_bad_compare_setting(tmp_path):
    write_set(tmp_path)
    with pytest.raises(ValueError, match="two different arms"):
        load_logs(tmp_path, ["study", "study"])
    with pytest.raises(ValueError, match="expected \\[arm_a, arm_b\\] or 'all'"):
        load_logs(tmp_path, "every")


def test_r2_above_one_is_refused_with_file_and_row(tmp_path):
    write_set(tmp_path)
    path = log_path(tmp_path, "NimeshaNet", "control", 2)
    frame = pd.read_csv(path)
    frame.loc[3, "test_r2"] = 1.2
    frame.to_csv(path, index=False)
    with pytest.raises(
        LogError,
        match=r"control_set_fold_2_log\.csv: 1 R² value\(s\) above 1 .*1\.2 in column "
        r"'test_r2' at data row 4",
    ):
        load_logs(tmp_path)
    # 2-D logs: each coordinate is checked, not only their mean (1.1 and 0.8 average below 1).
    path = log_path(tmp_path / "2d", "LakshyaNet", "study", 1)
    write_log(path, dims=2)
    frame = pd.read_csv(path)
    frame.loc[0, "train_r2_h"] = 1.1
    frame.loc[0, "train_r2_k"] = 0.8
    frame.to_csv(path, index=False)
    with pytest.raises(LogError, match=r"'train_r2_h' at data row 1"):
        read_log(path)
    # exactly 1 (a perfect fit) and any negative value are valid R²
    frame.loc[0, "train_r2_h"] = 1.0
    frame.loc[1, "test_r2_k"] = -3.5
    frame.to_csv(path, index=False)
    assert read_log(path).train[0] == pytest.approx(0.9)
