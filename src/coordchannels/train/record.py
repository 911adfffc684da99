"""What a job's numbers are a function of, and where finished work is recorded: checkpoints, job
fingerprints and the run record `<run_dir>/run_config.yaml`. A run with a different
fingerprint refuses to resume or skip.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from coordchannels.io import atomic_path, write_text
from coordchannels.settings import canonical, plain
from coordchannels.train.grid import Job

log = logging.getLogger(__name__)

RUN_CONFIG = "run_config.yaml"
# Training hyper-parameters that change the numbers (device, threads and eval batch size do not).
TRAIN_KEYS = ("epochs", "batch_size", "lr", "limit_train", "limit_test", "precision", "channels_last", "compile")


class RunConfigError(ValueError):
    """A run folder holds work done under another configuration; the message says how to proceed."""


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, fingerprint: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    rows: list[list[float]]) -> None:
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
            "pick another train.run_name or set overwrite=true to retrain")
    return state


# --------------------------------------------------------------------------------------------
# Fingerprints: what changes the numbers
# --------------------------------------------------------------------------------------------
def data_fingerprint(cfg: DictConfig) -> dict:
    """task name and task.data without the keys that say only where the data come from."""
    data = plain(cfg.task.data)
    for key in cfg.train.get("fingerprint_ignore") or []:
        data.pop(key, None)
    return {"name": str(cfg.task.name), "data": data}


def train_fingerprint(cfg: DictConfig) -> dict:
    return {key: plain(cfg.train.get(key)) for key in TRAIN_KEYS}


def job_fingerprint(cfg: DictConfig, job: Job) -> dict:
    """Everything that changes a job's numbers: data, model, arm, hyper-parameters and seed."""
    return {
        "task": data_fingerprint(cfg),
        "train": train_fingerprint(cfg),
        "model": plain(cfg.task.models[job.model]),
        "arm": plain(cfg.arms[job.arm]),
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
        "models": {m: plain(cfg.task.models[m]) for m in dict.fromkeys(j.model for j in jobs)},
        "arms": {a: plain(cfg.arms[a]) for a in dict.fromkeys(j.arm for j in jobs)},
    }
    if len(cfg.train.seeds) == 1:
        record["log_seed"] = int(cfg.train.seeds[0])
    return json.loads(canonical(record))


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
        return json.loads(canonical(OmegaConf.to_container(OmegaConf.load(path), resolve=False)))
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
