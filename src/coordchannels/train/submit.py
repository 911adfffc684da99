"""The train stage with `train.executor=submitit`: every unfinished job (model, arm, seed, fold) of
the grid runs as its own submitit job, a SLURM array task (`train/submitit=slurm`) or a process on
this machine (`train/submitit=local`); every other stage runs here, in the runner.

    python -m coordchannels task=ecg train.executor=submitit train/submitit=slurm train.submitit.slurm_partition=gpu

(`make reproduce TASK=ecg LAUNCHER=slurm ARGS="train.submitit.slurm_partition=gpu"`). The train
stage is the runner's stage as for a local run; its work, `submit_jobs`, submits through submitit's
public API (`AutoExecutor`, `update_parameters`, `map_array`, `result`) the jobs whose log and
record are not finished, waits for all of them, and names every failed one with its submitit
logs. Rerunning the command submits only what is still unfinished; an interrupted job resumes from
its last epoch checkpoint, and so does one that SLURM preempts or stops at its time limit: the
submitted function is a `submitit.helpers.Checkpointable`, which submitit requeues with the same
arguments (up to `train.submitit.max_num_timeout` times at the time limit). The submitted job ids
are recorded in the run folder: a submitter killed while its jobs run is restarted with the same
command, which waits for those still running instead of submitting them again, and says how to
cancel them (coordchannels.train.submissions).

Concurrency: the jobs start at once on a shared filesystem and write only their own files: the
per-fold log, job record, checkpoint and lock (coordchannels.train.record), each written to a
temporary name and renamed, and submitit's folder of the job. A job does not go through the
runner: the runner's files for the stage (`<run_dir>/logs/train.log`, `train.config.yaml`,
`train.inputs.json`, `train.outputs.json` and the read-modify-write `train.time.json`) would be
written by every job at once and lose updates. The runner in this process, the one writer, writes
them once every job has finished, as for a local run, with the wall time of the whole submission.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import submitit
from omegaconf import DictConfig, OmegaConf

from coordchannels.entry import UserError
from coordchannels.io import write_text
from coordchannels.settings import SettingError, choice, plain
from coordchannels.stages import check_upstream, stage_spec
from coordchannels.train.device import threads_per_job, torch_threads
from coordchannels.train.grid import Job, job_grid
from coordchannels.train.job import run_job
from coordchannels.train.paths import job_log_path
from coordchannels.train.record import finished_epochs, job_fingerprint, where_it_ran
from coordchannels.train.submissions import reattach, record_submission, write_submitted

log = logging.getLogger(__name__)

# submitit's clusters the jobs can go to: SLURM, or processes on this machine.
CLUSTERS = ("local", "slurm")
# The keys of train.submitit read here; every other key is a parameter of submitit's
# AutoExecutor.update_parameters, by its submitit name (SLURM's own with the `slurm_` prefix).
OWN_KEYS = ("cluster", "folder", "max_num_timeout")


class SubmittedJobsFailed(UserError):
    """Submitted jobs failed or did not finish; the message names each with its logs."""


@dataclass
class Outcome:
    """How one submitted job ended: `error` is None when it finished."""

    job: Job
    submitit_id: str
    stdout: str
    stderr: str
    error: str | None = None
    ran: dict = field(default_factory=dict)  # log, host, pid, device, launcher, seconds (run_submitted_job)


# --------------------------------------------------------------------------------------------
# One submitted job, in its own process
# --------------------------------------------------------------------------------------------
class TrainJob(submitit.helpers.Checkpointable):
    """The function every submitted job runs: `TrainJob()(cfg, job)`. Checkpointable: a job that
    SLURM preempts or stops at its time limit is requeued by submitit with the same arguments, and
    resumes from its last epoch checkpoint as any interrupted job does."""

    def __call__(self, cfg: dict, job: Job) -> dict:
        return run_submitted_job(OmegaConf.create(cfg), job)


def run_submitted_job(cfg: DictConfig, job: Job) -> dict:
    """One job, trained as the train stage trains it (same threads, same numbers), after checking
    that the data it reads are still those the submitter checked. Returns where it ran; progress
    and a failure's traceback go to the job's stdout (submitit's log)."""
    _log_to_stdout()
    try:
        check_upstream(cfg, stage_spec(cfg, "train"))
        start = time.perf_counter()
        with torch_threads(threads_per_job(cfg, 1)):
            path = run_job(cfg, job.model, job.arm, job.seed, job.fold)
        return {"log": str(path), **where_it_ran(), "seconds": round(time.perf_counter() - start, 2)}
    except Exception:
        log.exception("%s: the job failed", job)  # submitit keeps the exception for the submitter
        raise


def _log_to_stdout() -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)


