"""Model-input features (median filter + stride, extra channels) and the ECG task loader."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from scipy import ndimage
from scipy.signal import medfilt

from coordchannels.channels import KINDS, N_EXTRA
from coordchannels.ecg.augment import AUGMENTED_NPY
from coordchannels.ecg.features import LEADS_NPY, extra_npy, median_stride
from coordchannels.ecg.loader import load_task_data
from tests.conftest import call_stage
from tests.ecg_fixtures import fixture_cfg, write_fixture_records


def reference(channel: np.ndarray) -> np.ndarray:
    """What the authors' trainer did per channel: scipy.signal.medfilt(x, 11)[::10]."""
    return medfilt(channel.astype(np.float32), 11)[::10]


def test_median_stride_matches_medfilt_per_channel():
    x = np.random.default_rng(0).normal(size=(4, 3, 5000)).astype(np.float32)
    got = median_stride(x, 11, 10)
    assert got.shape == (4, 3, 500) and got.dtype == np.float32
    for i in range(4):
        for c in range(3):
            np.testing.assert_array_equal(got[i, c], reference(x[i, c]))


@pytest.mark.parametrize("length,width,stride", [(101, 5, 3), (37, 11, 10), (9, 11, 1)])
def test_median_stride_other_sizes(length, width, stride):
    x = np.random.default_rng(1).normal(size=(2, length))
    want = np.stack([medfilt(row, width)[::stride] for row in x])
    np.testing.assert_array_equal(median_stride(x, width, stride), want)


def test_edges_are_zero_padded_like_medfilt_not_reflected():
    x = np.arange(1.0, 51.0)
    # first window: 5 padded zeros and 1..6 -> median 1; reflected (5, 4, 3, 2, 1, 1..6) -> 3
    assert median_stride(x, 11, 1)[0] == medfilt(x, 11)[0] == 1.0
    assert ndimage.median_filter(x, 11)[0] == 3.0
    # last window: 45..50 and 5 zeros -> 45
    assert median_stride(x, 11, 1)[-1] == 45.0
    np.testing.assert_array_equal(median_stride(x, 11, 1)[5:-5], x[5:-5])


def test_even_width_is_rejected():
    with pytest.raises(ValueError, match="odd"):
        median_stride(np.zeros(10), 4, 1)


class Run(NamedTuple):
    cfg: object
    out: Path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    raw = root / "raw"
    write_fixture_records(raw)
    cfg = fixture_cfg(root, raw, "task.data.n_variants=10")
    for stage in ("extract", "augment", "features", "folds"):
        call_stage(cfg, stage)
    return Run(cfg, root / "data" / "processed" / "ecg")


def test_feature_files_and_shapes(run):
    n = len(np.load(run.out / AUGMENTED_NPY, mmap_mode="r"))
    assert n == 9 * 10
    leads = np.load(run.out / LEADS_NPY)
    assert leads.shape == (n, 2, 500) and leads.dtype == np.float32
    for kind in KINDS:
        path = run.out / extra_npy(kind)
        k = N_EXTRA["1d"][kind]
        assert path.exists() == (k > 0), kind
        if k:
            extra = np.load(path)
            assert extra.shape == (n, k, 500) and extra.dtype == np.float32


@pytest.mark.parametrize("sample", [0, 37, 89])
def test_features_equal_a_direct_per_sample_computation(run, sample):
    x = np.load(run.out / AUGMENTED_NPY, mmap_mode="r")[sample].astype(np.float64)
    t = np.linspace(0, 20, 5000)
    expected = {
        "coords": t,  # control: t = linspace(0, 20, L)
        "intensity_weighted_coords": t * x.mean(axis=0),  # study: t * mean(lead 1, lead 2)
        "coords_norm": np.linspace(-1, 1, 5000),
        "intensity": x.mean(axis=0),
    }
    leads = np.load(run.out / LEADS_NPY)[sample]
    for c in range(2):
        np.testing.assert_array_equal(leads[c], reference(x[c]))
    for kind, channel in expected.items():
        got = np.load(run.out / extra_npy(kind))[sample, 0]
        np.testing.assert_allclose(got, reference(channel), rtol=1e-6, atol=1e-6, err_msg=kind)


def test_control_channel_values(run):
    coords = np.load(run.out / extra_npy("coords"))
    assert np.all(coords == coords[0])  # the same for every sample
    assert coords[0, 0, 0] == 0.0  # zero padding at the left edge: median of [0]*5 + t[0..5]
    np.testing.assert_allclose(coords[0, 0, 1:], np.linspace(0, 20, 5000)[10::10], rtol=1e-6)


# ---- loader --------------------------------------------------------------------------------


@pytest.mark.parametrize("arm,channels", [("control", 3), ("study", 3)])
def test_loader_shapes_targets_and_channels(run, arm, channels):
    data = load_task_data(run.cfg, run.cfg.arms[arm], torch.device("cpu"))
    table = pd.read_csv(run.out / "augmented.csv")
    assert data.n_channels == channels and data.x.shape == (90, channels, 500)
    assert data.x.dtype == torch.float32 and data.target_names == ("",)
    assert data.target_stats_samples is None
    idx = torch.tensor([0, 5, 89])
    np.testing.assert_allclose(data.targets(idx).numpy()[:, 0], table["target_s"].to_numpy()[[0, 5, 89]], rtol=1e-6)
    kind = run.cfg.arms[arm].channels
    np.testing.assert_array_equal(data.inputs(idx)[:, 2].numpy(), np.load(run.out / extra_npy(kind))[[0, 5, 89], 0])
    np.testing.assert_array_equal(data.inputs(idx)[:, :2].numpy(), np.load(run.out / LEADS_NPY)[[0, 5, 89]])


def test_loader_without_extra_channels(run):
    data = load_task_data(run.cfg, OmegaConf.create({"name": "plain", "channels": "none"}), "cpu")
    assert data.x.shape == (90, 2, 500) and data.n_channels == 2


@pytest.mark.parametrize("group_by", ["episode", "record"])
def test_loader_splits_follow_the_folds_file(run, group_by):
    cfg = run.cfg.copy()
    with open_dict(cfg):
        cfg.task.data.group_by = group_by
    data = load_task_data(cfg, cfg.arms.control, "cpu")
    table = pd.read_csv(run.out / "augmented.csv", dtype={"record": str})
    folds = pd.read_csv(Path(run.cfg.task.folds_dir) / "folds.csv", dtype={"record": str}).set_index("episode")[
        f"fold_{group_by}"
    ]
    seen = []
    for fold in (1, 2):
        train, test = data.split(fold)
        assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
        assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 90
        assert set(table["episode"].iloc[test].map(folds)) == {fold}
        assert not set(table["episode"].iloc[test]) & set(table["episode"].iloc[train])
        if group_by == "record":
            assert not set(table["record"].iloc[test]) & set(table["record"].iloc[train])
        seen.append(test)
    assert sorted(np.concatenate(seen).tolist()) == list(range(90))
    with pytest.raises(ValueError, match="fold 3 does not exist"):
        data.split(3)


def test_loader_without_processed_data_is_a_clear_error(tmp_path):
    cfg = fixture_cfg(tmp_path, tmp_path / "raw")
    with pytest.raises(
        FileNotFoundError, match=r"augmented\.csv not found: run the augment stage first \(`make data TASK=ecg`\)"
    ):
        load_task_data(cfg, cfg.arms.study, "cpu")
