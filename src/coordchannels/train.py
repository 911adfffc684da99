"""The one trainer (SPEC section 5): every task, model and arm goes through `run_job`.

A *job* is (model, arm, seed, fold). It trains one network on the other folds and evaluates it on
the held-out fold after every epoch, writing one per-fold log in the published layout (SPEC
section 6). Jobs share nothing but read-only data, so they can run one after another, side by side
(`train.n_jobs`), or be fanned out by a Hydra launcher.

Reproducible and restartable:
- the model is initialised from `torch.manual_seed(seed)` (as the authors' scripts did, so both
  arms and every fold start from the same weights when the input channels match), and the batch
  order of each epoch comes from its own generator seeded from (seed, fold, epoch);
- a checkpoint is written atomically after every epoch, so a killed job restarts at its last
  finished epoch and ends with exactly the log an uninterrupted run gives;
- the per-fold log is written only when every epoch is done, so the logs folder holds only
  complete logs; a job whose log exists is skipped unless `overwrite=true`;
- a fingerprint of everything that changes the numbers is stored in each checkpoint and in
  `<run_dir>/run_config.yaml`; a run with a different one refuses to resume or skip.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import r2_score
from tqdm import tqdm

from coordchannels.io import atomic_path, write_csv, write_text
from coordchannels.logs import log_columns, log_path
from coordchannels.taskdata import TaskData

log = logging.getLogger(__name__)

RUN_CONFIG = "run_config.yaml"
# Training hyper-parameters that change the numbers (device, threads and eval batch size do not).
TRAIN_KEYS = ("epochs", "batch_size", "lr", "limit_train", "limit_test", "precision", "channels_last", "compile")
# Targets' standard deviations below this are replaced by 1 (as the scripts did), so that a
# constant coordinate does not divide the loss by zero.
MIN_STD = 1e-6


class RunConfigError(ValueError):
    """A run folder holds work done under another configuration; the message says how to proceed."""


@dataclass(frozen=True)
class Job:
    """One training job: `model` and `arm` are names in task.models and arms; fold is 1-based."""

    model: str
    arm: str
    seed: int
    fold: int

    def __str__(self) -> str:
        return f"{self.model}/{self.arm} seed {self.seed} fold {self.fold}"


# --------------------------------------------------------------------------------------------
# The stage: the job grid, run serially or side by side
# --------------------------------------------------------------------------------------------
def train_stage(cfg: DictConfig) -> None:
    """Run every job of the grid (models x arms x seeds x folds), skipping finished ones."""
    if not cfg.task.models:
        log.info("task %s trains no models (its experiment stage trains its own): nothing to do",
                 cfg.task.name)
        return
    jobs = job_grid(cfg)
    update_run_config(cfg, jobs)
    n_jobs = jobs_side_by_side(cfg, len(jobs))
    threads = threads_per_job(cfg, n_jobs)
    log.info("%d training jobs in %s (%d side by side, %d torch thread(s) each)",
             len(jobs), cfg.train.run_dir, n_jobs, threads)
    start = time.perf_counter()
    if n_jobs == 1:
        try:
            with torch_threads(threads):
                paths = [run_job(cfg, *_job_args(job)) for job in jobs]
        finally:
            _DATA_CACHE.clear()
    else:
        from joblib import Parallel, delayed

        # Resolve once here so that every worker sees the same paths and values.
        plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        root = logging.getLogger()
        # Workers append their progress lines to the stage's log files too (and print to stderr).
        files = [h.baseFilename for h in root.handlers if isinstance(h, logging.FileHandler)]
        paths = Parallel(n_jobs=n_jobs, backend="loky")(
            delayed(_run_job_in_worker)(plain, job, threads, root.getEffectiveLevel(), files) for job in jobs)
    log.info("%d per-fold logs under %s (%.1f s)", len(paths), cfg.train.logs_dir, time.perf_counter() - start)


def job_grid(cfg: DictConfig) -> list[Job]:
    """The jobs selected by cfg.train, arm by arm so that each arm's data is loaded once."""
    models = _selected(cfg.train.models, cfg.task.models, "model", "task.models")
    arms = _selected(cfg.train.arms, cfg.arms, "arm", "arms")
    n_folds = int(cfg.task.data.n_folds)
    folds = list(range(1, n_folds + 1)) if cfg.train.folds is None else [int(f) for f in cfg.train.folds]
    bad = [f for f in folds if not 1 <= f <= n_folds]
    if bad:
        raise ValueError(f"train.folds {bad} outside 1..{n_folds} (task.data.n_folds)")
    seeds = [int(s) for s in cfg.train.seeds]
    if not seeds:
        raise ValueError("train.seeds is empty: give at least one seed")
    return [Job(m, a, s, f) for a in arms for m in models for s in seeds for f in folds]