# --------------------------------------------------------------------------------------------
# The train stage's work: submit, wait, report
# --------------------------------------------------------------------------------------------
def unfinished(cfg: DictConfig, jobs: list[Job]) -> list[Job]:
    """The jobs without a finished log and record of this configuration (all of them with
    overwrite=true). A log of another configuration is refused here, before anything is submitted."""
    if cfg.overwrite:
        return list(jobs)
    epochs = int(cfg.train.epochs)
    return [
        job for job in jobs if finished_epochs(cfg, job, job_log_path(cfg, job), job_fingerprint(cfg, job)) != epochs
    ]


def submit_jobs(cfg: DictConfig) -> None:
    """Submit the grid's unfinished jobs through submitit (`train.submitit`), wait for them, and
    fail naming every job that did not finish."""
    jobs = job_grid(cfg)
    # Jobs of an earlier submission still running are waited for, not submitted beside themselves.
    todo = reattach(cfg, unfinished(cfg, jobs), lambda some: unfinished(cfg, some))
    cluster = str(cfg.train.submitit.cluster)
    log.info(
        "%d of %d jobs to run through submitit (cluster %s; %d finished are kept)",
        len(todo),
        len(jobs),
        cluster,
        len(jobs) - len(todo),
    )
    if todo:
        folder = submission_folder(cfg)
        start = time.perf_counter()
        outcomes = run_submitted(cfg, todo, folder)
        write_summary(folder, cluster, outcomes, time.perf_counter() - start)
        failed = [o for o in outcomes if o.error]
        if failed:
            raise SubmittedJobsFailed(
                f"{len(failed)} of {len(todo)} training jobs failed; rerun the same command to submit them again "
                "(finished jobs are kept; each resumes from its last epoch checkpoint):\n"
                + "\n".join(
                    f"  {o.job} [submitit job {o.submitit_id}]: {o.error}\n    stdout {o.stdout}\n    stderr {o.stderr}"
                    for o in failed
                )
            )
    left = unfinished(cfg, jobs)
    if left:
        raise SubmittedJobsFailed(
            f"{len(left)} jobs reported success but left no finished log and record: {', '.join(map(str, left))}"
        )


def submission_folder(cfg: DictConfig) -> Path:
    """`<train.submitit.folder>/<date>_<time>/`, new for every submission: submitit's files of its
    jobs (each one's stdout `<job id>_0_log.out`, stderr `<job id>_0_log.err`, pickles and, on
    SLURM, the sbatch script) go in it."""
    base = Path(str(cfg.train.submitit.folder)) / time.strftime("%Y-%m-%d_%H-%M-%S")
    folder, n = base, 1
    while folder.exists():
        folder, n = base.with_name(f"{base.name}_{n}"), n + 1
    return folder


def submitit_executor(cfg: DictConfig, folder: Path) -> submitit.AutoExecutor:
    """submitit's executor of `train.submitit` writing into `folder`."""
    params = plain(cfg.train.submitit)
    cluster = choice(params.pop("cluster"), CLUSTERS, "train.submitit.cluster")
    params.pop("folder", None)
    timeouts = params.pop("max_num_timeout", None)
    init = {} if timeouts is None else {f"{cluster}_max_num_timeout": int(timeouts)}
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **init)
    try:
        executor.update_parameters(**params)  # None = not set
    except NameError as exc:  # submitit's list of what is allowed
        raise SettingError(f"train.submitit: a key submitit does not know:\n{exc}") from None
    return executor


