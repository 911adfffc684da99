"""The job grid: one training job = (model, arm, seed, fold), selected by cfg.train, and the check
of the training settings that the runner makes before any stage runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from coordchannels.logs import MIN_EPOCHS
from coordchannels.settings import SettingError

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


def check_settings(cfg: DictConfig) -> None:
    """Refuse, before anything runs, training settings that would fail late or give nonsense."""
    t = cfg.train
    for key in ("models", "arms", "folds", "seeds"):
        value = t.get(key)
        if value is not None and not OmegaConf.is_list(value):
            raise SettingError(f"train.{key}={value!r}: give a list, e.g. train.{key}=[{value}]")
    _int_at_least(t.epochs, 1, "train.epochs")
    _int_at_least(t.batch_size, 1, "train.batch_size")
    _int_at_least(t.eval_batch_size, 1, "train.eval_batch_size")
    _int_at_least(t.num_threads, 1, "train.num_threads")
    # R^2 of fewer than 2 targets is undefined (scikit-learn returns NaN).
    for key in ("limit_train", "limit_test"):
        if t.get(key) is not None:
            _int_at_least(t[key], 2, f"train.{key}")
    try:
        lr = float(t.lr)
    except (TypeError, ValueError):
        lr = float("nan")
    if not lr > 0:
        raise SettingError(f"train.lr={t.lr!r}: give a positive number, e.g. 1e-3")
    if str(t.n_jobs) != "auto":
        _int_at_least(t.n_jobs, 1, "train.n_jobs")
    device = str(t.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SettingError(
            f"train.device={device}: this machine has no CUDA GPU usable by torch "
            f"{torch.__version__}; use train.device=cpu (or auto)"
        )
    if "stats" in cfg.get("stages", []) and int(t.epochs) < MIN_EPOCHS:
        raise SettingError(
            f"train.epochs={t.epochs}: the statistics need at least {MIN_EPOCHS} epochs (the "
            "instability spline is cubic); train more epochs or leave `stats` out of `stages`"
        )
    if cfg.task.models:
        job_grid(cfg)  # unknown models or arms, folds out of range


def _int_at_least(value, low: int, key: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number != value or number < low:
        raise SettingError(f"{key}={value!r}: give a whole number >= {low}")
    return number


def job_grid(cfg: DictConfig) -> list[Job]:
    """The jobs selected by cfg.train, arm by arm so that each arm's data is loaded once."""
    models = _selected(cfg.train.models, cfg.task.models, "model", "task.models")
    arms = _selected(cfg.train.arms, cfg.arms, "arm", "arms")
    n_folds = int(cfg.task.data.n_folds)
    folds = list(range(1, n_folds + 1)) if cfg.train.folds is None else [int(f) for f in cfg.train.folds]
    seeds = [int(s) for s in cfg.train.seeds]
    for key, values in (("models", models), ("arms", arms), ("folds", folds), ("seeds", seeds)):
        _once_each(key, values)
    bad = [f for f in folds if not 1 <= f <= n_folds]
    if bad:
        raise ValueError(f"train.folds {bad} outside 1..{n_folds} (task.data.n_folds)")
    if not seeds:
        raise ValueError("train.seeds is empty: give at least one seed")
    return [Job(m, a, s, f) for a in arms for m in models for s in seeds for f in folds]


def _once_each(key: str, values: list) -> None:
    """A name listed twice would be two jobs training into one log under one lock: refused."""
    twice = sorted({v for v in values if values.count(v) > 1}, key=str)
    if twice:
        raise SettingError(f"train.{key}={values}: {twice} listed more than once; give each once")


def _selected(wanted, known, what: str, where: str) -> list[str]:
    names = list(known) if wanted is None else [str(n) for n in wanted]
    if not names:
        raise ValueError(f"no {what} to train: {where} is empty (task {what}s are listed in {where})")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; {where} has {sorted(known)}")
    return names
