"""The ECG pipeline end to end on tiny synthetic records: every stage from download (a local
mirror, checksums registered for the test), every arm, through the real config, trainer and
statistics; a rerun that redoes nothing; training that refuses data made with other settings."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from coordchannels.pipeline import run_stages
from coordchannels.stages import StageError
from tests.ecg_fixtures import fixture_cfg, registered, write_fixture_records

ARMS = ["none", "control", "study", "intensity", "coordconv_norm", "coordgate"]
STAGES = "[download,extract,augment,features,folds,train,stats,manifest]"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("ecg_pipeline")
    mirror = root / "mirror"
    write_fixture_records(mirror)
    # the smoke run's settings (conf/debug/smoke.yaml), shrunk further for the tiny fixture records
    cfg = fixture_cfg(
        root,
        root / "raw",
        "debug=smoke",
        f"stages={STAGES}",
        f"task.data.mirror={mirror}",
        f"train.arms=[{','.join(ARMS)}]",
        "train.epochs=4",
        "train.limit_train=24",
        "train.limit_test=12",
        "train.device=cpu",
        "train.num_threads=1",
        "stats.compare=all",
        "stats.n_resamples=200",
    )
    with registered(mirror):
        run_stages(cfg)
    return cfg


def test_every_arm_of_both_models_leaves_a_complete_log(pipeline):
    logs = Path(pipeline.train.logs_dir)
    for model in ("NimeshaNet", "Reduced Parameter NimeshaNet"):
        for arm in ARMS:
            for fold in (1, 2):
                log = pd.read_csv(logs / model / f"{arm}_set_fold_{fold}_log.csv")
                assert list(log.columns) == ["epoch", "train_r2", "test_r2"]
                assert log["epoch"].tolist() == [1, 2, 3, 4]


def test_all_pairs_are_compared_with_holm_correction(pipeline):
    out = Path(pipeline.stats.out_dir)
    table = pd.read_csv(out / "all_pairs_table.csv")
    n_pairs = len(ARMS) * (len(ARMS) - 1) // 2
    assert len(table) == 2 * n_pairs * 3  # two models, every pair, three metrics
    assert {"p_holm", "conclusion_holm"} <= set(table.columns)
    assert (table["p_holm"] >= table["p_exact_two_sided"] - 1e-12).all()
    assert (out / "learning_curves.png").stat().st_size > 0


def test_manifest_copies_logs_and_times_every_stage(pipeline):
    out = Path(pipeline.stats.out_dir)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["logs_copied"] == 2 * len(ARMS) * 2
    assert set(manifest["stage_wall_time"]) >= {"extract", "augment", "features", "folds", "train", "stats"}
    assert len(manifest["data_sha256"]) == 3 * len(pipeline.task.data.records)
    assert (out / "fold_logs" / "NimeshaNet" / "study_set_fold_2_log.csv").is_file()
    # which data the numbers came from: every chained data setting of the trained models
    assert manifest["data_settings"]["task.data.label_match"] == "substring"
    assert manifest["data_settings"]["task.data.n_variants"] == 4


def test_rerun_redoes_nothing(pipeline):
    processed = Path(pipeline.task.processed_dir)
    logs = Path(pipeline.train.logs_dir)
    watched = [processed / "augmented.npy", processed / "leads.npy", *sorted(logs.rglob("*_log.csv"))]
    before = {p: p.stat().st_mtime_ns for p in watched}
    with registered(pipeline.task.data.mirror):
        assert run_stages(pipeline) == []
    assert {p: p.stat().st_mtime_ns for p in watched} == before


def test_training_refuses_data_made_with_other_settings(pipeline):
    cfg = pipeline.copy()
    cfg.stages = ["train"]
    cfg.task.data.label_match = "exact"
    with (
        registered(cfg.task.data.mirror),
        pytest.raises(StageError, match=r"outputs of stage 'features'.*task.data.label_match: 'substring' -> 'exact'"),
    ):
        run_stages(cfg)
    cfg.task.data.label_match, cfg.task.data.n_variants = "substring", 5
    with registered(cfg.task.data.mirror), pytest.raises(StageError, match=r"task.data.n_variants: 4 -> 5"):
        run_stages(cfg)


def test_a_truncated_processed_array_is_noticed_not_read(pipeline):
    leads = Path(pipeline.task.processed_dir) / "leads.npy"
    data = leads.read_bytes()
    try:
        leads.write_bytes(data[: len(data) // 2])
        cfg = pipeline.copy()
        cfg.stages = ["train"]
        with registered(cfg.task.data.mirror), pytest.raises(StageError, match=r"leads.npy: \d+ bytes, \d+ written"):
            run_stages(cfg)
        cfg.stages = ["features"]
        with registered(cfg.task.data.mirror):
            assert run_stages(cfg) == ["features"]  # the damaged output is redone, not taken as done
        assert leads.read_bytes() == data
    finally:
        leads.write_bytes(data)


def test_logs_of_data_rebuilt_byte_identical_are_still_theirs(pipeline):
    """Last in this module: it rebuilds the features. Same settings and the same bytes, so the same
    run of the features stage: the logs trained on them are found, not orphaned (logs of data
    with other content are refused: tests/test_reliability.py)."""
    cfg = pipeline.copy()
    cfg.stages, cfg.overwrite = ["features"], True
    with registered(cfg.task.data.mirror):
        assert run_stages(cfg) == ["features"]
    cfg.stages, cfg.overwrite = ["train"], False
    with registered(cfg.task.data.mirror):
        assert run_stages(cfg) == []