def run_submitted(cfg: DictConfig, jobs: list[Job], folder: Path) -> list[Outcome]:
    """Submit `jobs` (one array of them on SLURM), record their ids in the run folder (a restart
    finds them there: coordchannels.train.submissions) and wait for every one."""
    executor = submitit_executor(cfg, folder)
    local = executor.cluster == "local"
    # Resolved once here, so that every job sees the same paths and values.
    resolved = OmegaConf.to_container(cfg, resolve=True)
    submitted = executor.map_array(TrainJob(), [resolved] * len(jobs), jobs)
    for i, (job, s) in enumerate(zip(jobs, submitted)):
        log.info("#%d %s: submitit job %s, output %s", i, job, s.job_id, s.paths.stdout)
    record_submission(cfg, jobs, submitted, executor.cluster)
    outcomes = {}
    try:
        for done in submitit.helpers.as_completed(submitted, poll_frequency=1 if local else 15):
            job = jobs[submitted.index(done)]
            outcomes[job] = ended = outcome(job, done)
            log.info(
                "[%d/%d] %s: %s",
                len(outcomes),
                len(jobs),
                job,
                f"FAILED ({ended.error}); logs {ended.stdout}, {ended.stderr}"
                if ended.error
                else f"finished on {ended.ran.get('host')} ({ended.ran.get('device')}) in "
                f"{ended.ran.get('seconds', float('nan')):.0f} s",
            )
    except KeyboardInterrupt:
        if local:  # the processes would go on training beside a rerun
            for s in submitted:
                s.cancel(check=False)
            log.warning("interrupted: the %d local jobs were stopped", len(submitted))
            write_submitted(cfg, [])
        else:
            log.warning(
                "interrupted: the jobs go on in the queue (array %s; `scancel` stops them); "
                "rerunning the command submits those still unfinished",
                submitted[0].job_id.split("_")[0],
            )
        raise
    write_submitted(cfg, [])  # every job has ended
    return [outcomes[job] for job in jobs]


def outcome(job: Job, submitted) -> Outcome:
    """How a finished submitit job ended: the job's return value, or why it has none."""
    paths = submitted.paths
    ended = Outcome(job, str(submitted.job_id), str(paths.stdout), str(paths.stderr))
    try:
        ended.ran = submitted.result()
    except Exception as exc:  # the job's error, a killed process, a time-out past its requeues
        state = _state(submitted)
        # submitit says FINISHED (local) or COMPLETED of a process that exited, finished job or not
        ended_how = "its process ended" if state in ("FINISHED", "COMPLETED") else f"scheduler state {state}"
        ended.error = f"{error_line(exc)} (not finished; {ended_how})"
    return ended


def error_line(exc: Exception) -> str:
    """One line for an exception of `result()`: for an error raised in the job, the last line of
    the job's traceback, which submitit's message holds between two lines of dashes
    (`ValueError: ...`); else the exception's type and the last line of its message."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    rules = [i for i, line in enumerate(lines) if set(line.strip()) == {"-"}]
    if len(rules) >= 2 and rules[1] > rules[0] + 1:
        return lines[rules[1] - 1].strip()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def _state(submitted) -> str:
    try:
        return str(submitted.state)
    except Exception:  # the scheduler cannot be asked
        return "unknown"


def write_summary(folder: Path, cluster: str, outcomes: list[Outcome], seconds: float) -> None:
    """`<submission folder>/jobs.json`: the cluster, wall time, and per job its submitit id, logs
    and how it ended."""
    summary = {
        "cluster": cluster,
        "seconds": round(seconds, 2),
        "jobs": [
            {
                "job": str(o.job),
                "submitit_id": o.submitit_id,
                "stdout": o.stdout,
                "stderr": o.stderr,
                "error": o.error,
                **(o.ran or {}),
            }
            for o in outcomes
        ],
    }
    write_text(folder / "jobs.json", json.dumps(summary, indent=1, default=str) + "\n")


# --------------------------------------------------------------------------------------------
# Before any stage runs
# --------------------------------------------------------------------------------------------
def check_submitit(cfg: DictConfig) -> None:
    """Refuse, before any stage runs, a `train.submitit` with a required value (`???`) not given,
    and SLURM where it cannot be reached."""
    params = cfg.train.submitit
    cluster = choice(str(params.cluster), CLUSTERS, "train.submitit.cluster")
    missing = sorted(
        k if k.startswith("train.submitit.") else f"train.submitit.{k}" for k in OmegaConf.missing_keys(params)
    )
    if missing:
        raise SettingError(
            f"train.executor=submitit on the {cluster} cluster (train/submitit={cluster}) needs "
            f"{', '.join(missing)}: add {' '.join(f'{k}=<value>' for k in missing)} to the command "
            "(to ARGS with make), e.g. train.submitit.slurm_partition=gpu (`sinfo` lists the partitions)"
        )
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise SettingError(
            "train/submitit=slurm submits with SLURM's sbatch, which this machine does not have on its "
            "PATH: run the command on the cluster's login node (train/submitit=local runs the same jobs "
            "as processes on this machine)"
        )
