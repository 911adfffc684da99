"""The SiPaKMeD loader (what the trainer sees) and a tiny end-to-end run through the real trainer.

Inputs are the normalised cache image warped by each variant's map plus the arm's channels;
targets are the centre moved by the same map, which must equal the centre recomputed from the
warped contour (SPEC section 2: "the contour points go through the same map and the centre is
recomputed").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from coordchannels import train
from coordchannels.sipakmed import warp
from coordchannels.sipakmed.cells import nucleus_centre
from coordchannels.sipakmed.folds import FOLDS_CSV
from coordchannels.sipakmed.loader import contours_of, load_task_data, read_cache
from coordchannels.sipakmed.synthetic import make_fake_sipakmed
from tests.conftest import call_stage, train_killed_after_epoch


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return make_fake_sipakmed(tmp_path_factory.mktemp("fake"), 14, seed=11, archives=False, n_invalid=1)


@pytest.fixture
def prepared(fake, make_cfg):
    def factory(*overrides: str):
        cfg = make_cfg(
            "task=sipakmed",
            "task.data.fetch_authors_invalid=false",
            f"paths.sipakmed_mirror={fake.out_dir}",
            *overrides,
        )
        for stage in ("download", "preprocess", "folds"):
            call_stage(cfg, stage)
        return cfg

    return factory


def idx(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def test_inputs_and_targets_have_the_trainer_shapes(prepared):
    cfg = prepared()
    for arm, k in (("control", 2), ("study", 2)):
        data = load_task_data(cfg, cfg.arms[arm], "cpu")
        assert data.n_channels == 3 + k and data.target_names == ("h", "k")
        assert data.target_stats_samples == 10000 and len(data) == 13 * 20
        x, y = data.inputs(idx(0, 5, 259)), data.targets(idx(0, 5, 259))
        assert x.shape == (3, 5, 256, 256) and x.dtype == torch.float32
        assert y.shape == (3, 2) and y.dtype == torch.float32


def test_coordinate_channels_of_both_arms(prepared):
    cfg = prepared()
    control = load_task_data(cfg, cfg.arms.control, "cpu").inputs(idx(3, 44))
    study = load_task_data(cfg, cfg.arms.study, "cpu").inputs(idx(3, 44))
    torch.testing.assert_close(control[:, :3], study[:, :3])
    cols = torch.arange(256.0).expand(256, 256)
    torch.testing.assert_close(control[:, 3], cols.expand(2, 256, 256))  # x = column index
    torch.testing.assert_close(control[:, 4], cols.T.expand(2, 256, 256))  # y = row index
    m = study[:, :3].mean(dim=1)
    torch.testing.assert_close(study[:, 3], cols * m)
    torch.testing.assert_close(study[:, 4], cols.T * m)


def test_identity_variant_gives_the_normalised_padded_image(prepared):
    cfg = prepared()
    data = load_task_data(cfg, cfg.arms.control, "cpu")
    cache = read_cache(Path(cfg.task.processed_dir))
    data.params[20] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)  # image 1, variant 0
    x = data.inputs(idx(20))[0, :3]
    top, left, h, w = cache["box"][1]
    inside = x[:, top : top + h, left : left + w]
    assert abs(float(inside.mean())) < 0.01 and float(inside.std()) == pytest.approx(1.0, abs=0.02)
    outside = x.clone()
    outside[:, top : top + h, left : left + w] = 0
    assert not outside.any()  # zero padding after normalisation
    torch.testing.assert_close(
        data.targets(idx(20))[0], torch.tensor(cache["centre_vertex_mean"][1], dtype=torch.float32)
    )


@pytest.mark.parametrize("centre", ["vertex_mean", "polygon_centroid"])
def test_target_is_the_centre_of_the_warped_contour(prepared, centre):
    cfg = prepared(f"task.data.centre={centre}")
    data = load_task_data(cfg, cfg.arms.study, "cpu")
    cache = read_cache(Path(cfg.task.processed_dir))
    samples = idx(*range(0, len(data), 7))
    targets = data.targets(samples).double()
    matrices = data.matrices(samples)
    for j, s in enumerate(samples.tolist()):
        contour = torch.from_numpy(contours_of(cache, s // 20))[None]
        moved = warp.warp_points(contour, matrices[j : j + 1])[0].numpy()
        np.testing.assert_allclose(targets[j].numpy(), nucleus_centre(moved, centre), atol=1e-4)


def test_target_follows_the_nucleus_in_the_warped_image(prepared):
    """The darkest blob of a warped image (the nucleus) sits where the target says."""
    cfg = prepared()
    data = load_task_data(cfg, cfg.arms.control, "cpu")
    samples = idx(*range(1, len(data), 23))
    x, y = data.inputs(samples)[:, :3].mean(dim=1), data.targets(samples)
    for image, (h, k) in zip(x, y.tolist()):
        dark = image < image[image != 0].quantile(0.03)  # darkest pixels of the cell
        rows, cols = torch.nonzero(dark, as_tuple=True)
        assert abs(cols.float().median() - h) < 6 and abs(rows.float().median() - k) < 6


def test_split_expands_folds_to_variants_in_the_scripts_order(prepared):
    cfg = prepared()
    data = load_task_data(cfg, cfg.arms.control, "cpu")
    folds = pd.read_csv(Path(cfg.task.folds_dir) / FOLDS_CSV)
    seen = []
    for fold in range(1, 6):
        train_idx, test_idx = data.split(fold)
        assert not set(train_idx) & set(test_idx) and len(train_idx) + len(test_idx) == len(data)
        test_images = np.flatnonzero(folds["fold_cell"].to_numpy() == fold)
        np.testing.assert_array_equal(test_idx, (test_images[:, None] * 20 + np.arange(20)).ravel())
        first_other = min(f for f in range(1, 6) if f != fold)
        assert folds["fold_cell"][train_idx[0] // 20] == first_other  # training folds in ascending order
        seen.extend(test_idx)
    assert sorted(seen) == list(range(len(data)))
    with pytest.raises(ValueError, match="fold 6"):
        data.split(6)


def test_slide_grouping_keeps_slides_together(prepared):
    cfg = prepared("task.data.group_by=slide")
    data = load_task_data(cfg, cfg.arms.control, "cpu")
    folds = pd.read_csv(Path(cfg.task.folds_dir) / FOLDS_CSV)
    _, test_idx = data.split(2)
    slides = set(folds["slide"][np.unique(test_idx // 20)])
    assert set(folds.loc[folds["slide"].isin(slides), "fold_slide"]) == {2}


def test_a_stale_cache_is_a_clear_error(prepared, make_cfg):
    cfg = prepared()
    stale = make_cfg("task=sipakmed", "task.data.n_variants=5")
    with pytest.raises(ValueError, match="rerun"):
        load_task_data(stale, stale.arms.control, "cpu")
    empty = make_cfg("task=sipakmed", "paths.processed_dir=${paths.data_dir}/nothing")
    with pytest.raises(FileNotFoundError, match="preprocess"):
        load_task_data(empty, empty.arms.control, "cpu")
    assert cfg.task.data.n_variants == 20


def test_loader_is_deterministic(prepared):
    cfg = prepared()
    a = load_task_data(cfg, cfg.arms.study, "cpu").inputs(idx(7, 130))
    b = load_task_data(cfg, cfg.arms.study, "cpu").inputs(idx(7, 130))
    assert torch.equal(a, b)


# ------------------------------------------------------------------ end to end through the trainer


def test_tiny_run_through_the_real_trainer_resumes_after_a_kill(prepared, monkeypatch):
    """Reduced LakshyaNet on 256 x 256, 8 training / 8 test variants, 2 epochs; killed after
    epoch 1, resumed, and equal to an uninterrupted run."""
    small = (
        "train.models=[lakshyanet_reduced]",
        "train.arms=[study]",
        "train.folds=[2]",
        "train.epochs=2",
        "train.limit_train=8",
        "train.limit_test=8",
        "train.batch_size=4",
        "train.eval_batch_size=8",
    )
    reference = prepared(*small, "train.run_name=ref")
    train.train_stage(reference)
    job = train.Job("lakshyanet_reduced", "study", 42, 2)
    ref_log = pd.read_csv(train.job_log_path(reference, job))
    assert list(ref_log.columns) == ["epoch", "train_r2_h", "train_r2_k", "test_r2_h", "test_r2_k"]
    assert ref_log["epoch"].tolist() == [1, 2] and np.isfinite(ref_log.to_numpy()).all()

    cfg = prepared(*small, "train.run_name=killed")
    train_killed_after_epoch(cfg, monkeypatch)
    assert not train.job_log_path(cfg, job).exists()
    train.train_stage(cfg)
    pd.testing.assert_frame_equal(pd.read_csv(train.job_log_path(cfg, job)), ref_log, check_exact=True)
