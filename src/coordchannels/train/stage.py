"""The train stage: every job of the grid, as `train.executor` says: one after another (serial),
side by side in joblib processes (`train.n_jobs`), or each in its own submitit job (submitit: on a
SLURM cluster or on this machine; coordchannels.train.submit). Jobs share nothing but read-only
data, so the executor changes where and when a job runs, never its numbers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from coordchannels.settings import choice
from coordchannels.stages import StageContext
from coordchannels.train.device import EXECUTORS, jobs_side_by_side, threads_per_job, torch_threads
from coordchannels.train.grid import Job, job_grid
from coordchannels.train.job import _DATA_CACHE, run_job
from coordchannels.train.paths import job_log_path
from coordchannels.train.progress import Progress

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The stage: the job grid, run serially or side by side
# --------------------------------------------------------------------------------------------
def expected_logs(cfg: DictConfig) -> list[Path]:
    """The train stage's declared outputs: the per-fold log of every job of the grid."""
    run_dir = Path(cfg.train.run_dir)
    # Relative to the stage folder, as the runner joins declared outputs onto it.
    return [job_log_path(cfg, job).relative_to(run_dir) for job in job_grid(cfg)] if cfg.task.models else []


def train_stage(cfg: DictConfig, ctx: StageContext | None = None) -> None:
    """Run every job of the grid (models x arms x seeds x folds) in `ctx.out` = train.run_dir,
    skipping finished ones and resuming interrupted ones."""
    if not cfg.task.models:
        log.info("task %s trains no models (its experiment stage trains its own): nothing to do", cfg.task.name)
        return
    if choice(str(cfg.train.get("executor", "joblib")), EXECUTORS, "train.executor") == "submitit":
        from coordchannels.train.submit import submit_jobs

        submit_jobs(cfg)
        return
    jobs = job_grid(cfg)
    n_jobs = jobs_side_by_side(cfg, len(jobs))
    threads = threads_per_job(cfg, n_jobs)
    log.info(
        "%d training jobs in %s (%d side by side, %d torch thread(s) each)",
        len(jobs),
        cfg.train.run_dir,
        n_jobs,
        threads,
    )
    start = time.perf_counter()
    progress = Progress(cfg, jobs)  # the plan now, a line per finished job
    if n_jobs == 1:
        try:
            with torch_threads(threads):
                paths = [progress.done(run_job(cfg, *_job_args(job)), job) for job in jobs]
        finally:
            _DATA_CACHE.clear()
    else:
        from joblib import Parallel, delayed

        # Resolve once here so that every worker sees the same paths and values.
        plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        root = logging.getLogger()
        # Workers append their progress lines to the stage's log files too (and print to stderr).
        files = [h.baseFilename for h in root.handlers if isinstance(h, logging.FileHandler)]
        paths = [
            progress.done(path)
            for path in Parallel(n_jobs=n_jobs, backend="loky", return_as="generator_unordered")(
                delayed(_run_job_in_worker)(plain, job, threads, root.getEffectiveLevel(), files, os.getpid())
                for job in jobs
            )
        ]
    log.info("%d per-fold logs under %s (%.1f s)", len(paths), cfg.train.logs_dir, time.perf_counter() - start)


def _job_args(job: Job) -> tuple[str, str, int, int]:
    return job.model, job.arm, job.seed, job.fold


def _run_job_in_worker(cfg: DictConfig, job: Job, threads: int, level: int, log_files: list[str], parent: int) -> Path:
    """Entry point of a joblib worker process: its own threads, logging like the parent's, and it
    dies with the process that started the run."""
    _die_with(parent)
    _worker_logging(level, log_files)
    torch.set_num_threads(threads)
    return run_job(cfg, *_job_args(job))


_WATCHED: set[int] = set()


def _die_with(parent: int, every_s: float = 1.0) -> None:
    """End this worker when `parent` (the process running the train stage) is gone.

    A killed parent (kill -9) cannot stop its workers, and they would go on training into the run
    folder beside a rerun. A daemon thread notices that the worker was re-parented and exits it.
    """
    if parent in _WATCHED or os.getpid() == parent:
        return
    _WATCHED.add(parent)

    def watch() -> None:
        while _alive(parent):
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Handlers this worker process added, by the log files they write to (workers are reused).
_WORKER_HANDLERS: dict[tuple[str, ...], list[logging.Handler]] = {}


def _worker_logging(level: int, log_files: list[str]) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    key = tuple(log_files)
    if key in _WORKER_HANDLERS:
        return
    for old in _WORKER_HANDLERS.pop(next(iter(_WORKER_HANDLERS), ()), []):  # an earlier stage's files
        root.removeHandler(old)
        old.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers = [logging.StreamHandler(), *(logging.FileHandler(f, mode="a") for f in log_files)]
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    _WORKER_HANDLERS[key] = handlers
