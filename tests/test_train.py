"""The trainer on tiny synthetic tasks plugged into the real config (SPEC section 5).

`fake_loader` stands in for a task's loader: 1-D signals whose target is the position of a bump
(the ECG task's shape) or 2-D images whose targets are the (x, y) of a blob (SiPaKMeD's shape),
with the arm's coordinate channels appended by the real channel code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import open_dict
from sklearn.metrics import r2_score

from coordchannels import train
from coordchannels.logs import read_log
from coordchannels.pipeline import run_stages
from tests.conftest import train_killed_after_epoch
from tests.helpers import LOADS, FakeData, fake_loader, job_log, read


# ---------------------------------------------------------------------------------------------
def test_ecg_run_writes_complete_logs_in_the_published_layout(tiny_cfg):
    LOADS.clear()
    train.job._DATA_CACHE.clear()
    cfg = tiny_cfg("ecg", "train.epochs=4", "train.folds=[1,2]")
    train.train_stage(cfg)
    logs = sorted(p.relative_to(cfg.train.logs_dir).as_posix() for p in Path(cfg.train.logs_dir).rglob("*.csv"))
    assert logs == sorted(
        f"{model}/{arm}_set_fold_{k}_log.csv"
        for model in ("NimeshaNet", "Reduced Parameter NimeshaNet")
        for arm in ("control", "study")
        for k in (1, 2)
    )
    for name in logs:
        frame = read(os.path.join(cfg.train.logs_dir, name))
        assert list(frame.columns) == ["epoch", "train_r2", "test_r2"]
        assert frame["epoch"].tolist() == [1, 2, 3, 4]
        fold_log = read_log(os.path.join(cfg.train.logs_dir, name))  # the stats stage accepts it
        assert fold_log.dims == 1
    # The grid runs arm by arm, so each arm's data is loaded once for all its jobs.
    assert LOADS == [("ecg", "control"), ("ecg", "study")]
    ckpts = sorted(p.name for p in (Path(cfg.train.run_dir) / "checkpoints" / "NimeshaNet").iterdir())
    assert ckpts == [f"{a}_seed_42_fold_{k}.pt" for a in ("control", "study") for k in (1, 2)]
    records = sorted(
        p.relative_to(Path(cfg.train.run_dir) / "jobs").as_posix()
        for p in (Path(cfg.train.run_dir) / "jobs").rglob("*.json")
    )
    assert records == [
        f"{m}/{a}_set_fold_{k}_log.json"
        for m in ("NimeshaNet", "Reduced Parameter NimeshaNet")
        for a in ("control", "study")
        for k in (1, 2)
    ]
    record = json.loads((Path(cfg.train.run_dir) / "jobs" / records[0]).read_text())
    assert record["epochs"] == 4 and record["fingerprint"]["seed"] == 42
    assert record["fingerprint"]["train"]["lr"] == 1e-3 and record["fingerprint"]["train"]["num_threads"] == 1
    assert "raw_dir" not in record["fingerprint"]["task"]["data"]  # where the data come from does not matter


def test_training_learns_the_bump_position(tiny_cfg):
    cfg = tiny_cfg("ecg", "train.epochs=12", "train.models=[nimeshanet]", "train.arms=[control]")
    with open_dict(cfg):
        cfg.task.data.fake_n = 200
    train.train_stage(cfg)
    frame = read(job_log(cfg, arm="control"))
    assert frame["train_r2"].iloc[-1] > 0.5 and frame["train_r2"].iloc[-1] > frame["train_r2"].iloc[0]


def test_sipakmed_run_logs_h_and_k(tiny_cfg):
    cfg = tiny_cfg("sipakmed", "train.arms=[study]")
    train.train_stage(cfg)
    for model in ("LakshyaNet", "Reduced Parameter LakshyaNet"):
        frame = read(os.path.join(cfg.train.logs_dir, model, "study_set_fold_1_log.csv"))
        assert list(frame.columns) == ["epoch", "train_r2_h", "train_r2_k", "test_r2_h", "test_r2_k"]
        assert frame["epoch"].tolist() == [1, 2, 3]
        assert np.isfinite(frame.to_numpy()).all()


def test_target_standardisation_uses_the_first_training_samples(tiny_cfg):
    cfg = tiny_cfg("sipakmed")
    data = fake_loader(cfg, cfg.arms.control, torch.device("cpu"))
    train_idx, _ = train.job_indices(cfg, data, 1, 42)
    mean, std = train.target_standardisation(data, train_idx)
    first = data.y[train_idx[:10]]
    torch.testing.assert_close(mean, first.mean(0))
    torch.testing.assert_close(std, first.std(0))  # unbiased, as the scripts' torch .std()
    assert not torch.allclose(mean, data.y[train_idx].mean(0))


def test_constant_targets_get_unit_std():
    data = FakeData(torch.zeros(4, 1, 8), torch.full((4, 1), 3.0), np.array([1, 1, 2, 2]), ("",))
    mean, std = train.target_standardisation(data, torch.arange(4))
    assert mean.item() == 3.0 and std.item() == 1.0


def test_limits_cut_train_and_test_indices(tiny_cfg):
    cfg = tiny_cfg("ecg", "train.limit_train=7", "train.limit_test=5")
    data = fake_loader(cfg, cfg.arms.control, torch.device("cpu"))
    tr, te = train.job_indices(cfg, data, 1, 42)
    full_tr, full_te = data.split(1)
    assert len(tr) == 7 and len(te) == 5
    assert set(tr.tolist()) <= set(full_tr) and set(te.tolist()) <= set(full_te)
    assert tr.tolist() == sorted(tr.tolist()) and tr.tolist() != full_tr[:7].tolist()
    assert tr.tolist() == train.job_indices(cfg, data, 1, 42)[0].tolist()  # seeded


def test_r2_per_target_is_sklearn_per_column():
    rng = np.random.default_rng(0)
    y, p = rng.normal(size=(50, 2)), rng.normal(size=(50, 2))
    assert train.r2_per_target(y, p) == pytest.approx(list(r2_score(y, p, multioutput="raw_values")))
    assert train.r2_per_target(y[:, :1], p[:, :1]) == pytest.approx([r2_score(y[:, 0], p[:, 0])])


# ---------------------------------------------------------------------------------------------
def test_same_config_gives_the_same_numbers(tiny_cfg):
    args = ("ecg", "train.models=[nimeshanet]", "train.arms=[study]")
    first, second = tiny_cfg(*args, "train.run_name=a"), tiny_cfg(*args, "train.run_name=b")
    train.train_stage(first)
    train.train_stage(second)
    a, b = read(job_log(first)), read(job_log(second))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert a["train_r2"].nunique() == 3  # really trained: the numbers move between epochs


def test_other_seed_gives_other_numbers_and_seeded_log_names(tiny_cfg):
    cfg = tiny_cfg("ecg", "train.models=[nimeshanet]", "train.arms=[study]", "train.seeds=[1,2]")
    train.train_stage(cfg)
    one = read(os.path.join(cfg.train.logs_dir, "NimeshaNet", "study_set_seed_1_fold_1_log.csv"))
    two = read(os.path.join(cfg.train.logs_dir, "NimeshaNet", "study_set_seed_2_fold_1_log.csv"))
    assert not np.allclose(one["test_r2"], two["test_r2"])


def test_killed_job_resumes_to_the_uninterrupted_result(tiny_cfg, monkeypatch):
    args = ("ecg", "train.models=[nimeshanet]", "train.arms=[study]")
    reference = tiny_cfg(*args, "train.run_name=ref")
    train.train_stage(reference)

    cfg = tiny_cfg(*args, "train.run_name=killed")
    train_killed_after_epoch(cfg, monkeypatch)
    assert not job_log(cfg).exists()  # no partial log in the logs folder
    ckpt = train.checkpoint_path(cfg, train.Job("nimeshanet", "study", 42, 1))
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1

    epochs_run = []
    real_train_one_epoch = train.job.train_one_epoch
    monkeypatch.setattr(
        train.job, "train_one_epoch", lambda *a, **k: epochs_run.append(1) or real_train_one_epoch(*a, **k)
    )
    train.train_stage(cfg)
    assert len(epochs_run) == 2  # epochs 2 and 3 only
    pd.testing.assert_frame_equal(read(job_log(cfg)), read(job_log(reference)), check_exact=True)


def test_finished_jobs_are_skipped_unless_overwrite(tiny_cfg, monkeypatch):
    cfg = tiny_cfg("ecg", "train.models=[nimeshanet]", "train.arms=[control]")
    train.train_stage(cfg)
    path = job_log(cfg, arm="control")
    mtime = path.stat().st_mtime_ns

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished job was trained again")

    monkeypatch.setattr(train.job, "train_one_epoch", must_not_train)
    train.train_stage(cfg)
    assert path.stat().st_mtime_ns == mtime

    with open_dict(cfg):
        cfg.overwrite = True
    with pytest.raises(AssertionError, match="trained again"):
        train.train_stage(cfg)


def test_changed_config_refuses_to_resume_or_skip(tiny_cfg, monkeypatch):
    cfg = tiny_cfg("ecg", "train.models=[nimeshanet]", "train.arms=[control]")
    train.train_stage(cfg)
    changed = tiny_cfg("ecg", "train.models=[nimeshanet]", "train.arms=[control]", "train.lr=0.01")
    with pytest.raises(
        train.RunConfigError, match=r"train\.lr: stored 0\.001, now 0\.01.*train\.run_name.*overwrite=true"
    ):
        train.train_stage(changed)
    # A job run on its own is stopped the same way.
    with pytest.raises(train.RunConfigError, match="another configuration"):
        train.run_job(changed, "nimeshanet", "control", 42, 1)
    # Data settings count too.
    with open_dict(changed):
        changed.train.lr = 1e-3
        changed.task.data.fake_seed = 1
    with pytest.raises(train.RunConfigError, match="fake_seed"):
        train.train_stage(changed)
    # overwrite=true retrains under the new settings and records them.
    with open_dict(changed):
        changed.overwrite = True
    before = read(job_log(cfg, arm="control"))
    train.train_stage(changed)
    assert not read(job_log(cfg, arm="control")).equals(before)
    record = json.loads(train.job.job_record_path(changed, train.Job("nimeshanet", "control", 42, 1)).read_text())
    assert record["fingerprint"]["task"]["data"]["fake_seed"] == 1


def test_a_single_seed_run_with_another_seed_is_refused(tiny_cfg):
    train.train_stage(tiny_cfg("ecg", "train.models=[nimeshanet]", "train.arms=[control]"))
    with pytest.raises(train.RunConfigError, match=r"seed: stored 42, now 7"):
        train.train_stage(tiny_cfg("ecg", "train.models=[nimeshanet]", "train.arms=[control]", "train.seeds=[7]"))


def test_new_models_and_arms_join_an_existing_run(tiny_cfg):
    train.train_stage(tiny_cfg("ecg", "train.models=[nimeshanet]", "train.arms=[control]"))
    cfg = tiny_cfg("ecg", "train.models=[nimeshanet_reduced]", "train.arms=[study]")
    train.train_stage(cfg)
    jobs = Path(cfg.train.run_dir) / "jobs"
    assert (jobs / "NimeshaNet" / "control_set_fold_1_log.json").is_file()
    assert (jobs / "Reduced Parameter NimeshaNet" / "study_set_fold_1_log.json").is_file()


def test_unknown_names_and_folds_are_clear_errors(tiny_cfg):
    with pytest.raises(ValueError, match="unknown model"):
        train.job_grid(tiny_cfg("ecg", "train.models=[resnet]"))
    with pytest.raises(ValueError, match="unknown arm"):
        train.job_grid(tiny_cfg("ecg", "train.arms=[nonsense]"))
    with pytest.raises(ValueError, match="outside 1..5"):
        train.job_grid(tiny_cfg("ecg", "train.folds=[6]"))


def test_epoch_generators_depend_on_seed_fold_and_epoch():
    draw = lambda *key: torch.randperm(10, generator=train.epoch_generator(*key)).tolist()  # noqa: E731
    assert draw(42, 1, 1) == draw(42, 1, 1)
    assert len({tuple(draw(*k)) for k in [(42, 1, 1), (42, 1, 2), (42, 2, 1), (7, 1, 1)]}) == 4


def test_coordgate_arm_trains(tiny_cfg):
    pytest.importorskip("coordchannels.coordgate")
    cfg = tiny_cfg("ecg", "train.models=[nimeshanet]", "train.arms=[study]", "train.epochs=2")
    with open_dict(cfg):
        cfg.arms.study.model_kwargs = {"coordgate": True}
    train.train_stage(cfg)
    assert read(job_log(cfg))["epoch"].tolist() == [1, 2]
    state = torch.load(train.checkpoint_path(cfg, train.Job("nimeshanet", "study", 42, 1)), weights_only=True)
    assert any("encoder" in k for k in state["model"])


@pytest.mark.slow  # starting two worker processes takes ~15 s on a busy two-core machine
def test_parallel_jobs_match_serial_jobs(tiny_cfg):
    args = ("ecg", "train.models=[nimeshanet]", "train.folds=[1,2]")
    serial = tiny_cfg(*args, "train.run_name=serial")
    parallel = tiny_cfg(*args, "train.run_name=parallel", "train.n_jobs=2", "stages=[train]")
    train.train_stage(serial)
    run_stages(parallel)  # through the pipeline, which gives the stage a log file
    stage_log = (Path(parallel.train.run_dir) / "logs" / "train.log").read_text()
    assert stage_log.count(": epoch 3 ") == 4  # the workers' progress lines reach it
    for arm in ("control", "study"):
        for fold in (1, 2):
            pd.testing.assert_frame_equal(
                read(job_log(parallel, arm=arm, fold=fold)), read(job_log(serial, arm=arm, fold=fold)), check_exact=True
            )


def test_a_task_without_models_trains_nothing(make_cfg):
    cfg = make_cfg("task=coordgate")
    train.train_stage(cfg)  # no error, no run folder
    assert not Path(cfg.train.run_dir).exists()


def test_auto_runs_one_job_per_core_on_a_cpu(make_cfg, monkeypatch):
    monkeypatch.setattr(train.device, "_cores", lambda: 2)
    cfg = make_cfg("train.n_jobs=auto", "train.device=cpu")
    assert train.jobs_side_by_side(cfg, 20) == 2
    assert train.jobs_side_by_side(cfg, 1) == 1
    cfg = make_cfg("train.n_jobs=3")
    assert train.jobs_side_by_side(cfg, 20) == 3


def test_channels_last_and_bf16_runs_stay_close_to_fp32(tiny_cfg):
    """train.channels_last keeps fp32 arithmetic (same numbers up to summation order); bf16
    autocast moves them a little; both are in the fingerprint, so a run cannot mix them."""
    args = ("sipakmed", "train.models=[lakshyanet]", "train.arms=[study]")
    runs = {
        name: tiny_cfg(*args, f"train.run_name={name}", *extra)
        for name, extra in {
            "fp32": (),
            "cl": ("train.channels_last=true",),
            "bf16": ("train.precision=bf16", "train.channels_last=true"),
        }.items()
    }
    for cfg in runs.values():
        train.train_stage(cfg)
    logs = {name: read(job_log(cfg, model="lakshyanet")) for name, cfg in runs.items()}
    # (R2 of 3 epochs on 48 tiny images is far below 0, so the differences are compared relatively.)
    np.testing.assert_allclose(logs["cl"].to_numpy(), logs["fp32"].to_numpy(), rtol=1e-2)
    rel = np.abs(logs["bf16"].to_numpy() / logs["fp32"].to_numpy() - 1)[:, 1:]
    assert np.isfinite(logs["bf16"].to_numpy()).all() and 0 < rel.max() < 0.25
    assert train.job_fingerprint(runs["bf16"], train.Job("lakshyanet", "study", 42, 1))["train"]["precision"] == "bf16"


def test_unknown_precision_is_a_clear_error(tiny_cfg):
    cfg = tiny_cfg("ecg", "train.models=[nimeshanet]", "train.arms=[study]", "train.precision=fp16")
    with pytest.raises(ValueError, match="train.precision must be one of"):
        train.train_stage(cfg)


@pytest.mark.slow  # torch.compile builds C++ kernels on a CPU: about a minute
def test_compiled_model_gives_the_eager_numbers_and_plain_checkpoints(tiny_cfg):
    args = ("ecg", "train.models=[nimeshanet]", "train.arms=[study]")
    eager, compiled = (
        tiny_cfg(*args, "train.run_name=eager"),
        tiny_cfg(*args, "train.run_name=compiled", "train.compile=true"),
    )
    train.train_stage(eager)
    train.train_stage(compiled)
    a, b = read(job_log(compiled)), read(job_log(eager))
    np.testing.assert_allclose(a["train_r2"], b["train_r2"], atol=1e-5)
    # The compiled inference graph sums in another order: the test R2 moves in the third decimal.
    np.testing.assert_allclose(a["test_r2"], b["test_r2"], atol=2e-3)
    ckpt = torch.load(train.checkpoint_path(compiled, train.Job("nimeshanet", "study", 42, 1)), weights_only=False)
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])  # loads into an eager model


def test_a_log_without_its_job_record_is_not_reused(tiny_cfg):
    cfg = tiny_cfg("ecg", "train.models=[nimeshanet]", "train.arms=[control]", "train.folds=[1]")
    train.train_stage(cfg)
    train.job.job_record_path(cfg, train.Job("nimeshanet", "control", 42, 1)).unlink()
    other = tiny_cfg("ecg", "train.models=[nimeshanet]", "train.arms=[control]", "train.folds=[1]", "train.lr=0.01")
    with pytest.raises(train.RunConfigError, match="has no job record"):
        train.train_stage(other)


def test_more_epochs_continue_a_finished_run_with_the_same_numbers(tiny_cfg, monkeypatch):
    args = ("ecg", "train.models=[nimeshanet]", "train.arms=[study]", "train.folds=[1]")
    straight = tiny_cfg(*args, "train.run_name=straight", "train.epochs=5")
    train.train_stage(straight)
    cfg = tiny_cfg(*args, "train.run_name=longer", "train.epochs=3")
    train.train_stage(cfg)
    epochs_run = []
    real = train.job.train_one_epoch
    monkeypatch.setattr(train.job, "train_one_epoch", lambda *a, **k: epochs_run.append(1) or real(*a, **k))
    train.train_stage(tiny_cfg(*args, "train.run_name=longer", "train.epochs=5"))
    assert len(epochs_run) == 2  # epochs 4 and 5 only
    pd.testing.assert_frame_equal(
        read(job_log(cfg, arm="study")), read(job_log(straight, arm="study")), check_exact=True
    )
    with pytest.raises(train.RunConfigError, match="past epoch 4"):
        train.train_stage(tiny_cfg(*args, "train.run_name=longer", "train.epochs=4"))


def test_thread_count_is_part_of_the_fingerprint(tiny_cfg):
    args = ("ecg", "train.models=[nimeshanet]", "train.arms=[control]", "train.folds=[1]")
    train.train_stage(tiny_cfg(*args))
    with pytest.raises(train.RunConfigError, match=r"train.num_threads: stored 1, now 2"):
        train.train_stage(tiny_cfg(*args, "train.num_threads=2"))
    # ...and the number of jobs side by side is not: it does not change a job's numbers.
    train.train_stage(tiny_cfg(*args, "train.n_jobs=2"))


def test_a_job_being_trained_elsewhere_is_not_trained_twice(tiny_cfg):
    from filelock import FileLock

    cfg = tiny_cfg("ecg", "train.models=[nimeshanet]", "train.arms=[control]", "train.folds=[1]")
    job = train.Job("nimeshanet", "control", 42, 1)
    lock_path = train.job.job_record_path(cfg, job).with_suffix(".lock")
    lock_path.parent.mkdir(parents=True)
    lock_path.with_suffix(".holder").write_text("pid 4242 on elsewhere\n")
    with FileLock(lock_path):
        with pytest.raises(train.RunConfigError, match="being trained .* by pid 4242 on elsewhere"):
            train.train_stage(cfg)
    assert not job_log(cfg, arm="control").exists()
    train.train_stage(cfg)  # the lock is free again
    assert job_log(cfg, arm="control").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.folds=3", r"train.folds=3: give a list, e.g. train.folds=\[3\]"),
        ("train.batch_size=0", r"train.batch_size=0: give a whole number >= 1"),
        ("train.epochs=0", r"train.epochs=0: give a whole number >= 1"),
        ("train.limit_test=1", r"train.limit_test=1: give a whole number >= 2"),
        ("train.lr=abc", r"train.lr='abc': give a positive number"),
        ("train.num_threads=0", r"train.num_threads=0"),
        ("train.epochs=3", r"train.epochs=3: the statistics need at least 4 epochs"),
        ("train.device=cuda", r"train.device=cuda: this machine has no CUDA GPU"),
    ],
)
def test_bad_training_settings_fail_before_anything_is_written(make_cfg, override, message):
    import torch as _torch

    from coordchannels.pipeline import run_stages

    if override == "train.device=cuda" and _torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    cfg = make_cfg("task=ecg", "stages=[train,stats]", override)
    with pytest.raises(ValueError, match=message):
        run_stages(cfg)
    assert not Path(cfg.paths.data_dir).exists()


def test_a_worker_ends_when_the_process_that_started_it_dies(tmp_path):
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    code = (
        "import sys, time; from coordchannels.train.stage import _die_with; "
        f"_die_with({parent.pid}, every_s=0.1); time.sleep(30); sys.exit(0)"
    )
    worker = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(1.0)
    assert worker.poll() is None  # alive while its parent lives
    parent.kill()
    parent.wait()
    assert worker.wait(timeout=10) == 1  # ended by the watchdog, not after its 30 s


def test_an_empty_job_record_is_refused(tiny_cfg):
    cfg = tiny_cfg("ecg", "train.models=[nimeshanet]", "train.arms=[control]", "train.folds=[1]")
    train.train_stage(cfg)
    train.job.job_record_path(cfg, train.Job("nimeshanet", "control", 42, 1)).write_text("")
    with pytest.raises(train.RunConfigError, match="unreadable job record"):
        train.train_stage(cfg)