def _selected(wanted, known, what: str, where: str) -> list[str]:
    names = list(known) if wanted is None else [str(n) for n in wanted]
    if not names:
        raise ValueError(f"no {what} to train: {where} is empty (task {what}s are listed in {where})")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; {where} has {sorted(known)}")
    return names


def jobs_side_by_side(cfg: DictConfig, n_jobs_total: int) -> int:
    """cfg.train.n_jobs, where `auto` = one job per core on a CPU (the small models gain little
    from more threads per job) and one at a time on a GPU (which a single job keeps busy)."""
    wanted = cfg.train.n_jobs
    if str(wanted) == "auto":
        wanted = 1 if resolve_device(cfg.train.device).type == "cuda" else _cores()
    return max(1, min(int(wanted), n_jobs_total))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_job(cfg: DictConfig, n_jobs: int) -> int:
    """cfg.train.num_threads, or the cores shared equally by the jobs running side by side."""
    if cfg.train.num_threads is not None:
        return int(cfg.train.num_threads)
    return max(1, _cores() // n_jobs)


def _job_args(job: Job) -> tuple[str, str, int, int]:
    return job.model, job.arm, job.seed, job.fold


def _run_job_in_worker(cfg: DictConfig, job: Job, threads: int, level: int, log_files: list[str]) -> Path:
    """Entry point of a joblib worker process: its own threads, logging like the parent's."""
    _worker_logging(level, log_files)
    torch.set_num_threads(threads)
    return run_job(cfg, *_job_args(job))


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


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Use n torch threads inside the block, then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# One job
# --------------------------------------------------------------------------------------------
def run_job(cfg: DictConfig, model_name: str, arm_name: str, seed: int, fold: int) -> Path:
    """Train one (model, arm, seed, fold) job to the end, resuming from its checkpoint; return its log.

    A job whose log exists is not run again (unless cfg.overwrite); its checkpoint, when kept,
    must carry the same fingerprint.
    """
    job = Job(model_name, arm_name, int(seed), int(fold))
    out_log, ckpt_path = job_log_path(cfg, job), checkpoint_path(cfg, job)
    fingerprint = job_fingerprint(cfg, job)
    state = None if cfg.overwrite else load_checkpoint(ckpt_path, fingerprint)
    if out_log.exists() and not cfg.overwrite:
        log.info("%s: already finished (%s), skipped", job, out_log)
        return out_log
    # Retraining: drop the old log first, so that an interrupted retrain can never leave the
    # previous run's log beside the new checkpoint and be mistaken for finished.
    out_log.unlink(missing_ok=True)
    rows, columns = train_job(cfg, job, state, lambda model, opt, rows: save_checkpoint(
        ckpt_path, fingerprint, model, opt, rows))
    write_csv(log_frame(rows, columns), out_log)
    log.info("%s: finished, log %s", job, out_log)
    return out_log


def train_job(cfg: DictConfig, job: Job, state: dict | None, checkpoint) -> tuple[list[list[float]], list[str]]:
    """Train `job` from `state` (a checkpoint, or None to start afresh) to cfg.train.epochs.

    Calls checkpoint(model, optimizer, rows) after every epoch; returns the log rows
    (epoch, train R^2..., test R^2...) and the log's column names.
    """
    device = resolve_device(cfg.train.device)
    set_determinism(bool(cfg.train.deterministic), device)
    _tune_malloc()
    data = task_data(cfg, job.arm, device)
    columns = log_columns(tuple(data.target_names))
    train_idx, test_idx = job_indices(cfg, data, job.fold)
    mean, std = target_standardisation(data, train_idx)

    seed_everything(job.seed)  # the initial weights depend on the seed only, as in the scripts
    model = build_model(cfg.task.models[job.model], cfg.arms[job.arm], data.n_channels).to(device)
    run = Execution.from_config(cfg.train, device)
    model = run.place(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg.train.lr))
    rows: list[list[float]] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rows = [list(r) for r in state["rows"]]
        log.info("%s: resuming after epoch %d", job, len(rows))
    # Checkpoints hold `model`'s weights; batches go through `forward` (compiled when asked).
    forward = run.compiled(model)

    for epoch in range(len(rows) + 1, int(cfg.train.epochs) + 1):
        start = time.perf_counter()
        generator = epoch_generator(job.seed, job.fold, epoch)
        train_pred, train_true = train_one_epoch(
            forward, optimizer, data, train_idx, mean, std, int(cfg.train.batch_size), generator, f"{job} e{epoch}", run)
        test_pred, test_true = predict(forward, data, test_idx, int(cfg.train.eval_batch_size), run)
        rows.append([epoch, *r2_per_target(train_true, train_pred), *r2_per_target(test_true, test_pred)])
        checkpoint(model, optimizer, rows)
        log_epoch(job, rows[-1], columns, time.perf_counter() - start)
    return rows, columns


