"""The training plan printed before a run, and one progress line per finished job while it runs.

The plan says how many jobs the grid has and how many are already finished, the device, how many
run side by side and an estimated wall time. The estimate comes from the per-epoch times of this
run folder's own training log (`<run_dir>/logs/train.log`) timed under the same timing settings,
an unfinished run's included, else from the measured cost in the task's config (`task.cost`,
seconds per epoch per job on a stated machine). The plan counts finished jobs as the run does and
names the jobs the run would refuse; a dry run judges every stage with the runner's own checks.
Progress lines are plain log lines (no terminal needed): job k/N, elapsed time, time left.
`dry_run=true` (`make plan`) prints the plan and stops before any stage runs.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from coordchannels.train.device import resolve_device
from coordchannels.train.grid import Job, job_grid
from coordchannels.train.record import RunConfigError, finished_epochs, job_fingerprint
from coordchannels.train.tracker import check_tracker

log = logging.getLogger(__name__)

EPOCH_LINE = re.compile(r": epoch \d+ .*\(([0-9.]+) s\)\s*$")
GPU_HELP = (
    "install a CUDA build of PyTorch (see the README, 'Installation') on a machine with an NVIDIA GPU "
    "and run with train.device=cuda (optionally train.precision=bf16 train.channels_last=true)"
)


def duration(seconds: float) -> str:
    """A wall time a person reads: 45 s, 12 min, 3.4 h, 2.5 days.

    >>> [duration(s) for s in (45, 720, 12240, 216000)]
    ['45 s', '12 min', '3.4 h', '2.5 days']
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@dataclass
class Plan:
    jobs: list[Job]
    done_epochs: dict[Job, int]
    epochs: int
    device: str
    side_by_side: int
    epoch_s: float | None
    source: str
    refused: dict[Job, str] = field(default_factory=dict)  # jobs the run would refuse, and why

    @property
    def finished(self) -> int:
        return sum(self.done_epochs[j] >= self.epochs for j in self.jobs)

    @property
    def remaining_epochs(self) -> int:
        return sum(max(0, self.epochs - self.done_epochs[j]) for j in self.jobs)

    @property
    def estimate_s(self) -> float | None:
        """Job-epochs left, run side by side, times the seconds of one job-epoch."""
        if self.epoch_s is None:
            return None
        to_train = [max(0, self.epochs - self.done_epochs[j]) for j in self.jobs]
        waves = math.ceil(sum(e > 0 for e in to_train) / self.side_by_side) if any(to_train) else 0
        per_wave = sum(to_train) / max(1, sum(e > 0 for e in to_train))
        return waves * per_wave * self.epoch_s


def done_epochs(cfg: DictConfig, job: Job) -> int:
    """Epochs of `job` finished with this configuration, as the run counts them (0 with
    overwrite=true); raises the run's RunConfigError for a log it would refuse."""
    from coordchannels.train.paths import job_log_path

    if cfg.overwrite:
        return 0
    return finished_epochs(cfg, job, job_log_path(cfg, job), job_fingerprint(cfg, job))


# The settings a per-epoch time depends on; the train stage logs them before its first epoch, so
# that the epoch times of an unfinished run (no train.config.yaml yet) can be used for the plan.
TIMING_KEYS = ("device", "batch_size", "limit_train", "limit_test", "n_jobs", "num_threads")
TIMING_LINE = "timing settings:"


def timing_settings(cfg: DictConfig) -> str:
    return " ".join(f"{key}={cfg.train.get(key)}" for key in TIMING_KEYS)


def recorded_epoch_seconds(cfg: DictConfig) -> float | None:
    """Median per-epoch seconds in this run folder's training log (`<run_dir>/logs/train.log`),
    from the runs of the train stage made with the same timing settings (the line the stage logs
    before training); None when there are none. A run still going, or killed after its first jobs,
    counts: its epochs were timed."""
    log_file = Path(str(cfg.train.run_dir)) / "logs" / "train.log"
    if not log_file.is_file():
        return None
    wanted, same, seconds = timing_settings(cfg), False, []
    for line in log_file.read_text(errors="replace").splitlines()[-5000:]:
        if TIMING_LINE in line:
            same = line.split(TIMING_LINE, 1)[1].strip() == wanted
        elif same and (m := EPOCH_LINE.search(line)):
            seconds.append(float(m.group(1)))
    return statistics.median(seconds) if seconds else None


def configured_epoch_seconds(cfg: DictConfig, device: str) -> tuple[float | None, str]:
    """Seconds per epoch per job from task.cost (measured at full size), scaled to train.limit_train."""
    cost = cfg.task.get("cost")
    if cost is None or cost.get(f"{device}_epoch_s") is None:
        return None, f"no measured {device} cost for task {cfg.task.name}"
    seconds = float(cost[f"{device}_epoch_s"])
    full = cost.get("train_samples")
    limit = cfg.train.get("limit_train")
    if full and limit is not None and int(limit) < int(full):
        seconds = float(cost.get("epoch_overhead_s") or 0) + seconds * int(limit) / int(full)
    return seconds, f"task.cost: {cost.get('measured_on', 'measured')}"


