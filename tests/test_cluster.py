"""The job grid fanned out through Hydra's submitit launcher (coordchannels.train.fanout), for real
on this machine: `submitit_local` starts every job in its own process, as `slurm` does on a
cluster. A tiny ECG grid on generated data (tests/test_train.py's fake loader) must give the
serial run's logs and tables; jobs started at the same instant must lose nothing; the `slurm`
config must give sbatch the settings asked for (checked with a stand-in `sbatch`, no cluster)."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from coordchannels.pipeline import run_stages
from coordchannels.settings import SettingError
from coordchannels.train import fanout
from coordchannels.train.record import job_record_path
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
    "+task.data.fake_n=60",
    "+task.data.fake_seed=0",
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
    """`task.loader`: tests.helpers.fake_loader, failing as COORDCHANNELS_TEST_FAIL asks."""
    data = fake_loader(cfg, arm, device)
    wanted = os.environ.get(FAIL)
    if not wanted or wanted.split(",")[0] != arm.name:
        return data
    fold = int(wanted.split(",")[1])
    flaky = FlakyData(data.x, data.y, data.fold_of, data.target_names, data.target_stats_samples)
    flaky.fail_fold = fold
    flaky.checkpoint = Path(cfg.train.run_dir) / "checkpoints" / "NimeshaNet" / f"{arm.name}_seed_42_fold_{fold}.pt"
    return flaky


def fan_out(root: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m coordchannels.train.fanout` of the tiny grid with the submitit_local launcher."""
    command = [
        sys.executable,
        "-m",
        "coordchannels.train.fanout",
        *TINY,
        f"paths.root_dir={root}",
        "stages=[train,stats,manifest]",
        "hydra/launcher=submitit_local",
    ]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def serial_run(root: Path, *overrides: str):
    cfg = compose_config([*TINY, f"paths.root_dir={root}", "train.n_jobs=1", *overrides])
    run_stages(cfg)
    return cfg


def read_record(cfg, arm, fold) -> dict:
    from coordchannels.train import Job

    return json.loads(job_record_path(cfg, Job("nimeshanet", arm, 42, fold)).read_text())


# ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # about two minutes on two cores: several processes each train tiny jobs
def test_fanned_out_jobs_match_the_serial_run_and_a_rerun_resumes_only_the_failed_one(tmp_path):
    root = tmp_path / "fanout"
    first = fan_out(root, env={**os.environ, FAIL: "study,2"})
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
    assert stdout.parent.parent.name == ".submitit" and stderr.exists()
    assert "simulated failure in the second epoch" in stdout.read_text()

    second = fan_out(root)  # the same command: only the unfinished job goes out, and resumes
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    sweeps = sorted((root / "data" / "logs" / "hydra" / "multirun").iterdir())
    summaries = [json.loads((s / "fanout.json").read_text()) for s in sweeps]
    assert [len(s["jobs"]) for s in summaries] == [4, 1]
    assert summaries[1]["jobs"][0]["job"] == "nimeshanet/study seed 42 fold 2"
    assert "resuming after epoch 1" in next((sweeps[1] / "0").glob("*.log")).read_text()

    serial = serial_run(tmp_path / "serial", "stages=[train,stats,manifest]")
    cluster = compose_config([*TINY, f"paths.root_dir={root}"])
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
def _train_at_once(barrier, cfg, results) -> None:
    barrier.wait()
    try:
        results.put(("ok", fanout.train_one_job(cfg)))
    except Exception as exc:  # reported to the test, which fails on it
        results.put(("error", repr(exc)))


def test_jobs_started_at_the_same_instant_in_one_run_folder_lose_nothing(tmp_path):
    root = tmp_path / "shared"
    cfgs = [
        compose_config(
            [
                *TINY,
                f"paths.root_dir={root}",
                "stages=[train]",
                f"train.arms=[{arm}]",
                f"train.folds=[{fold}]",
                "+fanout.seed=42",
            ]
        )
        for arm, fold in JOBS
    ]
    # Processes forked from a server that has imported the trainer once (what the trainer imports
    # lazily too), so that they start together instead of one import after another.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.test_cluster", "torch._dynamo"])
    barrier, results = context.Barrier(len(cfgs)), context.Queue()
    workers = [context.Process(target=_train_at_once, args=(barrier, cfg, results)) for cfg in cfgs]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=300) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert [status for status, _ in outcomes] == ["ok"] * len(cfgs), outcomes
    assert len({info["pid"] for _, info in outcomes}) == len(cfgs)

    run = compose_config([*TINY, f"paths.root_dir={root}", "stages=[train]"])
    logs = Path(run.train.run_dir) / "logs"
    assert not list(logs.glob("train.*"))  # jobs leave the stage's shared files alone
    serial = serial_run(tmp_path / "serial", "stages=[train]")
    for arm, fold in JOBS:
        name = Path("NimeshaNet") / f"{arm}_set_fold_{fold}_log.csv"
        assert (Path(run.train.logs_dir) / name).read_bytes() == (Path(serial.train.logs_dir) / name).read_bytes()
        assert read_record(run, arm, fold)["fingerprint"] == read_record(serial, arm, fold)["fingerprint"]
    assert not list(Path(run.train.run_dir).rglob("*.part"))
    # The train stage over the whole grid, as the submitting process runs it: every job is done,
    # and the stage's files are written once.
    before = {arm_fold: read_record(run, *arm_fold)["pid"] for arm_fold in JOBS}
    assert run_stages(run) == ["train"]
    assert {arm_fold: read_record(run, *arm_fold)["pid"] for arm_fold in JOBS} == before
    assert len(json.loads((logs / "train.time.json").read_text())) == 1
    assert len(json.loads((logs / "train.outputs.json").read_text())["sizes"]) == len(JOBS)
    assert (logs / "train.inputs.json").is_file() and (logs / "train.config.yaml").is_file()


