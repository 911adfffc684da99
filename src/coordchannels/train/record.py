"""What a job's numbers are a function of, and where finished work is recorded.

- a job's *fingerprint*: everything that changes its numbers (data settings, model, arm, training
  hyper-parameters, seed), except the number of epochs, which only says how far it goes;
- its *checkpoint*, after every epoch: the fingerprint, the log rows so far, weights and optimiser;
- its *record*, `<run_dir>/jobs/<Model>/<log name>.json`, written with its log when it
  finishes: the fingerprint and the number of epochs (and, for the manifest, the host, process,
  device and Hydra launcher it ran on). A log is reused only beside a record with
  the same fingerprint; a job asked for more epochs than it has continues from its checkpoint.
  One file per job (no shared run file), so jobs on many machines never write the same file;
- its *lock*, held while it trains: two processes never train one job of one run folder at once.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig

from coordchannels.io import atomic_path, write_text
from coordchannels.pipeline import upstream_run_ids
from coordchannels.settings import canonical, plain
from coordchannels.train.grid import Job

log = logging.getLogger(__name__)

# Training settings that change the numbers. Not: epochs (how far, see the record), device, eval
# batch size, jobs side by side. num_threads is here because CPU kernels sum in another order
# with another thread count.
TRAIN_KEYS = ("batch_size", "lr", "limit_train", "limit_test", "precision", "channels_last", "compile", "num_threads")
# The parts of a model's and an arm's config that change the numbers (not their labels or colours).
MODEL_KEYS = ("log_name", "net")
ARM_KEYS = ("name", "channels", "model_kwargs")


class RunConfigError(ValueError):
    """A run folder holds work done under another configuration; the message says how to proceed."""


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def save_checkpoint(
    path: Path, fingerprint: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rows: list[list[float]]
) -> None:
    """Everything needed to continue after the last finished epoch, written atomically."""
    state = {
        "fingerprint": canonical(fingerprint),
        "epoch": len(rows),
        "rows": [[float(v) for v in row] for row in rows],
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, fingerprint: dict) -> dict | None:
    """The checkpoint at `path` (None when there is none); refuse one from another configuration."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file: say which and what to do
        raise RunConfigError(f"{path}: unreadable checkpoint ({exc}); delete it or set overwrite=true") from exc
    stored = json.loads(state["fingerprint"])
    if stored != json.loads(canonical(fingerprint)):
        raise RunConfigError(
            f"{path} was written by a job with another configuration ({_differences(stored, fingerprint)}); "
            "pick another train.run_name or set overwrite=true to retrain"
        )
    return state


# --------------------------------------------------------------------------------------------
# Fingerprints: what changes the numbers
# --------------------------------------------------------------------------------------------
def data_fingerprint(cfg: DictConfig) -> dict:
    """task name and task.data without the keys that say only where the data come from, and the
    run ids of the data stages the trainer reads (when they ran through the runner): data rebuilt
    since a log was made, even with the same settings, are other data. Data made outside the
    pipeline (`external_data=true`) have no run ids and are marked as such."""
    data = plain(cfg.task.data)
    for key in cfg.train.get("fingerprint_ignore") or []:
        data.pop(key, None)
    fingerprint = {"name": str(cfg.task.name), "data": data}
    if cfg.get("external_data"):
        fingerprint["data_runs"] = "external"
        return fingerprint
    built = {k: v for k, v in upstream_run_ids(cfg, "train").items() if v} if cfg.task.get("train_after") else {}
    if built:
        fingerprint["data_runs"] = built
    return fingerprint


def train_fingerprint(cfg: DictConfig) -> dict:
    return {key: plain(cfg.train.get(key)) for key in TRAIN_KEYS}


def job_fingerprint(cfg: DictConfig, job: Job) -> dict:
    """Everything that changes a job's numbers: data, model, arm, hyper-parameters and seed."""
    model, arm = plain(cfg.task.models[job.model]), plain(cfg.arms[job.arm])
    fingerprint = {
        "task": data_fingerprint(cfg),
        "train": train_fingerprint(cfg),
        "model": {k: model.get(k) for k in MODEL_KEYS},
        "arm": {k: arm.get(k) for k in ARM_KEYS},
        "seed": job.seed,
    }
    # A task's own training loop and its settings (a learning-rate schedule) change the numbers too;
    # tasks without one keep the fingerprints their runs were made with.
    if cfg.task.get("loop") is not None:
        fingerprint["loop"] = plain(cfg.task.loop)
    return json.loads(canonical(fingerprint))


