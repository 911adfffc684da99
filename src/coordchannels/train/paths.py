"""Where a training job's files live: its per-fold log (in the published layout) and checkpoint."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from coordchannels.logs import log_path
from coordchannels.train.grid import Job


def job_log_path(cfg: DictConfig, job: Job) -> Path:
    """The published-layout log of a job; seeds are named only when the run has several."""
    seed = job.seed if len(cfg.train.seeds) > 1 else None
    return log_path(cfg.train.logs_dir, cfg.task.models[job.model].log_name, job.arm, job.fold, seed)


def checkpoint_path(cfg: DictConfig, job: Job) -> Path:
    log_name = cfg.task.models[job.model].log_name
    return Path(cfg.train.run_dir) / "checkpoints" / log_name / f"{job.arm}_seed_{job.seed}_fold_{job.fold}.pt"
