"""The train stage fanned out through Hydra's submitit launcher: every unfinished job (model, arm,
seed, fold) of the grid runs as its own job, a SLURM array task (`hydra/launcher=slurm`) or a
process on this machine (`hydra/launcher=submitit_local`); every other stage runs here.

    python -m coordchannels.train.fanout task=ecg hydra/launcher=slurm hydra.launcher.partition=gpu

(`make reproduce TASK=ecg LAUNCHER=slurm ARGS="hydra.launcher.partition=gpu"`) runs `stages` as
`python -m coordchannels` does, through the runner, with one difference: the train stage's work
is `fanout_stage`, which submits the jobs whose log and record are not finished (one Hydra
multirun job each, `stages=[train] train.models=[m] train.arms=[a] train.folds=[f] +fanout.seed=s`),
waits for all of them, and names every failed one with its submitit logs. Rerunning the command
submits only what is still unfinished; an interrupted job resumes from its last epoch checkpoint,
and so does one that SLURM preempts or stops at its time limit (submitit requeues it through the
launcher's `checkpoint`, up to `hydra.launcher.max_num_timeout` times). The submitted job ids are
recorded in the run folder: a submitter killed while its jobs run is restarted with the same
command, which waits for those still running instead of submitting them again, and says how to
cancel them (coordchannels.train.submissions).

Concurrency: the jobs start at once on a shared filesystem and write only their own files: the
per-fold log, job record, checkpoint and lock (coordchannels.train.record), each written to a
temporary name and renamed, and one Hydra output folder per job. A job does not go through the
runner: the runner's files for the stage (`<run_dir>/logs/train.log`, `train.config.yaml`,
`train.inputs.json`, `train.outputs.json` and the read-modify-write `train.time.json`) would be
written by every job at once and lose updates. A job makes the runner's checks (the training
settings; upstream data made with these settings) and trains; the runner in this process, the one
writer, writes the stage's files once every job has finished, as for a local run, with the
fan-out's wall time.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.types import HydraContext
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from coordchannels.components import complete_arms
from coordchannels.entry import UserError, hydra_entry, reports_errors
from coordchannels.io import write_text
from coordchannels.pipeline import run_stages
from coordchannels.settings import SettingError, validate_choices
from coordchannels.stages import StageContext, StageError, check_upstream, stage_spec
from coordchannels.train.device import threads_per_job, torch_threads
from coordchannels.train.grid import Job, job_grid
from coordchannels.train.job import run_job
from coordchannels.train.paths import job_log_path
from coordchannels.train.record import finished_epochs, job_fingerprint, where_it_ran
from coordchannels.train.submissions import reattach, record_submission, write_submitted

log = logging.getLogger(__name__)

# What each submitted job sets itself; the user's own values of these keys are left out of its overrides.
# The seed goes in a key of its own: narrowing train.seeds would rename a multi-seed run's logs.
JOB_KEYS = ("stages", "train.models", "train.arms", "train.folds", "fanout.seed")


class FanOutError(UserError):
    """Fanned-out jobs failed or did not finish; the message names each with its logs."""


@dataclass
class Outcome:
    """How one submitted job ended: `error` is None when it finished."""

    job: Job
    submitit_id: str
    stdout: str
    stderr: str
    error: str | None = None
    ran: dict = field(default_factory=dict)  # host, pid, device, launcher, seconds (train_one_job)


@dataclass
class FanOut:
    """Hydra's submitit launcher, set up by the app, and the user's overrides every job repeats."""

    launcher: Any  # hydra_plugins.hydra_submitit_launcher.submitit_launcher.BaseSubmititLauncher
    name: str  # the hydra/launcher choice
    overrides: list[str]
    sweep_dir: Path

    def job_overrides(self, job: Job) -> list[str]:
        return [
            *self.overrides,
            "stages=[train]",
            f"train.models=[{job.model}]",
            f"train.arms=[{job.arm}]",
            f"train.folds=[{job.fold}]",
            f"+fanout.seed={job.seed}",
        ]

    def run(self, cfg: DictConfig, jobs: list[Job]) -> list[Outcome]:
        """Submit `jobs` (one array of them on SLURM), record their ids in the run folder (a restart
        finds them there: coordchannels.train.submissions) and wait for every one."""
        import submitit

        submitted = self.submit(jobs)
        local = self.launcher._EXECUTOR == "local"
        record_submission(cfg, jobs, submitted, self.launcher._EXECUTOR)
        outcomes = {}
        try:
            for done in submitit.helpers.as_completed(submitted, poll_frequency=1 if local else 15):
                job = jobs[submitted.index(done)]
                outcomes[job] = outcome(job, done)
                ended = outcomes[job]
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

    def submit(self, jobs: list[Job]) -> list:
        """Submit one Hydra job per training job through the launcher's executor; return submitit's jobs."""
        executor = submitit_executor(self.launcher.params, self.launcher._EXECUTOR)
        # The arguments Hydra's submitit launcher gives its own jobs (see its `launch`): each runs
        # `launcher(overrides, ...)`, which composes its config and runs `train_one_job` as a Hydra job.
        args = [
            (self.job_overrides(job), "hydra.sweep.dir", i, f"job_id_for_{i}", Singleton.get_state())
            for i, job in enumerate(jobs)
        ]
        submitted = executor.map_array(self.launcher, *zip(*args))
        for i, (job, s) in enumerate(zip(jobs, submitted)):
            log.info("#%d %s: submitit job %s, output %s", i, job, s.job_id, s.paths.stdout)
        return submitted


def submitit_executor(params: dict, kind: str):
    """submitit's executor for a launcher config's parameters (`hydra.launcher.*`), built as Hydra's
    submitit launcher builds it: executor-specific keys get the executor's prefix (`slurm_partition`)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = dict(params)
    folder = params.pop("submitit_folder")
    init = {f"{kind}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}
    executor = submitit.AutoExecutor(folder=folder, cluster=kind, **init)
    common = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in common else f"{kind}_{k}": v for k, v in params.items()})
    return executor


