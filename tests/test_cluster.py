"""The job grid through submitit (`train.executor=submitit`, coordchannels.train.submit), for real
on this machine: `train/submitit=local` starts every job in its own process, as `slurm` does on a
cluster. A tiny ECG grid on generated data (tests/test_train.py's fake loader) must give the
serial run's logs and tables; jobs started at the same instant must lose nothing; the `slurm`
config must give sbatch the settings asked for (checked with a stand-in `sbatch`, no cluster)."""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import submitit
from omegaconf import OmegaConf, open_dict

from coordchannels.pipeline import run_stages
from coordchannels.settings import SettingError
from coordchannels.train import Job, submit
from coordchannels.train.record import job_record_path
from coordchannels.train.submissions import record_path
from tests.conftest import REPO, compose_config
from tests.helpers import LENGTH, FakeData, fake_loader

# One model, two arms, two folds: four jobs of four epochs (the statistics need four) on 60 samples.
TINY = [
    "task=ecg",
    "train.epochs=4",
    "train.device=cpu",
    "train.num_threads=1",
    "train.models=[nimeshanet]",
    f"task.models.nimeshanet.net.length={LENGTH}",
    "train.eval_batch_size=16",
    "task.loader=tests.test_cluster.flaky_loader",
    "task.data.n_folds=2",
    "task.train_after=[]",
    "stats.n_resamples=200",
]
JOBS = [("control", 1), ("control", 2), ("study", 1), ("study", 2)]
TABLES = [
    "comparison_table.csv",
    "comparison_table.md",
    "comparison_table.tex",
    "fold_values.csv",
    "fold_differences.csv",
    "learning_curves.csv",
]
# "<arm>,<fold>": that job fails in its second epoch, after its first epoch's checkpoint.
FAIL = "COORDCHANNELS_TEST_FAIL"


class FlakyData(FakeData):
    """FakeData whose batches fail once the job's checkpoint exists (COORDCHANNELS_TEST_FAIL)."""

    checkpoint: Path | None = None

    def split(self, fold):
        self.failing = self.checkpoint is not None and fold == self.fail_fold
        return super().split(fold)

    def inputs(self, idx):
        if getattr(self, "failing", False) and self.checkpoint.exists():
            raise RuntimeError("simulated failure in the second epoch")
        return super().inputs(idx)


def flaky_loader(cfg, arm, device):
    """`task.loader`: tests.helpers.fake_loader of 60 samples, failing as COORDCHANNELS_TEST_FAIL
    asks. (Its sizes are set here: the app refuses settings its config lacks, `+task.data.fake_n`.)"""
    sized = copy.deepcopy(cfg)
    with open_dict(sized):
        sized.task.data.fake_n, sized.task.data.fake_seed = 60, 0
    data = fake_loader(sized, arm, device)
    wanted = os.environ.get(FAIL)
    if not wanted or wanted.split(",")[0] != arm.name:
        return data
    fold = int(wanted.split(",")[1])
    flaky = FlakyData(data.x, data.y, data.fold_of, data.target_names, data.target_stats_samples)
    flaky.fail_fold = fold
    flaky.checkpoint = Path(cfg.train.run_dir) / "checkpoints" / "NimeshaNet" / f"{arm.name}_seed_42_fold_{fold}.pt"
    return flaky


SUBMITIT = ["train.executor=submitit", "train/submitit=local"]


