"""What a job's numbers are a function of, and where finished work is recorded.

- a job's *fingerprint*: everything that changes its numbers (data settings, model, arm, training
  hyper-parameters, seed), except the number of epochs, which only says how far it goes;
- its *checkpoint*, after every epoch: the fingerprint, the log rows so far, weights and optimiser;
- its *record*, `<run_dir>/jobs/<Model>/<log name>.json`, written with its log when it
  finishes: the fingerprint and the number of epochs (and, for the manifest, the host, process,
  device and launcher it ran on). A log is reused only beside a record with
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

from coordchannels.download import file_sha256
from coordchannels.io import atomic_path, write_text
from coordchannels.settings import canonical, plain
from coordchannels.stages import stage_spec, upstream_run_ids
from coordchannels.train.grid import Job

log = logging.getLogger(__name__)

# The setting that says how far a job goes, not what its numbers are: a job's record holds it
# beside the fingerprint, and more of it continues a finished job.
EPOCHS_KEY = "train.epochs"
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


def read_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file: say which and what to do
        raise RunConfigError(f"{path}: unreadable checkpoint ({exc}); delete it or set overwrite=true") from exc


def load_checkpoint(path: Path, fingerprint: dict) -> dict | None:
    """The checkpoint at `path` (None when there is none); refuse one from another configuration."""
    if not path.exists():
        return None
    state = read_checkpoint(path)
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


def train_keys(cfg: DictConfig) -> list[str]:
    """The training settings in a job's fingerprint (without `train.`): the train stage's declared
    `settings` (conf/config.yaml, the one list) but the epochs. Not there: device, eval batch size,
    jobs side by side; num_threads is, as CPU kernels sum in another order with another count."""
    settings = stage_spec(cfg, "train").settings
    return [key.removeprefix("train.") for key in settings if key.startswith("train.") and key != EPOCHS_KEY]


# How train.limit_train/limit_test choose their samples (coordchannels.train.job.limited): in the
# fingerprint of limited runs only, so that logs of the earlier rule (the first N) are not reused.
SUBSET_RULE = "seeded, stratified over records"


def train_fingerprint(cfg: DictConfig) -> dict:
    fingerprint = {key: plain(cfg.train.get(key)) for key in train_keys(cfg)}
    if any(fingerprint.get(key) is not None for key in ("limit_train", "limit_test")):
        fingerprint["subset"] = SUBSET_RULE
    return fingerprint


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
    from coordchannels.train.paths import job_log_path

    log_path = job_log_path(cfg, job)
    return Path(cfg.train.run_dir) / "jobs" / log_path.parent.name / log_path.with_suffix(".json").name


def read_job_record(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        return {
            "fingerprint": record["fingerprint"],
            "epochs": int(record["epochs"]),
            "log_sha256": record.get("log_sha256"),  # absent in records of older versions
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunConfigError(
            f"{path}: unreadable job record ({exc}); delete it with its log, or set overwrite=true to retrain"
        ) from exc


def write_job_record(path: Path, fingerprint: dict, epochs: int, log_path: Path) -> None:
    """The fingerprint, epochs and the SHA-256 of the finished log (what `read_job_record` compares),
    and where the job ran (for the manifest only: a job's numbers do not depend on it)."""
    record = {
        "fingerprint": fingerprint,
        "epochs": int(epochs),
        "log_sha256": file_sha256(log_path),
        **where_it_ran(),
    }
    write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def where_it_ran() -> dict:
    """This process's host, pid, device and what started it (`launcher`): `submitit_<cluster>` in a
    job submitted with train.executor=submitit, else `local` (this process, or one of its joblib
    workers)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "device": device_in_use(), "launcher": launcher_in_use()}


def device_in_use() -> str:
    """The device this process trains on: its current CUDA device once CUDA is initialised (a job
    on the GPU initialises it), else the CPU."""
    if torch.cuda.is_initialized():
        index = torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


def launcher_in_use() -> str:
    """`submitit_local` or `submitit_slurm` in a submitit job (submitit's JobEnvironment), else `local`."""
    import submitit

    try:
        return f"submitit_{submitit.JobEnvironment().cluster}"
    except RuntimeError:  # not a submitit job
        return "local"


def finished_epochs(cfg: DictConfig, job: Job, log_path: Path, fingerprint: dict) -> int:
    """How many epochs of this job are finished and may be reused (0 when none).

    A log without its record, or with a record of another configuration, is refused: it cannot be
    told apart from the result of other settings.
    """
    record = read_job_record(job_record_path(cfg, job))
    if not log_path.exists():
        return 0
    if record is None:
        raise unrecorded_log(cfg, job, log_path)
    if record["fingerprint"] != fingerprint:
        raise RunConfigError(
            f"{log_path} was made with another configuration ({_differences(record['fingerprint'], fingerprint)}); "
            "pick another train.run_name or set overwrite=true to retrain"
        )
    if not log_intact(log_path, record):
        log.warning("%s: not the log its job wrote (truncated or changed): redoing it from its checkpoint", log_path)
        return 0
    return record["epochs"]


def log_intact(log_path: Path, record: dict) -> bool:
    """The log is the one its job record describes: same SHA-256 (older records, without one: a
    header and one row per recorded epoch)."""
    if record.get("log_sha256"):
        return file_sha256(log_path) == record["log_sha256"]
    return len(log_path.read_text(errors="replace").splitlines()) == record["epochs"] + 1


def check_finished_jobs(cfg: DictConfig, jobs: list[Job]) -> None:
    """Before any stage runs: refuse, in one message naming every differing setting, a grid whose
    finished (or interrupted: checkpointed) jobs in this run folder were made with other settings or
    more epochs than asked for. Jobs not trained yet (new seeds, folds, models, arms) and more
    epochs are not conflicts."""
    if cfg.overwrite:
        return
    from coordchannels.train.paths import checkpoint_path, job_log_path

    wanted_epochs, differ, conflicts = int(cfg.train.epochs), {}, 0
    for job in jobs:
        record, log_path, ckpt = (
            read_job_record(job_record_path(cfg, job)),
            job_log_path(cfg, job),
            checkpoint_path(cfg, job),
        )
        if log_path.exists() and record is None:
            raise unrecorded_log(cfg, job, log_path)
        if log_path.exists():
            stored, epochs = record["fingerprint"], record["epochs"]
        elif ckpt.exists():  # interrupted: its checkpoint says what it was trained with
            state = read_checkpoint(ckpt)
            stored, epochs = json.loads(state["fingerprint"]), len(state["rows"])
        else:
            continue
        found = differences(stored, job_fingerprint(cfg, job))
        if epochs > wanted_epochs:
            found[EPOCHS_KEY] = f"stored {epochs}, now {wanted_epochs} (fewer epochs cannot be had from them)"
        conflicts += bool(found)
        differ.update(found)
    if differ:
        raise RunConfigError(
            f"{conflicts} trained job(s) in {cfg.train.run_dir} were made with other settings "
            f"({'; '.join(f'{key}: {change}' for key, change in sorted(differ.items()))}); "
            "pick another train.run_name (or train.run_dir) to keep them, or set overwrite=true to retrain"
        )


def unrecorded_log(cfg: DictConfig, job: Job, log_path: Path) -> RunConfigError:
    return RunConfigError(
        f"{log_path} has no job record ({job_record_path(cfg, job)}): it cannot be shown to come from this "
        "configuration; pick another train.run_name or set overwrite=true to retrain"
    )


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


def differences(stored: Any, current: Any) -> dict[str, str]:
    """{dotted key: 'stored a, now b'} for every differing leaf of two nested dicts."""
    stored, current = json.loads(canonical(stored)), json.loads(canonical(current))
    diffs: dict[str, str] = {}

    def walk(a: Any, b: Any, key: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{key}.{k}" if key else k)
        elif a != b:
            diffs[key or "value"] = f"stored {a!r}, now {b!r}"

    walk(stored, current, "")
    return diffs


def _differences(stored: Any, current: Any) -> str:
    """'key: stored -> now' for the first few differing leaves of two nested dicts."""
    diffs = [f"{key}: {change}" for key, change in differences(stored, current).items()]
    return ", ".join(diffs[:5]) + (f" and {len(diffs) - 5} more" if len(diffs) > 5 else "")