# ---------------------------------------------------------------------------------------------
def hydra_config(*overrides: str):
    """The app's config with its hydra node (the launcher), as `python -m coordchannels.train.fanout` composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="coordchannels.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


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


def test_the_slurm_config_gives_sbatch_the_settings_asked_for(tmp_path, fake_slurm):
    cfg = hydra_config(
        "task=ecg",
        f"paths.root_dir={tmp_path}",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=mylab",
        "hydra.launcher.timeout_min=30",
        "hydra.launcher.array_parallelism=2",
    )
    launcher = cfg.hydra.launcher
    fanout.check_launcher("slurm", launcher)
    params = OmegaConf.to_container(launcher, resolve=True)
    assert params.pop("_target_").endswith(".SlurmLauncher")
    executor = fanout.submitit_executor(params, "slurm")
    jobs = executor.map_array(abs, [-1, -2, -3, -4])  # four jobs: one array of four tasks
    assert [j.job_id for j in jobs] == ["4242_0", "4242_1", "4242_2", "4242_3"]
    [script] = [p.read_text() for p in fake_slurm.iterdir()]
    flags = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", script, flags=re.M))
    assert flags["partition"] == "gpu" and flags["account"] == "mylab"
    assert flags["gpus-per-node"] == "1" and flags["cpus-per-task"] == "2" and flags["mem"] == "16GB"
    assert flags["time"] == "30" and flags["array"] == "0-3%2"  # 4 tasks, at most 2 at once
    assert flags["job-name"] == "train_ecg"
    assert str(tmp_path / "data" / "logs" / "hydra" / "multirun") in flags["output"]  # submitit's logs
    assert "--signal=USR2@120" in script  # the warning before the time limit, for the requeue


def test_a_required_launcher_value_not_given_is_a_clear_error():
    cfg = hydra_config("task=ecg", "hydra/launcher=slurm")
    with pytest.raises(
        SettingError,
        match=r"hydra/launcher=slurm needs hydra.launcher.partition: add "
        r"hydra.launcher.partition=<value>",
    ):
        fanout.check_launcher("slurm", cfg.hydra.launcher)


def test_slurm_without_sbatch_is_refused_before_anything_runs(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    cfg = hydra_config("task=ecg", "hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    with pytest.raises(SettingError, match="sbatch"):
        fanout.check_launcher("slurm", cfg.hydra.launcher)


def test_each_job_repeats_the_users_overrides_and_selects_one_job():
    from coordchannels.train import Job

    given = [
        "task=ecg",
        "stages=[train,stats]",
        "train.epochs=3",
        "train.seeds=[1,2]",
        "train.arms=[study]",
        "+train.folds=[1,2]",
    ]
    overrides = fanout.repeated_overrides(given)
    assert overrides == ["task=ecg", "train.epochs=3", "train.seeds=[1,2]"]
    fan = fanout.FanOut(launcher=None, name="slurm", sweep_dir=Path("."), overrides=overrides)

    assert fan.job_overrides(Job("nimeshanet", "study", 2, 5)) == [
        "task=ecg",
        "train.epochs=3",
        "train.seeds=[1,2]",
        "stages=[train]",
        "train.models=[nimeshanet]",
        "train.arms=[study]",
        "train.folds=[5]",
        "+fanout.seed=2",
    ]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_launcher_chooses_between_the_app_and_the_fan_out():
    def dry_run(*args: str) -> str:
        command = ["make", "-n", "-s", "-C", str(REPO), "-o", ".venv/.installed", "TASK=ecg", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout

    assert "-m coordchannels.train.fanout hydra/launcher=slurm task=$t" in dry_run("reproduce", "LAUNCHER=slurm")
    assert "-m coordchannels.train.fanout hydra/launcher=submitit_local task=$t stages=[train]" in dry_run(
        "train", "LAUNCHER=submitit_local"
    )
    assert "-m coordchannels task=$t" in dry_run("reproduce") and "fanout" not in dry_run("reproduce")
