"""Shared fixtures: the real config tree, composed and shrunk to run in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"
VFDB_DIR = SHARED_DATA / "vfdb"
PUBLISHED_LOGS = SHARED_DATA / "published_logs"

# Two cores on CI: keep every test single-threaded so parallel work does not thrash.
torch.set_num_threads(1)


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose conf/config.yaml exactly as the app does, with `overrides`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # One job at a time in tests: worker processes cost more to start than tiny jobs take.
        overrides = ["train.n_jobs=1", *(overrides or [])]
        return compose(config_name="config", overrides=overrides, return_hydra_config=False)


@pytest.fixture
def make_cfg(tmp_path):
    """Factory: the real config for a task, with every path under tmp_path and training shrunk."""

    def factory(*overrides: str) -> DictConfig:
        cfg = compose_config(
            [
                f"paths.root_dir={tmp_path}",
                "train.epochs=1",
                "train.device=cpu",
                "train.num_threads=1",
                *overrides,
            ]
        )
        with open_dict(cfg):
            cfg.hydra_free = True  # marks a config composed outside a Hydra run
        return cfg

    return factory


def require(path: Path, what: str) -> Path:
    """Skip (saying why) when the shared real data is not beside the checkout."""
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (it lives in ../shared/data beside the checkout)")
    return path


class Killed(RuntimeError):
    """A simulated kill of a training run."""


def train_killed_after_epoch(cfg: DictConfig, monkeypatch, epoch: int = 1) -> None:
    """Run cfg's train stage and kill it right after `epoch` is logged (its checkpoint written)."""
    from coordchannels import train

    real_log_epoch = train.log_epoch

    def die(job, row, columns, seconds):
        real_log_epoch(job, row, columns, seconds)
        if row[0] == epoch:
            raise Killed(f"simulated kill after epoch {epoch}")

    with monkeypatch.context() as patch:
        patch.setattr(train, "log_epoch", die)
        with pytest.raises(Killed):
            train.train_stage(cfg)
