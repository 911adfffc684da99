"""Refused, failed and dry runs leave committed files and the tree as they were; every entry point
ends a failure with one `error:` line (docs/reliability_runs.md lists the probes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from coordchannels.pipeline import run_stages
from coordchannels.settings import SettingError
from coordchannels.stats import stage as report
from tests.conftest import REPO, compose_config
from tests.helpers import write_set


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def committed_stats(tmp_path: Path, make_cfg):
    """A stats result committed in a git repository (tmp_path/repo/results/mine) from logs kept
    outside it; returns (repo, logs folder, the config that made it)."""
    repo, logs = tmp_path / "repo", write_set(tmp_path / "logs")
    cfg = make_cfg(
        f"paths.root_dir={repo}", f"stats.logs_dir={logs}", f"stats.out_dir={repo}/results/mine", "stages=[stats]"
    )
    assert run_stages(cfg) == ["stats"]
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "results")
    return repo, logs, cfg


# --------------------------------------------------------------------------------------------
# 9. A refused run changes no tracked file
# --------------------------------------------------------------------------------------------
def test_a_refused_stats_run_leaves_the_committed_log_unchanged(tmp_path, make_cfg):
    repo, logs, cfg = committed_stats(tmp_path, make_cfg)
    log = logs / "NimeshaNet" / "study_set_fold_1_log.csv"
    log.write_text(log.read_text().replace("0.", "0.9", 1))  # other per-fold logs than the committed tables'
    with pytest.raises(SettingError, match="other per-fold logs"):
        run_stages(cfg)
    assert git(repo, "status", "--porcelain") == ""  # results/mine/logs/stats.log gained no line


def test_replicate_with_no_grouping_is_refused_before_writing_anything(tmp_path, capsys):
    from tests.helpers import run_app

    assert run_app("-m", "experiment=ecg_replications", f"paths.root_dir={tmp_path}", "replicate.groupings=[]") == 1
    assert (
        capsys.readouterr().err.strip().splitlines()[-1].startswith("error: replicate.groupings=[]: give one or more")
    )
    assert list(tmp_path.rglob("*")) == []


# --------------------------------------------------------------------------------------------
# 10. A new replication goes to an untracked folder; a committed one trained elsewhere is refused
#     before any job trains; fresh and committed replications are compared by statistic
# --------------------------------------------------------------------------------------------
def test_make_replicate_writes_under_data_not_into_committed_results(tmp_path):
    cfg = compose_config(["experiment=ecg_replications", f"paths.root_dir={tmp_path}"])
    assert Path(cfg.replicate.out_dir) == tmp_path / "data" / "results" / "ecg_replications"
    three = compose_config(
        ["experiment=ecg_replications", f"paths.root_dir={tmp_path}", "replicate.grouping=record", "replicate.index=3"]
    )
    assert Path(three.stats.out_dir).is_relative_to(tmp_path / "data")
    published = compose_config(
        ["experiment=ecg_replications", f"paths.root_dir={tmp_path}", "paths.outputs_dir=${paths.results_dir}"]
    )
    assert Path(published.replicate.out_dir) == tmp_path / "results" / "ecg_replications"
    make = subprocess.run(["make", "-n", "replicate", "ecg-replications"], cwd=REPO, capture_output=True, text=True)
    replicate, publish = [line for line in make.stdout.splitlines() if "experiment=ecg_replications" in line]
    assert "-m coordchannels -m experiment=ecg_replications" in replicate  # the sweep of every replication
    assert "paths.outputs_dir" not in replicate and "paths.outputs_dir=${paths.results_dir}" in publish


def test_a_committed_replication_trained_on_another_cpu_is_refused_before_training(tmp_path, monkeypatch, capsys):
    from tests.helpers import run_app

    overrides = [
        "experiment=ecg_replications",
        f"paths.root_dir={tmp_path}",
        "paths.outputs_dir=${paths.results_dir}",
        "replicate.n=2",
        "replicate.groupings=[record]",
    ]
    committed = compose_config([*overrides, "replicate.grouping=record", "replicate.index=2"])
    folder = Path(str(committed.stats.out_dir))
    (folder / "logs").mkdir(parents=True)
    OmegaConf.save(committed, folder / "logs" / "stats.config.yaml")
    (folder / "manifest.json").write_text(json.dumps({"hardware": {"cpu": "Another CPU", "torch": "0.0"}}))
    planted = {p for p in tmp_path.rglob("*") if p.is_file()}
    trained = []
    monkeypatch.setattr("coordchannels.__main__.run_stages", lambda c: trained.append(c))
    assert run_app("-m", *overrides) == 1
    assert re.search("trained on 'Another CPU'.*not bit-identical", capsys.readouterr().err.strip().splitlines()[-1])
    assert trained == [] and {p for p in tmp_path.rglob("*") if p.is_file()} == planted


def replication_tables(folder: Path, shift: float = 0.0) -> Path:
    folder.mkdir(parents=True)
    pd.DataFrame(
        [
            {"grouping": "record", "replication": 1, "model": "NimeshaNet", "metric": "test_r2"}
            | {"mean_diff": 0.10 + shift, "ci_low": 0.05, "ci_high": 0.15},
            {"grouping": "record", "replication": 1, "model": "NimeshaNet", "metric": "train_r2"}
            | {"mean_diff": 0.02, "ci_low": 0.01, "ci_high": 0.03},
        ]
    ).to_csv(folder / "replications.csv", index=False)
    pd.DataFrame(
        [
            {"grouping": "record", "replication": 1, "model": "NimeshaNet", "arm": arm, "test_r2_mean": level}
            for arm, level in (("control", 0.5), ("study", 0.6 + shift))
        ]
    ).to_csv(folder / "arm_levels.csv", index=False)
    return folder


def test_compare_replication_passes_within_tolerance_and_fails_outside(tmp_path, capsys):
    from coordchannels.compare_replication import main

    committed = replication_tables(tmp_path / "committed")
    assert main([str(replication_tables(tmp_path / "close", 0.04)), str(committed)]) == 0
    printed = capsys.readouterr().out
    assert "4 of 4 statistics within tolerance" in printed and "| record | 1 | NimeshaNet | test_r2 |" in printed
    # 0.06 is outside the committed CI half-width (0.05) and the arm-mean tolerance (0.05)
    assert main([str(replication_tables(tmp_path / "far", 0.06)), str(committed)]) == 1
    assert "2 of 4 statistics within tolerance" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# 11. Tables and figures are replaced as one set
# --------------------------------------------------------------------------------------------
def test_a_stats_write_failing_halfway_leaves_the_previous_complete_set(tmp_path, make_cfg, monkeypatch):
    logs, out = write_set(tmp_path / "logs"), tmp_path / "out"
    cfg = make_cfg(f"stats.logs_dir={logs}", f"stats.out_dir={out}", "stages=[stats]")
    run_stages(cfg)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    write_set(logs, epochs=7)  # new logs: every table and figure changes

    real_save = report.save_png

    def disk_full(fig, path, dpi=120):
        if Path(path).name == report.FINALS_NAME:  # the last file of the set
            raise OSError(28, "No space left on device")
        real_save(fig, path, dpi)

    monkeypatch.setattr(report, "save_png", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_stages(cfg)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not list(out.glob(".*"))  # no temporary left


def test_a_complete_set_left_by_a_killed_process_is_renamed_into_place(tmp_path):
    from coordchannels.io import atomic_files

    (tmp_path / "a.csv").write_text("old a")
    (tmp_path / "b.csv").write_text("old b")
    left = tmp_path / ".set.abcdefgh.part"  # as kill -9 leaves it after renaming a.csv
    left.mkdir()
    (left / "b.csv").write_text("new b")
    (left / ".complete").touch()
    (tmp_path / "a.csv").write_text("new a")
    unfinished = tmp_path / ".set.zzzzzzzz.part"  # a set killed while being filled
    unfinished.mkdir()
    (unfinished / "a.csv").write_text("half")
    with atomic_files(tmp_path) as tmp:
        (tmp / "c.csv").write_text("c")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a.csv": "new a", "b.csv": "new b", "c.csv": "c"}


# --------------------------------------------------------------------------------------------
# 12. A dry run writes nothing anywhere; 13. every entry point ends an error with one line
# --------------------------------------------------------------------------------------------
def run_entry(module: str, *argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`python -m module argv...` (a script's path for `module` ending in .py), as a user runs it."""
    command = [sys.executable, module] if module.endswith(".py") else [sys.executable, "-m", module]
    env = {k: v for k, v in os.environ.items() if k != "COORDCHANNELS_DEBUG"}
    return subprocess.run([*command, *argv], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize(
    "module, argv",
    [
        ("coordchannels", ["-m", "experiment=ecg_replications", "replicate.n=1", "replicate.groupings=[record]"]),
        ("coordchannels", ["train.executor=submitit", "train/submitit=local", "task=ecg"]),
    ],
)
def test_a_dry_run_of_replicate_and_of_submitted_training_writes_nothing_anywhere(tmp_path, module, argv, monkeypatch):
    """The replications' sweep too: its sweeper's own file goes to a temporary folder, removed."""
    cwd, scratch = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    run = run_entry(module, *argv, "dry_run=true", f"paths.root_dir={tmp_path / 'root'}", cwd=cwd)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "dry run (task ecg): nothing is written" in run.stdout
    assert sorted(tmp_path.rglob("*")) == [cwd, scratch]  # no data/, no logs, no Hydra output folder


def junk_external_data(folder: Path) -> Path:
    folder.mkdir()
    (folder / "augmented.csv").write_text("episode,record\nx,1\n")
    (folder / "leads.npy").write_text("not an array")
    return folder


ENTRY_ERRORS = {
    "app": ("coordchannels", ["task=ecg", "train.arms=[bogus]"], "unknown arm"),
    "app, unknown key": ("coordchannels", ["train.epoch=3"], "train.epoch"),
    "app, submitit without its partition": (
        "coordchannels",
        ["train.executor=submitit", "train/submitit=slurm"],
        "train.submitit.slurm_partition",
    ),
    "app, unknown executor": ("coordchannels", ["train.executor=slurm"], "train.executor must be one of"),
    "replications' sweep": (
        "coordchannels",
        ["-m", "experiment=ecg_replications", "replicate.first=9"],
        "replicate.first",
    ),
    "sweep, unknown swept key": (
        "coordchannels",
        ["-m", "experiment=ecg_replications", "train.epoch=3,4"],
        "train.epoch",
    ),
    "final-epoch script": (
        "scripts/authors_ecg/summarise_authors_ecg.py",
        ["--out", "{tmp}/out", "ours={tmp}/none"],
        "none",
    ),
    "authors comparison script": ("scripts/authors_ecg/compare_authors_ecg.py", ["--work", "{tmp}/none"], "not found"),
    "compare-replication": ("coordchannels.compare_replication", ["{tmp}/a", "{tmp}/b"], "replications.csv"),
    "external data": (
        "coordchannels",
        ["task=ecg", "stages=[train]", "external_data=true", "task.processed_dir={tmp}/external"]
        + ["train.models=[nimeshanet]", "train.arms=[study]", "train.folds=[1]"],
        "augmented.csv",
    ),
}


def run_in_process(module: str, argv: list[str], capsys) -> tuple[int, str]:
    """A script or argparse entry point run here, as `python` runs it (no Hydra, no new process)."""
    import runpy

    target = str(REPO / module) if module.endswith(".py") else module
    old_argv = sys.argv
    sys.argv = [target, *argv]
    try:
        if module.endswith(".py"):
            runpy.run_path(target, run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old_argv
    return code, capsys.readouterr().err


@pytest.mark.parametrize("entry", ENTRY_ERRORS)
def test_every_entry_point_ends_an_error_with_one_line_and_no_traceback(tmp_path, entry, capsys, monkeypatch):
    module, argv, named = ENTRY_ERRORS[entry]
    junk_external_data(tmp_path / "external")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    monkeypatch.delenv("COORDCHANNELS_DEBUG", raising=False)
    if module.endswith(".py") or module == "coordchannels.compare_replication":
        code, stderr = run_in_process(module, argv, capsys)
    else:  # a Hydra app: its own process, as a user starts it
        run = run_entry(module, *argv, f"paths.root_dir={tmp_path}")
        code, stderr = run.returncode, run.stderr
        assert "Traceback" not in run.stdout
    assert code == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and named in errors[0], stderr[-2000:]
    assert "make data" not in errors[0]  # external data are not rebuilt by the data stages


# --------------------------------------------------------------------------------------------
# 14. The plan predicts what the run does or refuses, and its time within 2x after one job
# --------------------------------------------------------------------------------------------
def finished_job(cfg, job) -> None:
    """A job finished under `cfg`, as the trainer leaves it: its log and its record."""
    from coordchannels.train.paths import job_log_path
    from coordchannels.train.record import job_fingerprint, job_record_path, write_job_record

    log = job_log_path(cfg, job)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("epoch,train_r2,test_r2\n1,0.1,0.1\n")
    write_job_record(job_record_path(cfg, job), job_fingerprint(cfg, job), int(cfg.train.epochs), log)


def test_plan_with_overwrite_trains_every_job_again(make_cfg):
    from coordchannels.pipeline import dry_run_lines
    from coordchannels.train.progress import make_plan

    cfg = make_cfg("task=ecg", "train.models=[nimeshanet]", "train.epochs=15", "stages=[train]", "external_data=true")
    for job in make_plan(cfg).jobs:
        finished_job(cfg, job)
    assert "10 already finished, 0 to train" in "\n".join(dry_run_lines(cfg))
    cfg.overwrite = True
    text = "\n".join(dry_run_lines(cfg))
    assert "0 already finished, 10 to train" in text and "nothing to train" not in text


def test_plan_names_a_job_the_run_would_refuse(make_cfg, capsys):
    from coordchannels.train.grid import Job
    from coordchannels.train.progress import make_plan, plan_lines
    from coordchannels.train.record import RunConfigError

    finished_job(make_cfg("task=ecg", "train.lr=0.01"), Job("nimeshanet", "study", 42, 3))
    cfg = make_cfg("task=ecg", "train.models=[nimeshanet]", "train.epochs=15", "dry_run=true")
    plan = make_plan(cfg)
    assert (
        list(plan.refused) == [Job("nimeshanet", "study", 42, 3)]
        and "lr" in plan.refused[Job("nimeshanet", "study", 42, 3)]
    )
    assert "plan: the run would refuse 1 job(s)" in "\n".join(plan_lines(cfg, plan))
    with pytest.raises(RunConfigError, match=r"train\.lr|lr"):  # the dry run ends with the run's own refusal
        run_stages(cfg)
    assert "stage train: would run" not in capsys.readouterr().out


def test_plan_names_a_stage_the_run_would_refuse(make_cfg, capsys):
    from coordchannels.stages import StageError, stage_record, stage_spec

    cfg = make_cfg("task=ecg", "train.epochs=15", "dry_run=true")
    folds = stage_spec(cfg, "folds")
    folds.record_path.parent.mkdir(parents=True)
    folds.record_path.write_text(json.dumps(stage_record(make_cfg("task=ecg", "task.data.fold_seed=7"), folds)))
    (folds.out / "folds.csv").write_text("episode\n")  # folds made with fold_seed 7
    with pytest.raises(StageError, match=r"other settings.*fold_seed"):
        run_stages(cfg)
    printed = capsys.readouterr().out
    assert "stage extract: would run" in printed and "stage folds: the run would stop here" in printed


def test_plan_time_after_one_job_is_within_2x_of_the_recorded_epoch_times(make_cfg, tmp_path):
    """A smoke-sized run killed after its first job: the plan times the rest from that job's epochs
    (its log has no train.config.yaml yet), not from the full-size cost in task.cost (9x too high)."""
    import logging

    from coordchannels.train.job import log_epoch
    from coordchannels.train.progress import log_plan, make_plan

    cfg = make_cfg("task=ecg", "debug=smoke", "train.n_jobs=2", "train.models=[nimeshanet]")
    jobs = make_plan(cfg).jobs
    logs = Path(str(cfg.train.run_dir)) / "logs"
    logs.mkdir(parents=True)
    handler = logging.FileHandler(logs / "train.log")
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    epoch_s = 0.05  # the recorded seconds of one epoch of one job (a fake clock)
    try:
        log_plan(cfg)
        for epoch in range(1, int(cfg.train.epochs) + 1):
            log_epoch(jobs[0], [epoch, 0.1, 0.1], ["epoch", "train_r2", "test_r2"], epoch_s)
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)
    finished_job(cfg, jobs[0])
    plan = make_plan(cfg)
    left = (len(jobs) - 1) * int(cfg.train.epochs) * epoch_s / 2  # two jobs side by side
    assert plan.finished == 1 and 0.5 <= plan.estimate_s / left <= 2, (plan.estimate_s, left, plan.source)


# --------------------------------------------------------------------------------------------
# 15. A killed submitter's jobs are found by the restart, waited for, and reported truthfully
# --------------------------------------------------------------------------------------------
class FakeSubmitted:
    """What the submitter (coordchannels.train.submit) reads of a submitit job: its id, files, state and result."""

    def __init__(self, job_id: str, folder: Path, state: str = "RUNNING", error: Exception | None = None):
        from types import SimpleNamespace

        self.job_id, self.state, self.error = job_id, state, error
        self.paths = SimpleNamespace(folder=folder, stdout=folder / f"{job_id}.out", stderr=folder / f"{job_id}.err")

    def result(self):
        raise self.error


def test_a_restart_after_the_submitter_was_killed_waits_for_its_running_jobs(make_cfg, tmp_path, caplog):
    from coordchannels.train.grid import Job
    from coordchannels.train.submissions import read_submitted, reattach, record_path, record_submission

    cfg = make_cfg("task=ecg")
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])  # still training
    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # killed, or ended without finishing
    gone.wait()
    jobs = [Job("nimeshanet", "study", 42, 1), Job("nimeshanet", "study", 42, 2)]
    with caplog.at_level("INFO"):
        record_submission(cfg, jobs, [FakeSubmitted(str(p.pid), tmp_path) for p in (running, gone)], "local")
        # ... the submitter is killed here (kill -9): the record is what the restart has
        assert [e.job for e in read_submitted(cfg)] == jobs
        assert f"to cancel them: kill {running.pid} {gone.pid}" in caplog.text
        caplog.clear()
        left = reattach(cfg, jobs, lambda some: some[1:], poll_s=0.05)  # the running one finishes its job
    assert running.poll() is not None  # waited for it, did not submit it beside itself
    assert left == jobs[1:] and not record_path(cfg).exists()
    assert f"still running: nimeshanet/study seed 42 fold 1 [{running.pid}]" in caplog.text
    assert f"kill {running.pid}" in caplog.text
    assert f"fold 2 [submitit job {gone.pid}, submitted" in caplog.text and "ended without finishing" in caplog.text


def test_a_job_whose_process_ended_without_a_result_is_not_called_finished(tmp_path):
    from submitit.core.utils import UncompletedJobError

    from coordchannels.train.grid import Job
    from coordchannels.train.submit import outcome

    lost = FakeSubmitted("123", tmp_path, "FINISHED", UncompletedJobError("Job 123 has not produced any output"))
    ended = outcome(Job("nimeshanet", "study", 42, 1), lost)
    assert "state FINISHED" not in ended.error and "not finished; its process ended" in ended.error