def job_log_path(cfg: DictConfig, job: Job) -> Path:
    """The published-layout log of a job; seeds are named only when the run has several."""
    seed = job.seed if len(cfg.train.seeds) > 1 else None
    return log_path(cfg.train.logs_dir, cfg.task.models[job.model].log_name, job.arm, job.fold, seed)


def checkpoint_path(cfg: DictConfig, job: Job) -> Path:
    log_name = cfg.task.models[job.model].log_name
    return Path(cfg.train.run_dir) / "checkpoints" / log_name / f"{job.arm}_seed_{job.seed}_fold_{job.fold}.pt"


def build_model(model_cfg: DictConfig, arm_cfg: DictConfig, n_channels: int) -> torch.nn.Module:
    """The model of `model_cfg.net` for `n_channels` inputs, with the arm's extra keyword arguments."""
    kwargs = _plain(arm_cfg.get("model_kwargs")) or {}
    return instantiate(model_cfg.net, in_channels=n_channels, **kwargs)


def log_epoch(job: Job, row: list[float], columns: list[str], seconds: float) -> None:
    """One progress line per epoch (also the hook the tests use to interrupt a job)."""
    values = " ".join(f"{name}={value:.4f}" for name, value in zip(columns[1:], row[1:]))
    log.info("%s: epoch %d %s (%.1f s)", job, int(row[0]), values, seconds)


