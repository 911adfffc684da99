"""One job: train one network on the other folds, evaluate on the held-out fold after every epoch,
write one per-fold log in the published layout (SPEC sections 5, 6).

Reproducible and restartable:
- the model is initialised from `torch.manual_seed(seed)` (as the authors' scripts did, so both
  arms and every fold start from the same weights when the input channels match), and the batch
  order of each epoch comes from its own generator seeded from (seed, fold, epoch);
- a checkpoint is written atomically after every epoch, so a killed job restarts at its last
  finished epoch and ends with exactly the log an uninterrupted run gives;
- the per-fold log is written only when every epoch is done, so the logs folder holds only
  complete logs; a job whose log exists is skipped unless `overwrite=true`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig
from sklearn.metrics import r2_score
from tqdm import tqdm

from coordchannels.entry import UserError
from coordchannels.io import write_csv, write_text
from coordchannels.logs import log_columns
from coordchannels.settings import canonical, choice, plain
from coordchannels.stats.comparison import LIMIT_KEYS, SCALE_MARK
from coordchannels.taskdata import TaskData
from coordchannels.train.device import (
    resolve_device,
    seed_everything,
    set_determinism,
    tune_malloc,
)
from coordchannels.train.grid import Job
from coordchannels.train.paths import checkpoint_path, job_log_path
from coordchannels.train.record import (
    RunConfigError,
    finished_epochs,
    job_fingerprint,
    job_lock,
    job_record_path,
    load_checkpoint,
    save_checkpoint,
    write_job_record,
)
from coordchannels.train.tracker import job_tracker

log = logging.getLogger(__name__)

# Targets' standard deviations below this are replaced by 1 (as the scripts did), so that a
# constant coordinate does not divide the loss by zero.
MIN_STD = 1e-6


# --------------------------------------------------------------------------------------------
# One job
# --------------------------------------------------------------------------------------------
def run_job(cfg: DictConfig, model_name: str, arm_name: str, seed: int, fold: int) -> Path:
    """Train one (model, arm, seed, fold) job to train.epochs, resuming from its checkpoint; return its log.

    A job finished with the same fingerprint and epochs is not run again (unless cfg.overwrite);
    one finished with fewer epochs continues from its checkpoint (the first epochs are the same
    numbers); see coordchannels.train.record for what is refused.
    """
    job = Job(model_name, arm_name, int(seed), int(fold))
    out_log, ckpt_path, record_path = job_log_path(cfg, job), checkpoint_path(cfg, job), job_record_path(cfg, job)
    fingerprint, epochs = job_fingerprint(cfg, job), int(cfg.train.epochs)
    with job_lock(cfg, job):
        done = 0 if cfg.overwrite else finished_epochs(cfg, job, out_log, fingerprint)
        if done == epochs:
            log.info("%s: already finished (%s), skipped", job, out_log)
            return out_log
        state = None if cfg.overwrite else load_checkpoint(ckpt_path, fingerprint)
        if state is not None and len(state["rows"]) > epochs:
            raise RunConfigError(
                f"{job}: its checkpoint {ckpt_path} is past epoch {epochs} ({len(state['rows'])} epochs done): "
                "fewer epochs than a run already trained cannot be had from it; pick another train.run_name "
                "or set overwrite=true to retrain"
            )
        if done:
            log.info("%s: finished with %d epochs; continuing to %d", job, done, epochs)
        # Retraining or continuing: drop the old log and record first, so that an interrupted run can
        # never leave them beside the new checkpoint and be mistaken for finished.
        record_path.unlink(missing_ok=True)
        out_log.unlink(missing_ok=True)
        rows, columns = job_loop(cfg)(
            cfg, job, state, lambda model, opt, rows: save_checkpoint(ckpt_path, fingerprint, model, opt, rows)
        )
        write_csv(log_frame(rows, columns), out_log)
        mark_reduced_scale(cfg, out_log.parent)
        write_job_record(record_path, fingerprint, epochs, out_log)
    log.info("%s: finished, log %s", job, out_log)
    return out_log


def mark_reduced_scale(cfg: DictConfig, folder: Path) -> None:
    """With train.limit_train/limit_test, leave their values beside the logs (`SCALE_MARK`), so that
    tables made from a copy of the folder still say the run was reduced."""
    limits = {key: plain(cfg.train.get(key)) for key in LIMIT_KEYS}
    if any(value is not None for value in limits.values()):
        write_text(folder / SCALE_MARK, json.dumps(limits, sort_keys=True) + "\n")


def job_loop(cfg: DictConfig):
    """The training loop of the task's jobs: `task.loop.fn` when the task declares one (an
    image-to-image task trains on another loss and logs other measures), else `train_job`, the
    regression loop. Everything around it (locks, checkpoints, records, logs) is the same."""
    loop = cfg.task.get("loop")
    return get_method(loop.fn) if loop is not None and loop.get("fn") else train_job


def train_job(cfg: DictConfig, job: Job, state: dict | None, checkpoint) -> tuple[list[list[float]], list[str]]:
    """Train `job` from `state` (a checkpoint, or None to start afresh) to cfg.train.epochs.

    Calls checkpoint(model, optimizer, rows) after every epoch; returns the log rows
    (epoch, train R^2..., test R^2...) and the log's column names.
    """
    device = resolve_device(cfg.train.device)
    set_determinism(bool(cfg.train.deterministic), device)
    tune_malloc()
    data = task_data(cfg, job.arm, device)
    columns = log_columns(tuple(data.target_names))
    train_idx, test_idx = job_indices(cfg, data, job.fold, job.seed)
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

    with job_tracker(cfg, job) as track:  # TensorBoard event files with train.tracker=tensorboard
        for epoch in range(len(rows) + 1, int(cfg.train.epochs) + 1):
            start = time.perf_counter()
            generator = epoch_generator(job.seed, job.fold, epoch)
            train_pred, train_true = train_one_epoch(
                forward,
                optimizer,
                data,
                train_idx,
                mean,
                std,
                int(cfg.train.batch_size),
                generator,
                f"{job} e{epoch}",
                run,
            )
            test_pred, test_true = predict(forward, data, test_idx, int(cfg.train.eval_batch_size), run)
            rows.append([epoch, *r2_per_target(train_true, train_pred), *r2_per_target(test_true, test_pred)])
            checkpoint(model, optimizer, rows)
            log_epoch(job, rows[-1], columns, time.perf_counter() - start)
            track(rows[-1], columns)
    return rows, columns


def build_model(model_cfg: DictConfig, arm_cfg: DictConfig, n_channels: int) -> torch.nn.Module:
    """The model of `model_cfg.net` for `n_channels` inputs, with the arm's extra keyword arguments."""
    kwargs = plain(arm_cfg.get("model_kwargs")) or {}
    return instantiate(model_cfg.net, in_channels=n_channels, **kwargs)