def outcome(job: Job, submitted) -> Outcome:
    """How a finished submitit job ended: the task's return value, or why it has none."""
    paths = submitted.paths
    ended = Outcome(job, str(submitted.job_id), str(paths.stdout), str(paths.stderr))
    try:
        ended.ran = submitted.result().return_value  # a failed Hydra job raises its exception here
    except Exception as exc:  # the job's error, a killed process, a time-out past its requeues
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        state = _state(submitted)
        # submitit says FINISHED (local) or COMPLETED of a process that exited, finished job or not
        ended_how = "its process ended" if state in ("FINISHED", "COMPLETED") else f"scheduler state {state}"
        ended.error = f"{type(exc).__name__}: {lines[-1] if lines else ''} (not finished; {ended_how})"
    return ended


def _state(submitted) -> str:
    try:
        return str(submitted.state)
    except Exception:  # the scheduler cannot be asked
        return "unknown"


# --------------------------------------------------------------------------------------------
# The train stage, fanned out
# --------------------------------------------------------------------------------------------
_ACTIVE: FanOut | None = None  # set by `main` while the runner runs


def unfinished(cfg: DictConfig, jobs: list[Job]) -> list[Job]:
    """The jobs without a finished log and record of this configuration (all of them with
    overwrite=true). A log of another configuration is refused here, before anything is submitted."""
    if cfg.overwrite:
        return list(jobs)
    epochs = int(cfg.train.epochs)
    return [
        job for job in jobs if finished_epochs(cfg, job, job_log_path(cfg, job), job_fingerprint(cfg, job)) != epochs
    ]


def fanout_stage(cfg: DictConfig, ctx: StageContext | None = None) -> None:
    """The train stage's work under `main`: the unfinished jobs through the launcher, waited for."""
    fan = _ACTIVE
    if fan is None:
        raise StageError(
            f"{__name__}.fanout_stage fans the train stage out for `python -m {__name__}`; run it from there"
        )
    if not cfg.task.models:
        log.info("task %s trains no models (its experiment stage trains its own): nothing to do", cfg.task.name)
        return
    jobs = job_grid(cfg)
    # Jobs of an earlier submission still running are waited for, not submitted beside themselves.
    todo = reattach(cfg, unfinished(cfg, jobs), lambda some: unfinished(cfg, some))
    log.info(
        "%d of %d jobs to run through hydra/launcher=%s (%d finished are kept); sweep folder %s",
        len(todo),
        len(jobs),
        fan.name,
        len(jobs) - len(todo),
        fan.sweep_dir,
    )
    if todo:
        start = time.perf_counter()
        outcomes = fan.run(cfg, todo)
        write_summary(fan, outcomes, time.perf_counter() - start)
        failed = [o for o in outcomes if o.error]
        if failed:
            raise FanOutError(
                f"{len(failed)} of {len(todo)} training jobs failed; rerun the same command to submit them again "
                "(finished jobs are kept; each resumes from its last epoch checkpoint):\n"
                + "\n".join(
                    f"  {o.job} [submitit job {o.submitit_id}]: {o.error}\n    stdout {o.stdout}\n    stderr {o.stderr}"
                    for o in failed
                )
            )
    left = unfinished(cfg, jobs)
    if left:
        raise FanOutError(
            f"{len(left)} jobs reported success but left no finished log and record: {', '.join(map(str, left))}"
        )