def submit_run(root: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m coordchannels` of the tiny grid with train.executor=submitit on the local cluster."""
    command = [
        sys.executable,
        "-m",
        "coordchannels",
        *TINY,
        f"paths.root_dir={root}",
        "stages=[train,stats,manifest]",
        *SUBMITIT,
    ]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def serial_run(root: Path, *overrides: str):
    cfg = compose_config([*TINY, f"paths.root_dir={root}", "train.n_jobs=1", *overrides])
    run_stages(cfg)
    return cfg


def read_record(cfg, arm, fold) -> dict:
    return json.loads(job_record_path(cfg, Job("nimeshanet", arm, 42, fold)).read_text())


# ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # about two minutes on two cores: several processes each train tiny jobs
def test_submitted_jobs_match_the_serial_run_and_a_rerun_resumes_only_the_failed_one(tmp_path):
    root = tmp_path / "submitit"
    first = submit_run(root, env={**os.environ, FAIL: "study,2"})
    out = first.stdout + first.stderr
    assert first.returncode != 0
    # The failed job is named with its submitit logs, which hold its traceback.
    assert "1 of 4 training jobs failed" in out
    failed = re.search(
        r"nimeshanet/study seed 42 fold 2 \[submitit job \S+\]: RuntimeError: simulated failure.*\n"
        r"\s+stdout (\S+)\n\s+stderr (\S+)",
        out,
    )
    assert failed, out[-3000:]
    stdout, stderr = Path(failed.group(1)), Path(failed.group(2))
    cluster = compose_config([*TINY, f"paths.root_dir={root}", *SUBMITIT])
    folder = Path(cluster.train.submitit.folder)
    assert folder == Path(cluster.train.run_dir) / "submitit"
    assert stdout.is_relative_to(folder) and stderr.exists()
    assert "simulated failure in the second epoch" in stdout.read_text()
    assert not record_path(cluster).exists()  # every submitted job has ended

    second = submit_run(root)  # the same command: only the unfinished job goes out, and resumes
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    submissions = sorted(p for p in folder.iterdir() if p.is_dir())
    summaries = [json.loads((s / "jobs.json").read_text()) for s in submissions]
    assert [len(s["jobs"]) for s in summaries] == [4, 1]
    assert [s["cluster"] for s in summaries] == ["local", "local"]
    [resumed] = summaries[1]["jobs"]
    assert resumed["job"] == "nimeshanet/study seed 42 fold 2" and resumed["error"] is None
    assert Path(resumed["stdout"]).is_relative_to(submissions[1])
    assert "resuming after epoch 1" in Path(resumed["stdout"]).read_text()

    serial = serial_run(tmp_path / "serial", "stages=[train,stats,manifest]")
    pids = set()
    for arm, fold in JOBS:
        name = Path("NimeshaNet") / f"{arm}_set_fold_{fold}_log.csv"
        assert (Path(cluster.train.logs_dir) / name).read_bytes() == (Path(serial.train.logs_dir) / name).read_bytes()
        record = read_record(cluster, arm, fold)
        assert record["launcher"] == "submitit_local" and record["device"] == "cpu"
        pids.add(record["pid"])
    assert len(pids) == 4 and os.getpid() not in pids  # four processes, none of them this one
    results, serial_results = Path(cluster.stats.out_dir), Path(serial.stats.out_dir)
    for table in TABLES:
        assert (results / table).read_bytes() == (serial_results / table).read_bytes(), table
    listing = {p.relative_to(results).as_posix() for p in results.rglob("*")}
    assert listing == {p.relative_to(serial_results).as_posix() for p in serial_results.rglob("*")}
    manifest = json.loads((results / "manifest.json").read_text())
    assert manifest["training_jobs"]["launchers"] == ["submitit_local"]
    assert sorted(j["pid"] for j in manifest["training_jobs"]["jobs"]) == sorted(pids)
    # The stage's own files were written once, by the submitting process, for the whole grid.
    logs = Path(cluster.train.run_dir) / "logs"
    assert len(json.loads((logs / "train.outputs.json").read_text())["sizes"]) == 4
    assert len(json.loads((logs / "train.time.json").read_text())) == 1


# ---------------------------------------------------------------------------------------------
class InProcess:
    """A stand-in for submitit's executor: keeps what `map_array` is given and runs each job here,
    at once, as a job of the local cluster would run it."""

    cluster = "local"

    def __init__(self, folder: Path):
        self.folder, self.calls = folder, []

    def map_array(self, fn, cfgs, jobs):
        self.calls.append((fn, list(cfgs), list(jobs)))
        return [Ran(fn, c, j, self.folder / str(900000 + i)) for i, (c, j) in enumerate(zip(cfgs, jobs))]


class Ran:
    """A submitit job that has ended: what `submit` reads of it."""

    state = "FINISHED"

    def __init__(self, fn, cfg, job, folder: Path):
        self.job_id, self.value = folder.name, fn(cfg, job)
        self.paths = SimpleNamespace(folder=folder, stdout=folder / "log.out", stderr=folder / "log.err")

    def done(self) -> bool:
        return True

    def result(self):
        return self.value


def test_the_train_stage_submits_only_unfinished_jobs_each_with_the_resolved_config(tmp_path, monkeypatch):
    overrides = [*TINY, f"paths.root_dir={tmp_path}", "stages=[train]", "train.arms=[study]"]
    serial = compose_config([*overrides, "train.folds=[1]"])
    assert run_stages(serial) == ["train"]  # fold 1 finished beforehand
    cfg = compose_config([*overrides, *SUBMITIT])
    executor = InProcess(tmp_path / "jobs")
    monkeypatch.setattr(submit, "submitit_executor", lambda cfg, folder: executor)

    assert run_stages(cfg) == ["train"]
    [(fn, cfgs, jobs)] = executor.calls
    assert jobs == [Job("nimeshanet", "study", 42, 2)]  # the finished job is not submitted again
    # Every job gets the submitter's config, resolved once (paths and values fixed), and is
    # requeued by submitit with the same arguments when preempted or at its time limit.
    assert cfgs == [OmegaConf.to_container(cfg, resolve=True)]
    assert isinstance(fn, submitit.helpers.Checkpointable)
    again = fn.checkpoint(cfgs[0], jobs[0])
    assert again.function is fn and again.args == (cfgs[0], jobs[0])
    assert not record_path(cfg).exists()  # the record of running jobs is empty once all ended
    [summary] = [json.loads(p.read_text()) for p in Path(cfg.train.submitit.folder).glob("*/jobs.json")]
    assert [j["job"] for j in summary["jobs"]] == ["nimeshanet/study seed 42 fold 2"]
    assert summary["jobs"][0]["error"] is None and summary["jobs"][0]["launcher"] == "local"
    logs = Path(cfg.train.run_dir) / "logs"
    assert len(json.loads((logs / "train.outputs.json").read_text())["sizes"]) == 2
    for fold in (1, 2):
        name = Path("NimeshaNet") / f"study_set_fold_{fold}_log.csv"
        assert (Path(cfg.train.logs_dir) / name).is_file()


# ---------------------------------------------------------------------------------------------
def _train_at_once(barrier, cfg, job, results) -> None:
    barrier.wait()
    try:
        results.put(("ok", submit.TrainJob()(cfg, job)))
    except Exception as exc:  # reported to the test, which fails on it
        results.put(("error", repr(exc)))


def test_jobs_started_at_the_same_instant_in_one_run_folder_lose_nothing(tmp_path):
    root = tmp_path / "shared"
    run = compose_config([*TINY, f"paths.root_dir={root}", "stages=[train]", *SUBMITIT])
    resolved = OmegaConf.to_container(run, resolve=True)  # what every submitted job is given
    jobs = [Job("nimeshanet", arm, 42, fold) for arm, fold in JOBS]
    # Processes forked from a server that has imported the trainer once (what the trainer imports
    # lazily too), so that they start together instead of one import after another.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.test_cluster", "torch._dynamo"])
    barrier, results = context.Barrier(len(jobs)), context.Queue()
    workers = [context.Process(target=_train_at_once, args=(barrier, resolved, job, results)) for job in jobs]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=300) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert [status for status, _ in outcomes] == ["ok"] * len(jobs), outcomes
    assert len({info["pid"] for _, info in outcomes}) == len(jobs)

    logs = Path(run.train.run_dir) / "logs"
    assert not list(logs.glob("train.*"))  # jobs leave the stage's shared files alone
    serial = serial_run(tmp_path / "serial", "stages=[train]")
    for arm, fold in JOBS:
        name = Path("NimeshaNet") / f"{arm}_set_fold_{fold}_log.csv"
        assert (Path(run.train.logs_dir) / name).read_bytes() == (Path(serial.train.logs_dir) / name).read_bytes()
        assert read_record(run, arm, fold)["fingerprint"] == read_record(serial, arm, fold)["fingerprint"]
    assert not list(Path(run.train.run_dir).rglob("*.part"))
    # The train stage over the whole grid, as the submitting process runs it: every job is done
    # (nothing is submitted), and the stage's files are written once.
    before = {arm_fold: read_record(run, *arm_fold)["pid"] for arm_fold in JOBS}
    assert run_stages(run) == ["train"]
    assert {arm_fold: read_record(run, *arm_fold)["pid"] for arm_fold in JOBS} == before
    assert not Path(run.train.submitit.folder).exists()
    assert len(json.loads((logs / "train.time.json").read_text())) == 1
    assert len(json.loads((logs / "train.outputs.json").read_text())["sizes"]) == len(JOBS)
    assert (logs / "train.inputs.json").is_file() and (logs / "train.config.yaml").is_file()


# ---------------------------------------------------------------------------------------------
def test_a_wrong_executor_is_refused_naming_the_setting_and_its_values(tmp_path):
    cfg = compose_config(["task=ecg", f"paths.root_dir={tmp_path}", "train.executor=slurm"])
    with pytest.raises(
        SettingError, match=re.escape("train.executor must be one of ['serial', 'joblib', 'submitit'], got 'slurm'")
    ):
        run_stages(cfg)
    assert list(tmp_path.iterdir()) == []  # refused before anything is written


def test_serial_runs_one_job_at_a_time_whatever_n_jobs_says():
    from coordchannels.train.device import jobs_side_by_side

    cfg = compose_config(["task=ecg", "train.n_jobs=4", "train.device=cpu"])
    assert jobs_side_by_side(cfg, 20) == 4  # joblib, the default
    cfg.train.executor = "serial"
    assert jobs_side_by_side(cfg, 20) == 1


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`srun` and `sbatch` stand-ins on the PATH: sbatch keeps the script it is given and answers
    as SLURM does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = tmp_path / "sbatch_scripts"
    scripts.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" "{scripts}/$(date +%s%N).sh"\necho "Submitted batch job 4242"\n'
    )
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return scripts


SLURM = ["task=ecg", "train.executor=submitit", "train/submitit=slurm"]


def test_the_slurm_config_gives_sbatch_the_settings_asked_for(tmp_path, fake_slurm):
    cfg = compose_config(
        [
            *SLURM,
            f"paths.root_dir={tmp_path}",
            "train.submitit.slurm_partition=gpu",
            "train.submitit.slurm_account=mylab",
            "train.submitit.timeout_min=30",
            "train.submitit.slurm_array_parallelism=2",
        ]
    )
    submit.check_submitit(cfg)
    executor = submit.submitit_executor(cfg, submit.submission_folder(cfg))
    jobs = executor.map_array(abs, [-1, -2, -3, -4])  # four jobs: one array of four tasks
    assert [j.job_id for j in jobs] == ["4242_0", "4242_1", "4242_2", "4242_3"]
    [script] = [p.read_text() for p in fake_slurm.iterdir()]
    flags = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", script, flags=re.M))
    assert flags["partition"] == "gpu" and flags["account"] == "mylab"
    assert flags["gpus-per-node"] == "1" and flags["cpus-per-task"] == "2" and flags["mem"] == "16GB"
    assert flags["time"] == "30" and flags["array"] == "0-3%2"  # 4 tasks, at most 2 at once
    assert flags["job-name"] == "train_ecg"
    assert str(tmp_path / "data" / "runs" / "ecg" / "default" / "submitit") in flags["output"]  # submitit's logs
    assert "--signal=USR2@120" in script  # the warning before the time limit, for the requeue


def test_a_required_submitit_value_not_given_is_a_clear_error_before_anything_runs(tmp_path, fake_slurm):
    cfg = compose_config([*SLURM, f"paths.root_dir={tmp_path / 'root'}"])
    with pytest.raises(
        SettingError,
        match=r"needs train.submitit.slurm_partition: add train.submitit.slurm_partition=<value>",
    ):
        run_stages(cfg)
    assert not (tmp_path / "root").exists()


def test_slurm_without_sbatch_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    cfg = compose_config([*SLURM, f"paths.root_dir={tmp_path}", "train.submitit.slurm_partition=gpu"])
    with pytest.raises(SettingError, match="sbatch"):
        run_stages(cfg)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_launcher_maps_onto_the_executor_settings():
    def dry_run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = ["make", "-n", "-s", "-C", str(REPO), "-o", ".venv/.installed", "TASK=ecg", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=check)

    assert "-m coordchannels train.executor=submitit train/submitit=slurm task=$t" in (
        dry_run("reproduce", "LAUNCHER=slurm").stdout
    )
    assert "-m coordchannels train.executor=submitit train/submitit=local task=$t stages=[train]" in (
        dry_run("train", "LAUNCHER=submitit_local").stdout
    )
    local = dry_run("reproduce").stdout
    assert "-m coordchannels task=$t" in local and "submitit" not in local
    wrong = dry_run("reproduce", "LAUNCHER=slurmm", check=False)
    assert wrong.returncode != 0 and "LAUNCHER=slurmm" in wrong.stderr and "submitit_local" in wrong.stderr
