"""The contract between a task's data and the one trainer.

Each task provides a loader `load(cfg, arm, device) -> TaskData` named by `task.loader` in its
config. The trainer only ever sees this interface, so it serves the 1-D and 2-D tasks and every
arm alike. Sample indices are over augmented variants (base sample * n_variants + variant).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class TaskData(Protocol):
    # Names of the target coordinates: ("",) for one target (log columns train_r2, test_r2),
    # ("h", "k") for two (columns train_r2_h, train_r2_k, test_r2_h, test_r2_k).
    target_names: tuple[str, ...]
    # Number of input channels the model sees (signal channels + the arm's extra channels).
    n_channels: int
    # How many training targets estimate the standardisation mean and std (None = all of them;
    # SiPaKMeD's scripts use the first 10000 training samples).
    target_stats_samples: int | None
    # Optional: the record (patient) of each sample, over which train.limit_train / limit_test draw
    # their subsets in proportion; a task without it gets a plain seeded random subset.
    # sample_group: np.ndarray

    def split(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) sample indices of 1-based `fold`, in a fixed order."""

    def targets(self, idx: torch.Tensor) -> torch.Tensor:
        """Targets of samples `idx` as float32 (n, len(target_names)) on the device."""

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """Model inputs of samples `idx` as float32 (n, n_channels, ...) on the device."""


def folds_present(fold_of: np.ndarray, fold: int) -> np.ndarray:
    """The fold numbers in `fold_of` (one per sample or image); a clear error if `fold` is not
    among them. Shared by the tasks' `split`."""
    folds = np.unique(fold_of)
    if fold not in folds:
        raise ValueError(f"fold {fold} does not exist; the folds are {folds.tolist()}")
    return folds
