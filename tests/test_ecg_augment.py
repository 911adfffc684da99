"""Augmentation (SPEC section 1): each perturbation on its own, their composition, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
from scipy import signal as sps

from coordchannels.ecg.augment import (
    AUGMENTED_CSV,
    AUGMENTED_NPY,
    FILTER_TYPES,
    AugmentSettings,
    apply_dropout,
    augment_episode,
    butter_coefficients,
    draw_parameters,
    episode_rng,
    shift_windows,
)
from coordchannels.ecg.records import EPISODES_CSV
from tests.conftest import call_stage
from tests.ecg_fixtures import fixture_cfg, write_fixture_records

FS, L = 250.0, 5000
AUG = AugmentSettings()


def processed(root):
    return root / "data" / "processed" / "ecg"


def run_augment(root, raw, *overrides):
    cfg = fixture_cfg(root, raw, *overrides)
    call_stage(cfg, "extract")
    call_stage(cfg, "augment")
    out = processed(root)
    return (
        pd.read_csv(out / EPISODES_CSV, dtype={"record": str}),
        pd.read_csv(out / AUGMENTED_CSV, dtype={"record": str}),
        np.load(out / AUGMENTED_NPY, mmap_mode="r"),
    )


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw")
    write_fixture_records(folder)
    return folder


class Augmented(NamedTuple):
    """One stage run on the fixture records: its outputs and its root folder."""

    episodes: pd.DataFrame
    table: pd.DataFrame
    signals: np.ndarray
    root: Path


@pytest.fixture(scope="module")
def augmented(tmp_path_factory, raw):
    root = tmp_path_factory.mktemp("run")
    return Augmented(*run_augment(root, raw), root)


# ---- each perturbation on its own ----------------------------------------------------------


def test_shift_moves_the_signal_and_fills_with_zeros():
    window = np.arange(1, 2 * 20 + 1, dtype=float).reshape(2, 20)
    out = shift_windows(window, np.array([3, -4, 0]))
    np.testing.assert_array_equal(out[0, :, 3:], window[:, :-3])
    assert np.all(out[0, :, :3] == 0)
    np.testing.assert_array_equal(out[1, :, :-4], window[:, 4:])
    assert np.all(out[1, :, -4:] == 0)
    np.testing.assert_array_equal(out[2], window)


@pytest.mark.parametrize("changepoint", [0, 1000, 2500, 4999])
def test_shift_moves_the_target_by_the_truncated_sample_count_and_clips(changepoint):
    p = draw_parameters(np.random.default_rng(0), 4000, L, changepoint, FS, AUG)
    assert np.all(np.abs(p["shift_s"]) <= 5.0)
    expected = np.clip(changepoint + np.trunc(p["shift_s"] * FS).astype(int), 0, L - 1)
    np.testing.assert_array_equal(p["target"], expected)
    # int() truncates towards zero: a shift of -0.003 s (-0.75 samples) is no shift at all
    assert np.all(p["shift"][(p["shift_s"] > -1 / FS) & (p["shift_s"] < 1 / FS)] == 0)
    if changepoint in (0, 1000):
        assert np.any(p["target"] == 0)
    if changepoint == 4999:
        assert np.any(p["target"] == L - 1)


def test_dropout_zeroes_its_patch_only():
    x = np.ones((3, 2, 100))
    apply_dropout(x, np.array([10, 50, 0]), np.array([5, 0, 100]))
    assert np.all(x[0, :, 10:15] == 0) and x[0].sum() == 2 * 95
    assert np.all(x[1] == 1)  # length 0 = skipped
    assert np.all(x[2] == 0)


@pytest.mark.parametrize("changepoint", [0, 300, 2500, 4999])
def test_dropout_never_covers_the_changepoint(changepoint):
    p = draw_parameters(np.random.default_rng(1), 4000, L, changepoint, FS, AUG)
    used = p["dropout_len"] > 0
    assert np.all((p["dropout_len"][used] >= 250) & (p["dropout_len"][used] < 500))
    assert np.all((p["dropout_start"] >= 0) & (p["dropout_start"] + p["dropout_len"] <= L))
    inside = (p["target"] >= p["dropout_start"]) & (p["target"] < p["dropout_start"] + p["dropout_len"])
    assert not inside.any()
    assert (~used).any() and used.any()  # some patches hit the changepoint and were skipped


def test_filter_types_and_cutoffs_are_in_range():
    p = draw_parameters(np.random.default_rng(2), 3000, L, 2500, FS, AUG)
    kinds = np.asarray(FILTER_TYPES)[p["filter_type"]]
    assert set(kinds) == {"low", "high", "band"}
    counts = np.array([(kinds == k).sum() for k in FILTER_TYPES])
    assert np.all(np.abs(counts - 1000) < 150)  # chosen uniformly
    high_cut, low_cut = p["f_low"], p["f_high"]
    assert np.isnan(high_cut[kinds == "low"]).all() and np.isnan(low_cut[kinds == "high"]).all()
    assert np.all((high_cut[kinds != "low"] >= 0.5) & (high_cut[kinds != "low"] <= 2.0))
    assert np.all((low_cut[kinds != "high"] >= 30) & (low_cut[kinds != "high"] <= 50))
    for key, (lo, hi) in [
        ("noise_frac", (0.01, 0.05)),
        ("wander_frac", (0.01, 0.05)),
        ("wander_hz", (0.1, 0.5)),
        ("scale", (0.8, 1.2)),
    ]:
        assert np.all((p[key] >= lo) & (p[key] <= hi)), key


@pytest.mark.parametrize("kind", FILTER_TYPES)
def test_butterworth_filters_have_their_cutoffs(kind):
    b, a = butter_coefficients(kind, 1.0, 40.0, FS, 3)
    assert len(a) == (7 if kind == "band" else 4)  # order 3 (band-pass: 2 x 3)
    w, h = sps.freqz(b, a, worN=[0.1, 1.0, 10.0, 40.0, 100.0], fs=FS)
    gain = np.abs(h)
    at = dict(zip(w.round(1), gain))
    if kind in ("high", "band"):
        assert at[1.0] == pytest.approx(2**-0.5, rel=1e-3) and at[0.1] < 0.01
    if kind in ("low", "band"):
        assert at[40.0] == pytest.approx(2**-0.5, rel=1e-3) and at[100.0] < 0.1
    assert at[10.0] == pytest.approx(1.0, abs=0.01)


# ---- the composition ---------------------------------------------------------------------


def reference_augment(window, changepoint, seed_name, n):
    """The SPEC's steps written out one variant at a time, in the scripts' style (samples x leads,
    cut-offs normalised by Nyquist), fed with the same random numbers."""
    rng = episode_rng(42, seed_name)
    p = draw_parameters(rng, n, L, changepoint, FS, AUG)
    noise = rng.standard_normal((n, 2, L))
    out = []
    for v in range(n):
        x = window.T.astype(float).copy()
        k = int(p["shift_s"][v] * FS)
        if k > 0:
            x = np.concatenate([np.zeros((k, 2)), x[:-k]])
        elif k < 0:
            x = np.concatenate([x[-k:], np.zeros((-k, 2))])
        s, m = p["dropout_start"][v], p["dropout_len"][v]
        x[s : s + m] = 0
        amp = np.max(np.abs(x))
        x += noise[v].T * p["noise_frac"][v] * amp
        x += p["wander_frac"][v] * amp * np.sin(2 * np.pi * p["wander_hz"][v] * np.arange(L) / FS)[:, None]
        kind, nyq = FILTER_TYPES[p["filter_type"][v]], FS / 2
        if kind == "low":
            b, a = sps.butter(3, p["f_high"][v] / nyq, btype="low")
        elif kind == "high":
            b, a = sps.butter(3, p["f_low"][v] / nyq, btype="high")
        else:
            b, a = sps.butter(3, [p["f_low"][v] / nyq, p["f_high"][v] / nyq], btype="band")
        x = sps.filtfilt(b, a, x, axis=0) * p["scale"][v]
        out.append(x.T)
    return np.stack(out), p


def test_augment_episode_composes_the_steps_in_order():
    window = np.random.default_rng(3).normal(size=(2, L))
    got, p = augment_episode(window, 1200, FS, episode_rng(42, "e"), AugmentSettings(n_variants=12))
    want, p_ref = reference_augment(window, 1200, "e", 12)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(p["target"], p_ref["target"])
    np.testing.assert_allclose(p["noise_std"] / p["amp"], p["noise_frac"])


def test_stage_table_and_signals(augmented):
    episodes, table, signals, _ = augmented
    n = 100
    assert signals.dtype == np.float32 and signals.shape == (len(episodes) * n, 2, 5000)
    assert list(table["sample"]) == list(range(len(table)))
    assert list(table["variant"]) == list(range(n)) * len(episodes)
    assert list(table["episode"]) == [e for e in episodes["episode"] for _ in range(n)]
    expected_cols = {
        "sample",
        "episode",
        "record",
        "variant",
        "target_s",
        "shift_s",
        "dropout_start",
        "dropout_len",
        "noise_std",
        "wander_amp",
        "wander_hz",
        "filter_type",
        "f_low",
        "f_high",
        "scale",
    }
    assert expected_cols <= set(table.columns)
    cp = np.repeat(episodes["changepoint"].to_numpy(), n)
    shifted = np.clip(cp + np.trunc(table["shift_s"] * 250).astype(int), 0, 4999)
    np.testing.assert_allclose(table["target_s"], shifted / 250)
    assert table["target_s"].between(0, 20).all()
    # the logged noise std is its fraction of max|x|, the fraction in range
    frac = table["noise_std"] / table["amp"]
    assert frac.between(0.01, 0.05).all() and table["wander_amp"].le(0.05 * table["amp"]).all()


def test_stage_signals_equal_the_episode_function(augmented):
    """The stored float32 variants are augment_episode's, seeded by the episode's name."""
    episodes, _, signals, root = augmented
    windows = np.load(processed(root) / "windows.npy")
    row = int(episodes.index[episodes["episode"] == "901_episode1"][0])
    want, _ = augment_episode(
        windows[row], int(episodes.loc[row, "changepoint"]), 250.0, episode_rng(42, "901_episode1"), AUG
    )
    np.testing.assert_array_equal(signals[row * 100 : (row + 1) * 100], want.astype(np.float32))


# ---- determinism ---------------------------------------------------------------------------


def digest(root):
    out = processed(root)
    return tuple(hashlib.sha256((out / name).read_bytes()).hexdigest() for name in (AUGMENTED_NPY, AUGMENTED_CSV))


def test_same_seed_same_bytes_other_seed_other_numbers(tmp_path, raw):
    run_augment(tmp_path / "a", raw, "task.data.n_variants=5")
    run_augment(tmp_path / "b", raw, "task.data.n_variants=5")
    run_augment(tmp_path / "c", raw, "task.data.n_variants=5", "seed=7")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    a, c = digest(tmp_path / "a"), digest(tmp_path / "c")
    assert a[0] != c[0] and a[1] != c[1]


def test_an_episode_does_not_depend_on_the_others(tmp_path, raw, augmented):
    """Variants are seeded per episode: augmenting record 901 alone gives the same numbers."""
    episodes, table, signals, _ = augmented
    _, alone_table, alone = run_augment(tmp_path, raw, "task.data.records=[901]")
    first = int(episodes.index[episodes["record"] == "901"][0]) * 100
    np.testing.assert_array_equal(alone, signals[first : first + len(alone)])
    cols = ["episode", "target_s", "shift_s", "dropout_start", "scale"]
    pd.testing.assert_frame_equal(
        alone_table[cols], table[cols].iloc[first : first + len(alone)].reset_index(drop=True)
    )


def test_augment_needs_the_extract_outputs(tmp_path, raw):
    with pytest.raises(FileNotFoundError, match=r"episodes\.csv not found: run the extract stage"):
        call_stage(fixture_cfg(tmp_path, raw), "augment")