def make_plan(cfg: DictConfig) -> Plan:
    from coordchannels.train.device import jobs_side_by_side

    check_tracker(cfg)
    jobs = job_grid(cfg)
    device = resolve_device(cfg.train.device).type
    recorded = recorded_epoch_seconds(cfg)
    if recorded is not None:
        epoch_s, source = recorded, f"median epoch time in {Path(str(cfg.train.run_dir)) / 'logs' / 'train.log'}"
    else:
        epoch_s, source = configured_epoch_seconds(cfg, device)
    done, refused = {}, {}
    for job in jobs:
        try:
            done[job] = done_epochs(cfg, job)
        except RunConfigError as exc:  # the run stops at this job: say so now
            done[job], refused[job] = 0, str(exc)
    return Plan(jobs, done, int(cfg.train.epochs), device, jobs_side_by_side(cfg, len(jobs)), epoch_s, source, refused)


def plan_lines(cfg: DictConfig, plan: Plan | None = None) -> list[str]:
    """The plan as lines for a person."""
    plan = plan or make_plan(cfg)
    n, finished = len(plan.jobs), plan.finished
    models = sorted({j.model for j in plan.jobs})
    arms = list(dict.fromkeys(j.arm for j in plan.jobs))
    lines = [
        f"plan: {n} training jobs ({len(models)} model(s) x {len(arms)} arm(s) x "
        f"{len({j.seed for j in plan.jobs})} seed(s) x {len({j.fold for j in plan.jobs})} fold(s)), "
        f"{plan.epochs} epochs each, in {cfg.train.run_dir}",
        f"plan: {finished} already finished, {n - finished} to train "
        f"({plan.remaining_epochs} job-epochs); device {plan.device}, {plan.side_by_side} job(s) side by side",
    ]
    estimate = plan.estimate_s
    if plan.refused:
        lines.append(f"plan: the run would refuse {len(plan.refused)} job(s), e.g. {next(iter(plan.refused.values()))}")
    if n == finished:
        lines.append("plan: nothing to train")
    elif estimate is None:
        lines.append(f"plan: no time estimate ({plan.source}); the progress lines give one once jobs finish")
    else:
        lines.append(
            f"plan: estimated training time {duration(estimate)} "
            f"({plan.epoch_s:.1f} s per epoch per job; from {plan.source})"
        )
    if cfg.task.name == "sipakmed" and plan.device == "cpu" and n > finished and not cfg.train.get("limit_train"):
        lines.append(f"plan: SiPaKMeD at full size on a CPU takes days; to run it on a GPU, {GPU_HELP}")
    return lines


def log_plan(cfg: DictConfig) -> Plan:
    plan = make_plan(cfg)
    log.info("%s %s", TIMING_LINE, timing_settings(cfg))  # marks the epoch times that follow
    for line in plan_lines(cfg, plan):
        log.info("%s", line)
    return plan


class Progress:
    """One line per finished job: job k/N, elapsed, and an estimate of the time left from the
    jobs trained so far in this run (already-finished jobs count as done, not as time)."""

    def __init__(self, cfg: DictConfig, jobs: list[Job]):
        from coordchannels.train.paths import job_log_path

        self.plan = log_plan(cfg)
        self.by_log = {job_log_path(cfg, j): j for j in jobs}
        self.total = len(jobs)
        self.before = {j for j in jobs if self.plan.done_epochs.get(j, 0) >= self.plan.epochs}
        self.left = self.total - len(self.before)
        self.k = 0
        self.trained = 0
        self.start = time.perf_counter()

    def done(self, path: Path, job: Job | None = None) -> Path:
        """Note that the job of log `path` is finished; return `path`."""
        self.finished(job or self.by_log.get(Path(path), Job(str(path), "", 0, 0)))
        return path

    def finished(self, job: Job) -> None:
        self.k += 1
        elapsed = time.perf_counter() - self.start
        if job in self.before:  # finished before this run: skipped at once
            return
        self.trained += 1
        remaining = self.left - self.trained
        eta = "" if remaining <= 0 else f", about {duration(elapsed / self.trained * remaining)} left"
        log.info("progress: job %d/%d finished (%s); elapsed %s%s", self.k, self.total, job, duration(elapsed), eta)


def training_plan(cfg: DictConfig) -> Iterator[str]:
    """The train stage's `plan` (the runner's dry run, `make plan`): jobs, device and estimated
    time; a job the run would refuse ends it with the run's own error."""
    if not cfg.task.get("models"):
        return
    plan = make_plan(cfg)
    yield from plan_lines(cfg, plan)
    if plan.refused:
        raise RunConfigError(next(iter(plan.refused.values())))


def check_train_settings(cfg: DictConfig) -> None:
    """The train stage's `check`, run before any stage: the training settings, the tracker, the
    submitit settings (train.executor=submitit), and that the grid's finished jobs were made with
    these settings (or fewer epochs)."""
    from coordchannels.train.grid import check_settings
    from coordchannels.train.record import check_finished_jobs

    check_settings(cfg)
    check_tracker(cfg)
    if cfg.task.get("models") and str(cfg.train.get("executor")) == "submitit":
        from coordchannels.train.submit import check_submitit

        check_submitit(cfg)
    if cfg.task.get("models"):
        from coordchannels.stages import check_upstream, stage_spec

        stage = stage_spec(cfg, "train")
        if not set(stage.after) & set(cfg.stages):
            check_upstream(cfg, stage)  # data made with other settings: said as such, first
        check_finished_jobs(cfg, job_grid(cfg))
