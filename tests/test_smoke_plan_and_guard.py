"""A newcomer's first hour: the smoke config, the plan before training, scratch outputs by
default, and the guard that keeps committed results from being replaced by accident."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from coordchannels.pipeline import dry_run_lines
from coordchannels.settings import SettingError
from coordchannels.stats.stage import check_results_dir
from coordchannels.train.progress import Progress, duration, make_plan
from tests.conftest import REPO, VFDB_DIR, compose_config, require

EXPERIMENTS = sorted(p.stem for p in (REPO / "src/coordchannels/conf/experiment").glob("*.yaml"))


def test_smoke_config_resolves_to_a_scratch_folder():
    cfg = compose_config(["task=ecg", "debug=smoke", "paths.root_dir=/somewhere"])
    values = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert values["paths"]["data_dir"] == "/somewhere/data/smoke"
    assert values["stats"]["out_dir"] == "/somewhere/data/smoke/results/ecg"
    assert not values["stats"]["out_dir"].startswith(values["paths"]["results_dir"])
    assert values["train"]["epochs"] >= 5  # instability estimable; the stats stage needs >= 4
    assert values["train"]["limit_train"] and values["train"]["limit_test"]
    assert "SMOKE RUN" in values["stats"]["heading"] and "mean nothing" in values["stats"]["heading"]
    assert values["task"]["data"]["n_variants"] < 10


def test_smoke_config_composes_for_sipakmed_too():
    cfg = compose_config(["task=sipakmed", "debug=smoke", "paths.root_dir=/x"])
    assert OmegaConf.to_container(cfg, resolve=True)["stats"]["out_dir"] == "/x/data/smoke/results/sipakmed"


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_runs_write_to_scratch_by_default(experiment):
    cfg = compose_config(["paths.root_dir=/r"] + ([f"experiment={experiment}"] if experiment else []))
    out = str(cfg.stats.out_dir)
    assert out.startswith("/r/data/results/"), out
    published = compose_config(
        ["paths.root_dir=/r", "paths.outputs_dir=${paths.results_dir}"]
        + ([f"experiment={experiment}"] if experiment else [])
    )
    assert str(published.stats.out_dir).startswith("/r/results/")


def _committed(tmp_path, name="ecg_record", **overrides):
    """A committed result folder under tmp_path/results with the stats config of `overrides`."""
    cfg = compose_config(
        [
            f"paths.root_dir={tmp_path}",
            "paths.outputs_dir=${paths.results_dir}",
            "experiment=ecg_record",
            *[f"{k}={v}" for k, v in overrides.items()],
        ]
    )
    logs = tmp_path / "results" / name / "logs"
    logs.mkdir(parents=True)
    (logs / "stats.config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return cfg


def test_committed_results_are_replaced_only_with_their_settings(tmp_path):
    base = [f"paths.root_dir={tmp_path}", "paths.outputs_dir=${paths.results_dir}", "experiment=ecg_record"]
    _committed(tmp_path)
    check_results_dir(compose_config(base))  # the same settings: regenerating is fine
    for change in ("train.epochs=4", "stats.method=exact", "task.data.label_match=exact"):
        with pytest.raises(SettingError, match="committed results made with other settings"):
            check_results_dir(compose_config([*base, change]))
    check_results_dir(compose_config([*base, "train.epochs=4", "stats.replace_results=true"]))
    # the scratch default is never guarded
    check_results_dir(compose_config([f"paths.root_dir={tmp_path}", "experiment=ecg_record", "train.epochs=4"]))


def test_duration_reads_like_a_person_would_say_it():
    assert [duration(s) for s in (5, 600, 7200, 3 * 86400)] == ["5 s", "10 min", "2.0 h", "3.0 days"]


def test_plan_and_dry_run_write_nothing(make_cfg, tmp_path):
    cfg = make_cfg("task=ecg", "train.epochs=15")
    before = sorted(tmp_path.rglob("*"))
    lines = dry_run_lines(cfg)
    assert sorted(tmp_path.rglob("*")) == before
    text = "\n".join(lines)
    assert "plan: 20 training jobs" in text and "0 already finished, 20 to train" in text
    assert "estimated training time" in text and "stage download: would run" in text


def test_sipakmed_on_a_cpu_says_days_and_how_to_use_a_gpu(make_cfg):
    text = "\n".join(dry_run_lines(make_cfg("task=sipakmed", "train.epochs=15", "train.device=cpu")))
    assert "days" in text and "train.device=cuda" in text


def test_progress_lines_count_jobs_and_estimate_the_rest(make_cfg, caplog):
    cfg = make_cfg("task=ecg", "train.epochs=15")
    jobs = make_plan(cfg).jobs
    progress = Progress(cfg, jobs)
    with caplog.at_level("INFO"):
        for job in jobs[:2]:
            progress.finished(job)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert lines[0].startswith("progress: job 1/20 finished") and "left" in lines[0]
    assert lines[1].startswith("progress: job 2/20 finished")


def test_make_plan_prints_and_writes_nothing(tmp_path):
    env = {**os.environ, "COORDCHANNELS_ROOT": str(tmp_path)}
    run = subprocess.run(
        ["make", "-s", "plan", "TASK=ecg", f"ARGS=paths.root_dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "plan: 20 training jobs" in run.stdout
    assert not any(tmp_path.iterdir()), sorted(tmp_path.rglob("*"))


@pytest.mark.slow
def test_smoke_run_end_to_end_on_the_real_vfdb(tmp_path):
    """`make smoke`'s run, on the real VFDB: every stage passes and the tables say what they are."""
    vfdb = require(VFDB_DIR, "the VFDB")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordchannels",
            "task=ecg",
            "debug=smoke",
            f"paths.root_dir={tmp_path}",
            f"paths.vfdb_mirror={vfdb}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = Path(tmp_path) / "data" / "smoke" / "results" / "ecg"
    table = (out / "comparison_table.md").read_text()
    assert table.startswith("**SMOKE RUN") and "LIMITED RUN" in table
    assert (out / "manifest.json").is_file() and (out / "learning_curves.png").is_file()
    assert not (tmp_path / "results").exists()
    assert "progress: job 20/20 finished" in run.stdout + run.stderr


def test_dry_run_from_the_command_line_leaves_nothing_behind(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "coordchannels", "task=ecg", "dry_run=true", f"paths.root_dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "stage train: would run" in run.stdout and "plan: estimated training time" in run.stdout
    assert sorted(tmp_path.rglob("*")) == []


def test_tracker_writes_tensorboard_event_files_per_job(make_cfg):
    pytest.importorskip("tensorboard")
    from coordchannels.train.grid import Job
    from coordchannels.train.tracker import job_tracker, tracker_dir

    cfg = make_cfg("task=ecg", "train.tracker=tensorboard")
    job = Job("nimeshanet", "study", 42, 3)
    with job_tracker(cfg, job) as track:
        track([1, 0.5, 0.4], ["epoch", "train_r2", "test_r2"])
    assert list(tracker_dir(cfg, job).glob("events.out.tfevents.*"))


def test_an_unknown_tracker_is_refused_before_training(make_cfg):
    with pytest.raises(SettingError, match="train.tracker"):
        make_plan(make_cfg("task=ecg", "train.tracker=wandb"))
