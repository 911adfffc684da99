"""Probes a user (or an adversary) tries on a finished run: each ends in the right result or one
clear refusal, never a silently wrong number (docs/reliability.md lists them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from coordchannels import train, verify
from coordchannels.pipeline import run_stages
from coordchannels.settings import SettingError, check_added_keys, setting_names
from coordchannels.stages import StageError, produced, stage_spec
from coordchannels.stats import stage as report
from tests.conftest import REPO, compose_config, train_killed_after_epoch
from tests.helpers import job_log, read, with_probes

ONE_JOB = ("ecg", "train.models=[nimeshanet]", "train.arms=[study]", "stages=[train]", "external_data=true")


def files(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def count_epochs(monkeypatch) -> list[int]:
    """Each epoch trained from now on appends 1."""
    trained: list[int] = []
    real = train.job.train_one_epoch
    monkeypatch.setattr(train.job, "train_one_epoch", lambda *a, **k: trained.append(1) or real(*a, **k))
    return trained


# 1 ------------------------------------------------------------------------------------------
def test_changed_training_settings_on_an_existing_run_are_continued_or_refused(tiny_cfg, monkeypatch):  # noqa: F811
    run_stages(tiny_cfg(*ONE_JOB, "train.epochs=3"))
    trained = count_epochs(monkeypatch)

    # More epochs of the same job continue from its checkpoint.
    cfg = tiny_cfg(*ONE_JOB, "train.epochs=4")
    assert run_stages(cfg) == ["train"]
    assert len(trained) == 1 and read(job_log(cfg)).epoch.tolist() == [1, 2, 3, 4]

    # Fewer epochs, or any other setting, are refused before anything runs, naming each key.
    before = files(cfg.train.run_dir)
    refusals = {
        "train.epochs=2": r"train\.epochs: stored 4, now 2",
        "train.lr=0.01": r"train\.lr: stored 0\.001, now 0\.01",
        "train.batch_size=8": r"train\.batch_size: stored 32, now 8",
        "task.models.nimeshanet.net.out_scale=10": r"model\.net\.out_scale: stored 20\.0, now 10",
    }
    for override, message in refusals.items():
        with pytest.raises(train.RunConfigError, match=message + r".*train\.run_name.*overwrite=true"):
            run_stages(tiny_cfg(*ONE_JOB, "train.epochs=4", override))
    two = tiny_cfg(*ONE_JOB, "train.epochs=2", "train.lr=0.01")
    with pytest.raises(train.RunConfigError, match=r"train\.epochs: stored 4.*; train\.lr: stored"):
        run_stages(two)
    assert files(cfg.train.run_dir) == before and not trained[1:]

    # A new fold or seed adds only its own jobs.
    assert run_stages(tiny_cfg(*ONE_JOB, "train.epochs=4", "train.folds=[1,2]")) == ["train"]
    assert len(trained) == 1 + 4
    # ...and the finished grid is then skipped.
    assert run_stages(tiny_cfg(*ONE_JOB, "train.epochs=4", "train.folds=[1,2]")) == []

    # An interrupted job is checked up front too, from its checkpoint.
    killed = tiny_cfg(*ONE_JOB, "train.run_name=killed", "train.epochs=3")
    train_killed_after_epoch(killed, monkeypatch, epoch=2)
    with pytest.raises(train.RunConfigError, match=r"train\.epochs: stored 2, now 1 \(fewer epochs"):
        run_stages(tiny_cfg(*ONE_JOB, "train.run_name=killed", "train.epochs=1"))


# 2 ------------------------------------------------------------------------------------------
def test_unknown_keys_added_with_plus_are_refused_naming_the_nearest(tmp_path):
    for override, nearest in {
        "+train.epoch=3": "train.epochs",
        "+task.data.label_mach=exact": "task.data.label_match",
    }.items():
        with pytest.raises(SettingError, match=rf"no setting .*did you mean {nearest}="):
            check_added_keys([override], compose_config)
    check_added_keys(["++train.epochs=3", "task=ecg", "train.lr=0.01"], compose_config)  # known keys pass
    # ...and the app says so in one line, before anything runs
    run = subprocess.run(
        [sys.executable, "-m", "coordchannels", "+train.epoch=3", "stages=[train]", "dry_run=true"],
        cwd=tmp_path,
        env={**os.environ, "COORDCHANNELS_ROOT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        "error: +train.epoch=3: the config has no setting 'train.epoch' (did you mean train.epochs=...?)"
    )


@pytest.mark.parametrize(
    "choice",
    [
        f"{path.parent.name}={path.stem}"
        for group in ("experiment", "debug")
        for path in sorted((REPO / "src" / "coordchannels" / "conf" / group).glob("*.yaml"))
    ],
)
def test_shipped_experiment_and_debug_files_add_no_unknown_setting(choice):
    """A file of these groups may add a node of its own (`replicate:`), not a key to the closed
    groups: a typo there (`train: {epoch: 3}`) would be ignored as `+train.epoch=3` was."""
    cfg = compose_config([choice])
    base = set(setting_names(compose_config([f"task={cfg.task.name}"])))
    added = [k for k in setting_names(cfg) if k not in base and k.split(".")[0] in ("train", "stats", "paths", "task")]
    assert not added, f"{choice} sets settings the config does not have: {added}"


# 3 ------------------------------------------------------------------------------------------
def flip_a_byte(path: Path, offset: int = -2) -> None:
    """Change one byte in place, keeping the size (a digit of the last value of a log)."""
    data = bytearray(path.read_bytes())
    data[offset] = ord("7") if data[offset] != ord("7") else ord("3")
    path.write_bytes(bytes(data))


def test_same_size_corruption_of_a_stage_output_is_detected(tmp_path):
    cfg = with_probes(tmp_path, "stages=[make,use]")
    run_stages(cfg)
    made = tmp_path / "make" / "made.txt"
    assert produced(stage_spec(cfg, "make"))["sha256"]["made.txt"]
    size = made.stat().st_size
    flip_a_byte(made, 0)
    assert made.stat().st_size == size
    cfg.stages = ["use"]  # a reader refuses it, naming the file
    with pytest.raises(StageError, match=r"made\.txt: content changed since written"):
        run_stages(cfg)
    cfg.stages = ["make", "use"]  # its own stage redoes it
    assert run_stages(cfg) == ["make"]
    assert made.read_text() == "substring 42"


def test_same_size_corruption_of_a_training_log_is_redone(tiny_cfg, monkeypatch):  # noqa: F811
    cfg = tiny_cfg(*ONE_JOB)
    run_stages(cfg)
    path, good = job_log(cfg), job_log(cfg).read_bytes()
    flip_a_byte(path)
    trained = count_epochs(monkeypatch)
    assert run_stages(cfg) == ["train"]
    assert path.read_bytes() == good and not trained  # rewritten from its checkpoint


def test_make_verify_names_a_committed_result_changed_in_place(tmp_path, capsys, make_cfg):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / "ecg", results / "ecg")
    assert verify.main([str(results)]) == 0
    changed = results / "ecg" / "fold_logs" / "NimeshaNet" / "study_set_fold_3_log.csv"
    flip_a_byte(changed)
    assert verify.main([str(results)]) == 1
    assert f"{changed}: changed" in capsys.readouterr().err
    # and the statistics refuse to read it
    cfg = make_cfg(
        "stages=[stats]", f"stats.logs_dir={results / 'ecg' / 'fold_logs'}", f"stats.out_dir={tmp_path / 'out'}"
    )
    with pytest.raises(StageError, match=r"study_set_fold_3_log\.csv: changed"):
        run_stages(cfg)
    assert not (tmp_path / "out").exists()


def test_every_committed_result_matches_its_manifest():
    problems, checked, _ = verify.verify_results(REPO / "results")
    assert not problems and checked > 500


# 4 ------------------------------------------------------------------------------------------
def test_a_truncated_training_log_is_replaced_when_redone(tiny_cfg, monkeypatch):  # noqa: F811
    cfg = tiny_cfg(*ONE_JOB)
    run_stages(cfg)
    path, good = job_log(cfg), job_log(cfg).read_bytes()
    path.write_bytes(good[: len(good) // 2])
    trained = count_epochs(monkeypatch)
    assert run_stages(cfg) == ["train"]
    assert path.read_bytes() == good and not trained
    sizes = produced(stage_spec(cfg, "train"))["sizes"]
    assert sizes == {str(path.relative_to(cfg.train.run_dir)): len(good)}
    assert run_stages(cfg) == []  # and it is done


# 5 ------------------------------------------------------------------------------------------
def test_the_reduced_scale_mark_travels_with_copied_logs(tiny_cfg, tmp_path, monkeypatch):  # noqa: F811
    cfg = tiny_cfg("ecg", "train.models=[nimeshanet]", "train.folds=[1,2]", "train.epochs=15", "train.limit_train=20")
    with open_dict(cfg):
        cfg.task.data.n_folds = 2
    train.train_stage(cfg)
    copy = tmp_path / "handed_over"
    shutil.copytree(cfg.train.logs_dir, copy)
    titles = []
    real = report.learning_curves_figure
    monkeypatch.setattr(report, "learning_curves_figure", lambda s, h=None: titles.append(h) or real(s, h))
    out = tmp_path / "tables"
    stats_cfg = tiny_cfg("ecg", "stages=[stats]", f"stats.logs_dir={copy}", f"stats.out_dir={out}")
    with open_dict(stats_cfg):
        stats_cfg.task.data.n_folds = 2
    run_stages(stats_cfg)
    mark = "LIMITED RUN (train.limit_train=20)"
    assert mark in (out / "comparison_table.md").read_text()
    assert mark.replace("_", r"\_") in (out / "comparison_table.tex").read_text()
    assert pd.read_csv(out / "comparison_table.csv").limited.all()
    assert mark in titles[0]


# 6 ------------------------------------------------------------------------------------------
def test_a_byte_identical_data_rebuild_keeps_its_trained_runs(tiny_cfg, tmp_path, monkeypatch):  # noqa: F811
    probes = with_probes(tmp_path)
    cfg = tiny_cfg("ecg", "train.models=[nimeshanet]", "train.arms=[study]", "stages=[make,train]")
    with open_dict(cfg):
        cfg.stage_defs.make = probes.stage_defs.make
        cfg.task.train_after = ["make"]
    run_stages(cfg)
    cfg.stages, cfg.overwrite = ["make"], True
    assert run_stages(cfg) == ["make"]  # rebuilt: the same bytes
    cfg.stages, cfg.overwrite = ["make", "train"], False
    trained = count_epochs(monkeypatch)
    assert run_stages(cfg) == []  # its runs are found, not orphaned
    assert not trained
    # data rebuilt with other bytes are other data: the logs are not taken for theirs
    with open_dict(cfg):
        cfg.probe_extra = " and other bytes"
    cfg.stages, cfg.overwrite = ["make"], True
    run_stages(cfg)
    cfg.stages, cfg.overwrite = ["make", "train"], False
    with pytest.raises(train.RunConfigError, match=r"task\.data_runs\.make: stored"):
        run_stages(cfg)


# 7 ------------------------------------------------------------------------------------------
class RecordData:
    """60 samples of 6 records (10 each, in record order); folds group records in pairs."""

    sample_group = np.repeat(np.array(["418", "419", "420", "421", "422", "423"]), 10)

    def split(self, fold):
        fold_of = np.repeat([1, 1, 2, 2, 3, 3], 10)
        return np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)


def test_limit_train_takes_a_seeded_subset_stratified_over_records(tiny_cfg):  # noqa: F811
    cfg = tiny_cfg("ecg", "train.limit_train=8", "train.limit_test=4")
    data = RecordData()
    train2, test2 = train.job_indices(cfg, data, 2, 42)
    train3, _ = train.job_indices(cfg, data, 3, 42)
    groups = data.sample_group
    # every training record has its share (8 of 40 samples: 2 from each of 4 records), not the first 8
    assert sorted(pd.Series(groups[train2.numpy()]).value_counts().tolist()) == [2, 2, 2, 2]
    assert set(groups[test2.numpy()]) == {"420", "421"} and len(test2) == 4
    # folds sharing a training record do not train on the same samples (the first N did)
    assert set(train2.tolist()) != set(train3.tolist())
    # seeded: the same seed draws the same subset, another seed another one
    assert train.job_indices(cfg, data, 2, 42)[0].tolist() == train2.tolist()
    assert train.job_indices(cfg, data, 2, 7)[0].tolist() != train2.tolist()
    assert torch.equal(train2, train2.sort().values)
    # logs of the earlier rule (the first N) are not taken for logs of this one
    job = train.Job("nimeshanet", "study", 42, 1)
    assert "subset" in train.job_fingerprint(cfg, job)["train"]
    assert "subset" not in train.job_fingerprint(tiny_cfg("ecg"), job)["train"]


# 8 ------------------------------------------------------------------------------------------
def test_a_fold_listed_twice_is_refused_before_anything_is_written(tiny_cfg):  # noqa: F811
    cfg = tiny_cfg(*ONE_JOB, "train.folds=[1,1]")
    with pytest.raises(SettingError, match=r"train\.folds=\[1, 1\]: \[1\] listed more than once"):
        run_stages(cfg)
    assert not Path(cfg.train.run_dir).exists()