def write_summary(fan: FanOut, outcomes: list[Outcome], seconds: float) -> None:
    """`<sweep dir>/fanout.json`: launcher, wall time, and per job its submitit id, logs and end."""
    summary = {
        "launcher": fan.name,
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
    write_text(fan.sweep_dir / "fanout.json", json.dumps(summary, indent=1, default=str) + "\n")


def train_one_job(cfg: DictConfig) -> dict:
    """The task function of one submitted job: the runner's checks of the train stage, then the one
    job its overrides select, trained as the train stage trains it (same threads, same numbers).
    Returns where it ran."""
    try:
        complete_arms(cfg)
        validate_choices(cfg)
        stage = stage_spec(cfg, "train")
        if stage.check:
            get_method(stage.check)(cfg)
        check_upstream(cfg, stage)
        jobs = [job for job in job_grid(cfg) if job.seed == int(cfg.fanout.seed)]
        if len(jobs) != 1:
            raise SettingError(f"a fanned-out job trains one job; train.* and fanout.seed select {len(jobs)}")
        job = jobs[0]
        start = time.perf_counter()
        with torch_threads(threads_per_job(cfg, 1)):
            path = run_job(cfg, job.model, job.arm, job.seed, job.fold)
        return {"log": str(path), **where_it_ran(), "seconds": round(time.perf_counter() - start, 2)}
    except Exception:
        log.exception(
            "the job failed"
        )  # Hydra keeps the exception for the submitter; the traceback goes to the job's logs
        raise


# --------------------------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------------------------
def fanned_out(cfg: DictConfig) -> DictConfig:
    """A copy of `cfg` whose train stage is `fanout_stage`."""
    cfg = copy.deepcopy(cfg)
    for defs in (cfg.task.get("stage_defs"), cfg.get("stage_defs")):
        if defs is not None and "train" in defs:
            defs.train.fn = f"{__name__}.fanout_stage"
            break
    return cfg


def setup(cfg: DictConfig) -> FanOut:
    """Hydra's launcher of this run (`hydra/launcher=...`), set up to run `train_one_job`."""
    hydra_cfg = HydraConfig.get()
    name = str(hydra_cfg.runtime.choices.get("hydra/launcher"))
    check_launcher(name, hydra_cfg.launcher)
    full = copy.deepcopy(cfg)  # the app's config with its hydra node, as Hydra gives it to launchers
    with read_write(full), open_dict(full):
        full.hydra = copy.deepcopy(HydraConfig.instance().cfg.hydra)
    with read_write(full.hydra):
        full.hydra.sweep.dir = str(full.hydra.sweep.dir)  # one folder for this run, whenever it is read
    from hydra._internal.callbacks import Callbacks
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

    context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks(full))
    launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=train_one_job, config=full)
    if not isinstance(launcher, BaseSubmititLauncher):
        raise SettingError(
            f"hydra/launcher={name}: the fan-out submits through Hydra's submitit launchers "
            "(slurm, submitit_slurm, submitit_local); for another launcher use "
            "`python -m coordchannels -m ...`"
        )
    return FanOut(launcher, name, repeated_overrides(hydra_cfg.overrides.task), Path(full.hydra.sweep.dir))


def repeated_overrides(given) -> list[str]:
    """The overrides given to the app that every job repeats: all but those of the keys each job sets."""
    parser = OverridesParser.create()
    return [line for line in given if parser.parse_override(line).key_or_group not in JOB_KEYS]


def check_launcher(name: str, launcher: DictConfig) -> None:
    """Refuse, before any stage runs, a launcher config with a required value (`???`) not given, and
    SLURM where it cannot be reached."""
    missing = sorted(
        k if k.startswith("hydra.launcher.") else f"hydra.launcher.{k}" for k in OmegaConf.missing_keys(launcher)
    )
    if missing:
        raise SettingError(
            f"hydra/launcher={name} needs {', '.join(missing)}: add "
            f"{' '.join(f'{k}=<value>' for k in missing)} to the command (to ARGS with make), "
            "e.g. hydra.launcher.partition=gpu (`sinfo` lists the partitions)"
        )
    if str(launcher.get("_target_", "")).endswith(".SlurmLauncher") and shutil.which("sbatch") is None:
        raise SettingError(
            f"hydra/launcher={name} submits with SLURM's sbatch, which this machine does not have "
            "on its PATH: run the command on the cluster's login node (LAUNCHER=submitit_local runs "
            "the same fan-out on this machine)"
        )


@hydra_entry
@hydra.main(version_base="1.3", config_path="pkg://coordchannels.conf", config_name="config")
@reports_errors
def main(cfg: DictConfig) -> None:
    """`python -m coordchannels`, with the train stage fanned out through `hydra/launcher` (with
    Hydra's basic launcher, the default, it is the app itself)."""
    global _ACTIVE
    if HydraConfig.get().runtime.choices.get("hydra/launcher") in (None, "basic"):
        run_stages(cfg)
        return
    _ACTIVE = setup(cfg)
    try:
        run_stages(fanned_out(cfg))
    finally:
        _ACTIVE = None


if __name__ == "__main__":
    # Run this module's imported copy, not __main__'s: the task function given to the jobs is then
    # pickled by name and found in their processes.
    from coordchannels.train import fanout

    fanout.main()