def log_epoch(job: Job, row: list[float], columns: list[str], seconds: float) -> None:
    """One progress line per epoch (also the hook the tests use to interrupt a job)."""
    values = " ".join(f"{name}={value:.4f}" for name, value in zip(columns[1:], row[1:]))
    log.info("%s: epoch %d %s (%.3f s)", job, int(row[0]), values, seconds)  # read back by the plan


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
    key = canonical({"task": plain(cfg.task), "arm": plain(arm_cfg), "device": str(device)})
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # hold one arm's data at a time
        start = time.perf_counter()
        _DATA_CACHE[key] = load_data(cfg, arm_cfg, device)
        log.info("loaded %s data for arm %s in %.1f s", cfg.task.name, arm_name, time.perf_counter() - start)
    return _DATA_CACHE[key]


# A loader's advice to rebuild with the data stages, which does not apply to external data.
_REBUILD_ADVICE = re.compile(r"[:;,]?\s*\(?(re)?run[^:;]*`make data[^`]*`\)?")


def load_data(cfg: DictConfig, arm_cfg: DictConfig, device: torch.device) -> TaskData:
    """The task's loader; with external_data=true an unusable file is named as external data (the
    data stages did not make it, so rebuilding them is not the way out)."""
    try:
        return get_method(cfg.task.loader)(cfg, arm_cfg, device)
    except (OSError, ValueError, KeyError, EOFError) as exc:
        if not cfg.get("external_data"):
            raise
        detail = _REBUILD_ADVICE.sub("", str(exc)).strip() or type(exc).__name__
        if isinstance(exc, KeyError):
            detail = f"no column {detail}"
        raise UserError(
            f"external data in {cfg.task.processed_dir} (external_data=true) are unusable: {detail} "
            f"(write the {cfg.task.name} processed layout there again, e.g. with scripts/authors_ecg/compare_authors_ecg.py "
            "--export, or point task.processed_dir at a complete export)"
        ) from exc


