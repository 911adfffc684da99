"""The job grid: one training job = (model, arm, seed, fold), selected by cfg.train.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from omegaconf import DictConfig

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Job:
    """One training job: `model` and `arm` are names in task.models and arms; fold is 1-based."""

    model: str
    arm: str
    seed: int
    fold: int

    def __str__(self) -> str:
        return f"{self.model}/{self.arm} seed {self.seed} fold {self.fold}"

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