def log_frame(rows: list[list[float]], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    frame["epoch"] = frame["epoch"].astype(int)
    return frame


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
# The TaskData last loaded in this process, keyed by what it depends on: consecutive jobs of one
# arm (the grid is ordered arm by arm) reuse it instead of reading the arrays again.
_DATA_CACHE: dict[str, TaskData] = {}


def task_data(cfg: DictConfig, arm_name: str, device: torch.device) -> TaskData:
    """cfg.task.loader(cfg, arm, device), loaded once per arm and device in this process."""
    arm_cfg = cfg.arms[arm_name]
    key = _canonical({"task": _plain(cfg.task), "arm": _plain(arm_cfg), "device": str(device)})
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # hold one arm's data at a time
        start = time.perf_counter()
        _DATA_CACHE[key] = get_method(cfg.task.loader)(cfg, arm_cfg, device)
        log.info("loaded %s data for arm %s in %.1f s", cfg.task.name, arm_name, time.perf_counter() - start)
    return _DATA_CACHE[key]


def job_indices(cfg: DictConfig, data: TaskData, fold: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test sample indices of `fold` (int64, CPU), cut to train.limit_train/limit_test."""
    train, test = data.split(fold)
    train = _limit(np.asarray(train), cfg.train.limit_train)
    test = _limit(np.asarray(test), cfg.train.limit_test)
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"fold {fold} has {len(train)} training and {len(test)} test samples; both must be > 0")
    return torch.as_tensor(train, dtype=torch.int64), torch.as_tensor(test, dtype=torch.int64)


def _limit(idx: np.ndarray, limit) -> np.ndarray:
    return idx if limit is None else idx[: int(limit)]


def target_standardisation(data: TaskData, train_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate mean and (unbiased) std of the training targets, from the first
    data.target_stats_samples of them when set (SiPaKMeD's scripts used 10000)."""
    n = data.target_stats_samples
    y = data.targets(train_idx if n is None else train_idx[: int(n)]).float()
    mean = y.mean(dim=0)
    std = y.std(dim=0) if len(y) > 1 else torch.ones_like(mean)
    std = torch.where(std < MIN_STD, torch.ones_like(std), std)
    return mean, std


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Execution:
    """How batches run on the device: train.precision, train.channels_last, train.compile.

    The defaults (fp32, default memory format, eager) give the scripts' arithmetic. On a GPU,
    bf16 autocast and channels-last convolutions are where the speed is; `scripts/bench_sipakmed.py`
    measures both the speed and whether bf16 moves the result beyond seed noise. All three are
    in the jobs' fingerprint: a run cannot resume or skip with other values.
    """

    device_type: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def from_config(cls, train_cfg: DictConfig, device: torch.device) -> Execution:
        precision = str(train_cfg.get("precision", "fp32"))
        if precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {precision!r}")
        return cls(device.type, precision, bool(train_cfg.get("channels_last", False)),
                   bool(train_cfg.get("compile", False)))

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the memory format the model runs in (channels-last applies to images only)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def compiled(self, model: torch.nn.Module) -> torch.nn.Module:
        return torch.compile(model) if self.compile else model


def epoch_generator(seed: int, fold: int, epoch: int) -> torch.Generator:
    """The batch-order generator of one epoch: a pure function of (seed, fold, epoch), so that a
    resumed job draws the same batches as an uninterrupted one."""
    state = np.random.SeedSequence([seed, fold, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def train_one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: TaskData,
                    train_idx: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, batch_size: int,
                    generator: torch.Generator, desc: str = "", run: Execution | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One pass over shuffled training batches; returns (predictions, targets) as made in training.

    The loss is the MSE of prediction and target after standardising both with the training
    targets' statistics. The batches index the loader's tensors directly (no DataLoader) to keep
    per-batch Python overhead small on a CPU.
    """
    run = run or Execution()
    model.train()
    order = train_idx[torch.randperm(len(train_idx), generator=generator)]
    preds, trues = [], []
    n_batches = (len(order) + batch_size - 1) // batch_size
    with _progress(n_batches, desc) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            y = data.targets(idx)
            preds.append(train_step(model, optimizer, data.inputs(idx), y, mean, std, run)[1])
            trues.append(y)
            bar.update(1)
    return _numpy(preds), _numpy(trues)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               mean: torch.Tensor, std: torch.Tensor, run: Execution) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step on the MSE of standardised prediction and target; returns (loss, predictions),
    detached, float32. The loss is computed in float32 whatever the forward precision."""
    with run.autocast():
        pred = model(run.prepare(x)).float()
    loss = F.mse_loss((pred - mean) / std, (y - mean) / std)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), pred.detach()


def predict(model: torch.nn.Module, data: TaskData, idx: torch.Tensor, batch_size: int,
            run: Execution | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, targets) of samples `idx` in eval mode, in order."""
    run = run or Execution()
    model.eval()
    preds, trues = [], []
    with torch.inference_mode(), run.autocast():
        for start in range(0, len(idx), batch_size):
            batch = idx[start:start + batch_size]
            preds.append(model(run.prepare(data.inputs(batch))).float())
            trues.append(data.targets(batch))
    return _numpy(preds), _numpy(trues)


def _numpy(chunks: list[torch.Tensor]) -> np.ndarray:
    return torch.cat(chunks).float().cpu().numpy()


def r2_per_target(y_true: np.ndarray, y_pred: np.ndarray) -> list[float]:
    """scikit-learn R^2 of each target coordinate (columns), in float64."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    return [float(r2_score(y_true[:, j], y_pred[:, j])) for j in range(y_true.shape[1])]


def _progress(total: int, desc: str):
    """A tqdm bar over batches when a person is watching (stderr is a terminal), else nothing."""
    return tqdm(total=total, desc=desc, leave=False, disable=not sys.stderr.isatty())


# --------------------------------------------------------------------------------------------
# Device, seeds, determinism
# --------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels where they cost little: all of them on a CPU; cuDNN's on a GPU (the
    fully deterministic CUDA mode needs an environment variable set before start-up)."""
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if device.type == "cpu":
        torch.use_deterministic_algorithms(deterministic, warn_only=True)


_MALLOC_TUNED = False


def _tune_malloc() -> None:
    """Keep freed memory in the process instead of returning it to the system (glibc only).

    Each training step allocates and frees the same ~1 MB activations; by default glibc maps and
    unmaps them every time, and the page faults (slow in a VM) cost about a quarter of
    NimeshaNet's CPU training time. Changes speed only, never numbers.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or not sys.platform.startswith("linux"):
        return
    _MALLOC_TUNED = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers in glibc's malloc.h
        libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's largest allowed value
        libc.mallopt(m_trim_threshold, 1024 * 1024 * 1024)
    except (OSError, AttributeError):  # not glibc (e.g. musl): keep the defaults
        pass


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, fingerprint: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    rows: list[list[float]]) -> None:
    """Everything needed to continue after the last finished epoch, written atomically."""
    state = {
        "fingerprint": _canonical(fingerprint),
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
    if stored != json.loads(_canonical(fingerprint)):
        raise RunConfigError(
            f"{path} was written by a job with another configuration ({_differences(stored, fingerprint)}); "
            "pick another train.run_name or set overwrite=true to retrain")
    return state


# --------------------------------------------------------------------------------------------
# Fingerprints: what changes the numbers
# --------------------------------------------------------------------------------------------
def data_fingerprint(cfg: DictConfig) -> dict:
    """task name and task.data without the keys that say only where the data come from."""
    data = _plain(cfg.task.data)
    for key in cfg.train.get("fingerprint_ignore") or []:
        data.pop(key, None)
    return {"name": str(cfg.task.name), "data": data}


def train_fingerprint(cfg: DictConfig) -> dict:
    return {key: _plain(cfg.train.get(key)) for key in TRAIN_KEYS}


def job_fingerprint(cfg: DictConfig, job: Job) -> dict:
    """Everything that changes a job's numbers: data, model, arm, hyper-parameters and seed."""
    return {
        "task": data_fingerprint(cfg),
        "train": train_fingerprint(cfg),
        "model": _plain(cfg.task.models[job.model]),
        "arm": _plain(cfg.arms[job.arm]),
        "seed": job.seed,
    }


def run_fingerprint(cfg: DictConfig, jobs: list[Job]) -> dict:
    """The run-level record: shared settings plus each model and arm trained in this run.

    `log_seed` is the seed behind logs whose names carry none (runs with a single seed), so that a
    single-seed run with another seed cannot pass off the old logs as its own.
    """
    record = {
        "task": data_fingerprint(cfg),
        "train": train_fingerprint(cfg),
        "models": {m: _plain(cfg.task.models[m]) for m in dict.fromkeys(j.model for j in jobs)},
        "arms": {a: _plain(cfg.arms[a]) for a in dict.fromkeys(j.arm for j in jobs)},
    }
    if len(cfg.train.seeds) == 1:
        record["log_seed"] = int(cfg.train.seeds[0])
    return json.loads(_canonical(record))


def update_run_config(cfg: DictConfig, jobs: list[Job]) -> None:
    """Check this run against `<run_dir>/run_config.yaml` and add its models and arms to it.

    Shared settings must match; a model or arm already in the record must match; new ones are
    added. With overwrite=true the current settings replace the recorded ones.
    """
    path = Path(cfg.train.run_dir) / RUN_CONFIG
    current = run_fingerprint(cfg, jobs)
    stored = _read_run_config(path)
    if stored is None:
        merged = current
    else:
        if not cfg.overwrite:
            problems = _run_conflicts(stored, current)
            if problems:
                raise RunConfigError(
                    f"{path}: this run's configuration differs from the one its results were made with "
                    f"({'; '.join(problems)}); pick another train.run_name or set overwrite=true to retrain")
        merged = {**stored, **{k: v for k, v in current.items() if k not in ("models", "arms")}}
        for key in ("models", "arms"):
            merged[key] = {**stored.get(key, {}), **current[key]}
    if merged != stored:
        write_text(path, OmegaConf.to_yaml(OmegaConf.create(merged)))


def _read_run_config(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(_canonical(OmegaConf.to_container(OmegaConf.load(path), resolve=False)))
    except Exception as exc:
        raise RunConfigError(f"{path}: unreadable run record ({exc}); delete it or set overwrite=true") from exc


def _run_conflicts(stored: dict, current: dict) -> list[str]:
    problems = []
    for key in ("task", "train", "log_seed"):
        if key in stored and key in current and stored[key] != current[key]:
            problems.append(_differences(stored[key], current[key], key))
    for key in ("models", "arms"):
        for name, value in current[key].items():
            if name in stored.get(key, {}) and stored[key][name] != value:
                problems.append(_differences(stored[key][name], value, f"{key}.{name}"))
    return problems


def _differences(stored: Any, current: Any, prefix: str = "") -> str:
    """'key: stored -> now' for the first few differing leaves of two nested dicts."""
    stored, current = json.loads(_canonical(stored)), json.loads(_canonical(current))
    diffs: list[str] = []

    def walk(a: Any, b: Any, key: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{key}.{k}" if key else k)
        elif a != b:
            diffs.append(f"{key or 'value'}: stored {a!r}, now {b!r}")

    walk(stored, current, prefix)
    return ", ".join(diffs[:5]) + (f" and {len(diffs) - 5} more" if len(diffs) > 5 else "")


def _plain(node: Any) -> Any:
    """A resolved config node as plain Python containers."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _canonical(value: Any) -> str:
    """A stable text form of plain data: equal settings give equal strings."""
    return json.dumps(value, sort_keys=True, default=str)
