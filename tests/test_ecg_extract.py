"""Episode extraction (SPEC section 1) on synthetic WFDB records, bad input, and the real VFDB."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from coordchannels.ecg.records import (
    EPISODES_CSV,
    WINDOWS_NPY,
    clean_label,
    episode_windows,
    extract_episodes,
    is_danger,
)
from tests.conftest import VFDB_DIR, call_stage, require
from tests.ecg_fixtures import (
    EXPECTED,
    RECORDS,
    fixture_cfg,
    physical_window,
    set_header_length,
    truncate_dat,
    write_fixture_records,
)


@pytest.fixture
def raw(tmp_path):
    folder = tmp_path / "raw"
    write_fixture_records(folder)
    return folder


def run_extract(tmp_path, raw, *overrides):
    cfg = fixture_cfg(tmp_path, raw, *overrides)
    call_stage(cfg, "extract")
    out = tmp_path / "data" / "processed" / "ecg"
    return cfg, pd.read_csv(out / EPISODES_CSV, dtype={"record": str}), np.load(out / WINDOWS_NPY)


@pytest.mark.parametrize("mode", ["substring", "exact"])
def test_episodes_are_the_ones_built_into_the_records(tmp_path, raw, mode):
    _, episodes, windows = run_extract(tmp_path, raw, f"task.data.label_match={mode}")
    got = list(
        episodes[["record", "episode_index", "label", "onset_sample", "window_start", "relative_time_s"]].itertuples(
            index=False, name=None
        )
    )
    assert got == EXPECTED[mode]
    assert list(episodes["episode"]) == [f"{r}_episode{i}" for r, i, *_ in EXPECTED[mode]]
    assert windows.dtype == np.float32 and windows.shape == (len(EXPECTED[mode]), 2, 5000)
    for window, (record, _, _, onset, start, _) in zip(windows, EXPECTED[mode]):
        # an early onset's window (start clipped to 0) ends 10 s after the onset, not 20 s after 0
        end = min(onset + 2500 if start == 0 else start + 5000, RECORDS[record][0])
        np.testing.assert_array_equal(window, physical_window(start, end).astype(np.float32))


def test_short_windows_are_zero_padded_at_the_end(tmp_path, raw):
    _, episodes, windows = run_extract(tmp_path, raw)
    first = episodes.index[episodes["episode"] == "900_episode0"][0]  # onset at 4 s: 14 s of signal
    assert np.all(windows[first, :, 3500:] == 0) and np.count_nonzero(windows[first, :, :3500]) > 6000
    row = episodes.index[episodes["episode"] == "900_episode4"][0]
    assert episodes.loc[row, "window_start"] == 11500  # record ends at 15000: 3500 real samples
    assert np.all(windows[row, :, 3500:] == 0)
    assert np.count_nonzero(windows[row, :, :3500]) > 6000


def test_svta_is_kept_by_substring_and_dropped_by_exact_matching(tmp_path, raw):
    _, sub, _ = run_extract(tmp_path / "a", raw, "task.data.label_match=substring")
    _, exact, _ = run_extract(tmp_path / "b", raw, "task.data.label_match=exact")
    onsets = lambda df: set(zip(df["record"], df["onset_sample"]))  # noqa: E731
    assert onsets(sub) - onsets(exact) == {("900", 11000), ("901", 20000)}
    assert set(sub.loc[sub["label"] == "SVTA", "onset_sample"]) == {11000, 20000}
    # Without the SVTA onset, 901's VT is no longer "close": a window centred on it.
    assert exact.loc[exact["onset_sample"] == 21000, "relative_time_s"].item() == 10.0


def test_label_rules():
    labels = ["VF", "VFIB", "VFL", "VT", "ASYS", "HGEA"]
    assert clean_label("(VFL\x00") == "VFL"
    assert is_danger("(SVTA\x00", labels, "substring") and not is_danger("(SVTA\x00", labels, "exact")
    assert is_danger("(VFIB\x00", labels, "exact") and not is_danger("(NOISE\x00", labels, "substring")
    assert not is_danger("", labels, "substring")
    with pytest.raises(ValueError, match="label_match"):
        is_danger("(VT\x00", labels, "fuzzy")


def test_window_rules_follow_the_spec():
    # onset at 100 (start clipped to 0), a close one 9.996 s later, then one exactly 10 s later
    onsets = np.array([100, 100 + 2499, 100 + 2499 + 2500])
    assert episode_windows(onsets, 100000, 2500, 2500) == [
        (0, 2600, 100),
        (100, 5100, 2499),
        (100 + 2499 + 2500 - 2500, 100 + 2499 + 5000, 2500),
    ]
    assert episode_windows(np.array([99000]), 100000, 2500, 2500) == [(96500, 100000, 2500)]


def _expect_failure(tmp_path, raw, exc, pattern, *overrides):
    with pytest.raises(exc, match=pattern):
        call_stage(fixture_cfg(tmp_path, raw, *overrides), "extract")
    out = tmp_path / "data" / "processed" / "ecg"
    assert not (out / EPISODES_CSV).exists() and not (out / WINDOWS_NPY).exists()


def test_truncated_dat_is_a_clear_error(tmp_path, raw):
    truncate_dat(raw, "901")
    _expect_failure(tmp_path, raw, ValueError, r"901\.dat has 119700 bytes.*120000 bytes \(truncated\?\)")


def test_header_not_matching_its_dat_is_a_clear_error(tmp_path, raw):
    set_header_length(raw, "900", 12000)  # wfdb alone would silently read the first 12000 samples
    _expect_failure(tmp_path, raw, ValueError, r"900\.dat has 45000 bytes.*900\.hea announces 12000 samples")


def test_missing_annotations_are_a_clear_error(tmp_path, raw):
    (raw / "900.atr").unlink()
    _expect_failure(tmp_path, raw, FileNotFoundError, r"900\.atr not found")


def test_missing_signal_file_is_a_clear_error(tmp_path, raw):
    (raw / "901.dat").unlink()
    _expect_failure(tmp_path, raw, FileNotFoundError, r"901\.dat not found")


def test_unknown_record_is_a_clear_error(tmp_path, raw):
    _expect_failure(
        tmp_path, raw, FileNotFoundError, r"record '999'.*999\.hea not found", "task.data.records=[900,999]"
    )


def test_inconsistent_window_config_is_a_clear_error(tmp_path, raw):
    _expect_failure(tmp_path, raw, ValueError, "window_s", "task.data.window_s=30")


@pytest.fixture(scope="module")
def vfdb_episodes():
    from tests.conftest import compose_config

    require(VFDB_DIR, "the verified VFDB copy")
    out = {}
    for mode in ("substring", "exact"):
        cfg = compose_config(["task=ecg", f"task.data.raw_dir={VFDB_DIR}", f"task.data.label_match={mode}"])
        out[mode] = extract_episodes(cfg.task.data)
    return out


def test_real_vfdb_episode_counts(vfdb_episodes):
    assert len(vfdb_episodes["substring"][0]) == 242
    assert len(vfdb_episodes["exact"][0]) == 236
    windows = vfdb_episodes["substring"][1]
    assert windows.shape == (242, 2, 5000) and np.isfinite(windows).all()


def test_real_vfdb_modes_differ_by_six_svta_episodes(vfdb_episodes):
    sub, exact = vfdb_episodes["substring"][0], vfdb_episodes["exact"][0]
    key = lambda df: set(zip(df["record"], df["onset_sample"]))  # noqa: E731
    extra = sub[sub[["record", "onset_sample"]].apply(tuple, axis=1).isin(key(sub) - key(exact))]
    assert len(extra) == 6
    assert set(extra["label"]) == {"SVTA"} and set(extra["record"]) == {"426", "607", "611"}
    assert key(exact) <= key(sub)
