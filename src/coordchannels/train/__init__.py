"""The one trainer (SPEC section 5): every task, model and arm goes through `run_job`.

- `grid`: which jobs, one job = (model, arm, seed, fold);
- `stage`: the train stage, jobs one after another, side by side or submitted (`train.executor`);
- `job`: one job's training loop, evaluation and per-fold log;
- `record`: checkpoints, fingerprints and the run record that guard resuming and skipping;
- `paths`: where a job's log and checkpoint live;
- `progress`: the plan before training (the stage's `plan` hook) and a line per finished job;
- `tracker`: optional TensorBoard event files per job;
- `device`: device, seeds, determinism, threads and how many jobs run side by side;
- `submit`, `submissions`: the jobs through submitit (SLURM, or processes here) and their record.
"""

from __future__ import annotations

from coordchannels.train.device import (
    jobs_side_by_side,
    resolve_device,
    seed_everything,
    set_determinism,
    threads_per_job,
)
from coordchannels.train.grid import Job, job_grid
from coordchannels.train.job import (
    Execution,
    build_model,
    epoch_generator,
    job_indices,
    log_epoch,
    predict,
    r2_per_target,
    run_job,
    target_standardisation,
    train_one_epoch,
    train_step,
)
from coordchannels.train.paths import checkpoint_path, job_log_path
from coordchannels.train.record import RunConfigError, job_fingerprint
from coordchannels.train.stage import expected_logs, train_stage

__all__ = [
    "Execution",
    "Job",
    "expected_logs",
    "RunConfigError",
    "build_model",
    "checkpoint_path",
    "epoch_generator",
    "job_fingerprint",
    "job_grid",
    "job_indices",
    "job_log_path",
    "jobs_side_by_side",
    "log_epoch",
    "predict",
    "r2_per_target",
    "resolve_device",
    "run_job",
    "seed_everything",
    "set_determinism",
    "target_standardisation",
    "threads_per_job",
    "train_one_epoch",
    "train_stage",
    "train_step",
]
