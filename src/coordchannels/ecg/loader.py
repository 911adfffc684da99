"""The trainer's view of the ECG task: the cached features of one arm, targets and folds as a
`TaskData` (see coordchannels.taskdata).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from coordchannels.channels import KINDS
from coordchannels.ecg.augment import AUGMENTED_CSV
from coordchannels.ecg.features import LEADS_NPY, extra_npy
from coordchannels.ecg.folds import FOLDS_CSV
from coordchannels.stages import require_input
from coordchannels.taskdata import folds_present

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Loader: the trainer's view of the ECG task
# --------------------------------------------------------------------------------------------


@dataclass
class EcgTaskData:
    """Preprocessed inputs (N, 2 + k, L') and targets (N, 1) on one device, plus the fold of
    each sample (folds group all variants of an episode, or of a record)."""

    x: torch.Tensor
    y: torch.Tensor
    sample_fold: np.ndarray
    # The record (patient) of each sample: train.limit_train draws its subset over all of them.
    sample_group: np.ndarray | None = None
    target_names: tuple[str, ...] = ("",)
    target_stats_samples: int | None = None

    @property
    def n_channels(self) -> int:
        return int(self.x.shape[1])

    def split(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        folds_present(self.sample_fold, fold)
        return np.flatnonzero(self.sample_fold != fold), np.flatnonzero(self.sample_fold == fold)

    def targets(self, idx: torch.Tensor) -> torch.Tensor:
        return self.y[idx.to(self.y.device)]

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        return self.x[idx.to(self.x.device)]


def _sample_folds(folds_dir: Path, samples: pd.DataFrame, group_by: str) -> np.ndarray:
    """The fold of every sample, through its episode name, from folds.csv column fold_<group_by>."""
    folds_csv = require_input(Path(folds_dir) / FOLDS_CSV, "folds", "ecg")
    folds = pd.read_csv(folds_csv, dtype={"record": str})
    column = f"fold_{group_by}"
    if column not in folds.columns:
        raise ValueError(f"{folds_csv} has no column {column!r} (task.data.group_by={group_by!r})")
    mapping = dict(zip(folds["episode"], folds[column]))
    missing = sorted(set(samples["episode"]) - set(mapping))
    if missing:
        raise ValueError(f"{folds_csv} lacks episodes {missing[:5]}...: rerun the folds stage (overwrite=true)")
    return samples["episode"].map(mapping).to_numpy(dtype=np.int64)


def _array(path: Path) -> np.ndarray:
    """A memory-mapped .npy, or an error naming the file that is not one."""
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable .npy array ({exc})") from exc


def load_task_data(cfg: DictConfig, arm: DictConfig, device) -> EcgTaskData:
    """leads.npy (+ extra_<arm.channels>.npy) as one float32 tensor on `device`, with targets and folds."""
    out = Path(cfg.task.processed_dir)
    samples = pd.read_csv(require_input(out / AUGMENTED_CSV, "augment", "ecg"), dtype={"record": str})
    if "target_s" not in samples.columns:
        raise ValueError(f"{out / AUGMENTED_CSV} has no column 'target_s': not an augment stage output")
    arrays = [_array(require_input(out / LEADS_NPY, "features", "ecg"))]
    if arm.channels != "none":
        if arm.channels not in KINDS:
            raise ValueError(f"arm {arm.name!r}: unknown channel kind {arm.channels!r}; expected one of {KINDS}")
        arrays.append(_array(require_input(out / extra_npy(arm.channels), "features", "ecg")))
    for arr in arrays:
        if len(arr) != len(samples):
            raise ValueError(
                f"{out}: {len(arr)} preprocessed samples but {AUGMENTED_CSV} lists {len(samples)}: "
                "rerun `make data TASK=ecg ARGS=overwrite=true`"
            )
    x = torch.from_numpy(np.concatenate(arrays, axis=1).astype(np.float32, copy=False)).to(device)
    y = torch.from_numpy(samples["target_s"].to_numpy(np.float32)[:, None]).to(device)
    return EcgTaskData(
        x=x,
        y=y,
        sample_fold=_sample_folds(Path(cfg.task.folds_dir), samples, cfg.task.data.group_by),
        sample_group=samples["record"].to_numpy(dtype=str),
    )