def job_indices(cfg: DictConfig, data: TaskData, fold: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test sample indices of `fold` (int64, CPU), cut to train.limit_train/limit_test
    by a subset seeded from (seed, fold) and stratified over the task's records (`limited`)."""
    train, test = data.split(fold)
    groups = getattr(data, "sample_group", None)
    train = limited(np.asarray(train), cfg.train.limit_train, groups, (seed, fold, 0))
    test = limited(np.asarray(test), cfg.train.limit_test, groups, (seed, fold, 1))
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"fold {fold} has {len(train)} training and {len(test)} test samples; both must be > 0")
    return torch.as_tensor(train, dtype=torch.int64), torch.as_tensor(test, dtype=torch.int64)


def limited(idx: np.ndarray, limit, groups: np.ndarray | None, entropy: tuple[int, ...]) -> np.ndarray:
    """`limit` of the indices `idx` (all of them when None or more), in ascending order.

    Not the first `limit`: those all come from one record, so every fold without that record would
    train the same model. Each group (record) gets its share of `limit` in proportion to its
    samples (largest remainders first), drawn at random from a generator seeded by `entropy`;
    without groups, a seeded random subset."""
    if limit is None or int(limit) >= len(idx):
        return idx
    n = int(limit)
    rng = np.random.default_rng(np.random.SeedSequence(list(entropy)))
    if groups is None:
        return np.sort(rng.choice(idx, n, replace=False))
    group = np.asarray(groups)[idx]
    names, counts = np.unique(group, return_counts=True)
    quota = n * counts / len(idx)
    share = np.floor(quota).astype(int)
    share[np.argsort(share - quota, kind="stable")[: n - int(share.sum())]] += 1
    return np.sort(np.concatenate([rng.choice(idx[group == name], k, replace=False) for name, k in zip(names, share)]))


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
        choice(precision, PRECISIONS, "train.precision")
        return cls(
            device.type, precision, bool(train_cfg.get("channels_last", False)), bool(train_cfg.get("compile", False))
        )

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


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TaskData,
    train_idx: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    desc: str = "",
    run: Execution | None = None,
) -> tuple[np.ndarray, np.ndarray]:
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
            idx = order[start : start + batch_size]
            y = data.targets(idx)
            preds.append(train_step(model, optimizer, data.inputs(idx), y, mean, std, run)[1])
            trues.append(y)
            bar.update(1)
    return _numpy(preds), _numpy(trues)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    run: Execution,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step on the MSE of standardised prediction and target; returns (loss, predictions),
    detached, float32. The loss is computed in float32 whatever the forward precision."""
    with run.autocast():
        pred = model(run.prepare(x)).float()
    loss = F.mse_loss((pred - mean) / std, (y - mean) / std)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), pred.detach()


def predict(
    model: torch.nn.Module, data: TaskData, idx: torch.Tensor, batch_size: int, run: Execution | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, targets) of samples `idx` in eval mode, in order."""
    run = run or Execution()
    model.eval()
    preds, trues = [], []
    with torch.inference_mode(), run.autocast():
        for start in range(0, len(idx), batch_size):
            batch = idx[start : start + batch_size]
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
