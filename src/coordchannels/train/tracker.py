"""An optional tracker: TensorBoard event files per job (train.tracker=tensorboard)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig

from coordchannels.train.grid import Job

# --------------------------------------------------------------------------------------------
# An optional tracker: TensorBoard event files per job (train.tracker=tensorboard)
# --------------------------------------------------------------------------------------------
TRACKERS = ("tensorboard",)


def check_tracker(cfg: DictConfig) -> None:
    """train.tracker is null or a known tracker whose package is installed (checked before training)."""
    kind = cfg.train.get("tracker")
    if kind in (None, "", False):
        return
    from coordchannels.settings import SettingError

    if str(kind) not in TRACKERS:
        raise SettingError(f"train.tracker={kind!r}: expected null or one of {list(TRACKERS)}")
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise SettingError(
            "train.tracker=tensorboard needs the `tensorboard` package: "
            "`.venv/bin/pip install tensorboard` (then `tensorboard --logdir <run_dir>/tensorboard`)"
        ) from exc


def tracker_dir(cfg: DictConfig, job: Job) -> Path:
    """`<run_dir>/tensorboard/<Model>/<arm>_seed_<seed>_fold_<fold>`: one TensorBoard run per job."""
    log_name = cfg.task.models[job.model].log_name
    return Path(str(cfg.train.run_dir)) / "tensorboard" / log_name / f"{job.arm}_seed_{job.seed}_fold_{job.fold}"


@contextlib.contextmanager
def job_tracker(cfg: DictConfig, job: Job) -> Iterator:
    """A function `track(row, columns)` that records one epoch's log row (a no-op without a tracker)."""
    if cfg.train.get("tracker") in (None, "", False):
        yield lambda row, columns: None
        return
    check_tracker(cfg)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tracker_dir(cfg, job)))

    def track(row, columns) -> None:
        for name, value in zip(columns[1:], row[1:]):
            writer.add_scalar(name, float(value), int(row[0]))
        writer.flush()

    try:
        yield track
    finally:
        writer.close()