# --------------------------------------------------------------------------------------------
# Job records and locks
# --------------------------------------------------------------------------------------------
def job_record_path(cfg: DictConfig, job: Job) -> Path:
    """`<run_dir>/jobs/<Model>/<log name>.json`: named as the job's log is, so that a record and a
    log always pair up (a single-seed run's logs carry no seed; its records carry the seed inside)."""
    from coordchannels.train.job import job_log_path  # the log's name is the job module's business

    log_path = job_log_path(cfg, job)
    return Path(cfg.train.run_dir) / "jobs" / log_path.parent.name / log_path.with_suffix(".json").name


def read_job_record(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        return {"fingerprint": record["fingerprint"], "epochs": int(record["epochs"])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunConfigError(
            f"{path}: unreadable job record ({exc}); delete it with its log, or set overwrite=true to retrain"
        ) from exc


def write_job_record(path: Path, fingerprint: dict, epochs: int) -> None:
    """The fingerprint and epochs (what `read_job_record` compares), and where the job ran (for the
    manifest only: a job's numbers do not depend on it)."""
    record = {"fingerprint": fingerprint, "epochs": int(epochs), **where_it_ran()}
    write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def where_it_ran() -> dict:
    """This process's host, pid, device and the Hydra launcher that started it (`local` outside a
    fanned-out job: the app itself, or one of its joblib workers)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "device": device_in_use(), "launcher": launcher_in_use()}


def device_in_use() -> str:
    """The device this process trains on: its current CUDA device once CUDA is initialised (a job
    on the GPU initialises it), else the CPU."""
    if torch.cuda.is_initialized():
        index = torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


def launcher_in_use() -> str:
    """The `hydra/launcher` choice of the Hydra job this process runs (`submitit_slurm`, `slurm`, ...),
    `local` for Hydra's basic launcher or outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return "local"
    name = HydraConfig.get().runtime.choices.get("hydra/launcher")
    return "local" if name in (None, "basic") else str(name)


def finished_epochs(cfg: DictConfig, job: Job, log_path: Path, fingerprint: dict) -> int:
    """How many epochs of this job are finished and may be reused (0 when none).

    A log without its record, or with a record of another configuration, is refused: it cannot be
    told apart from the result of other settings.
    """
    record = read_job_record(job_record_path(cfg, job))
    if not log_path.exists():
        return 0
    if record is None:
        raise RunConfigError(
            f"{log_path} has no job record ({job_record_path(cfg, job)}): it cannot be shown to come from this "
            "configuration; pick another train.run_name or set overwrite=true to retrain"
        )
    if record["fingerprint"] != fingerprint:
        raise RunConfigError(
            f"{log_path} was made with another configuration ({_differences(record['fingerprint'], fingerprint)}); "
            "pick another train.run_name or set overwrite=true to retrain"
        )
    return record["epochs"]


@contextmanager
def job_lock(cfg: DictConfig, job: Job) -> Iterator[None]:
    """Hold the job's lock while it trains; a clear error naming the holder when another process has it."""
    path = job_record_path(cfg, job).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = path.with_suffix(".holder")
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        who = holder.read_text().strip() if holder.exists() else "another process"
        raise RunConfigError(
            f"{job} is being trained in {cfg.train.run_dir} by {who} (lock {path}); wait for it, or stop that process"
        ) from None
    try:
        holder.write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def _differences(stored: Any, current: Any, prefix: str = "") -> str:
    """'key: stored -> now' for the first few differing leaves of two nested dicts."""
    stored, current = json.loads(canonical(stored)), json.loads(canonical(current))
    diffs: list[str] = []

    def walk(a: Any, b: Any, key: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{key}.{k}" if key else k)
        elif a != b:
            diffs.append(f"{key or 'value'}: stored {a!r}, now {b!r}")

    walk(stored, current, prefix)
    return ", ".join(diffs[:5]) + (f" and {len(diffs) - 5} more" if len(diffs) > 5 else "")
