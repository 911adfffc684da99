"""Shared fixtures: the real config tree, composed once per test session and shrunk to run in
seconds on a CPU (as lightning-hydra-template's tests/conftest.py)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from coordchannels.components import complete_arms
from tests.helpers import LENGTH, SIZE

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
VFDB_DIR = SHARED_DATA / "vfdb"
PUBLISHED_LOGS = SHARED_DATA / "published_logs"

# Two cores on CI: keep every test single-threaded so parallel work does not thrash.
torch.set_num_threads(1)


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The app's config (coordchannels/conf/config.yaml) with `overrides`, as the app composes it.

    The one way tests build a config. Hydra composes once per choice of config groups (task=,
    experiment=, ...) per test session; value overrides (a.b=c) are applied to a copy.
    """
    # One job at a time in tests: worker processes cost more to start than tiny jobs take.
    parsed = OverridesParser.create().parse_overrides(["train.n_jobs=1", *(overrides or [])])
    groups = tuple(o.input_line for o in parsed if _is_group(o.key_or_group) or o.is_delete())
    cfg = copy.deepcopy(_composed(groups))
    for o in parsed:
        if not (_is_group(o.key_or_group) or o.is_delete()):
            OmegaConf.update(cfg, o.key_or_group, o.value(), force_add=o.is_add() or o.is_force_add())
    return cfg


def _is_group(key: str) -> bool:
    return (
        key in {"task", "experiment", "debug", "paths", "train", "stats", "hydra"}
        or "/" in key
        or "@" in key
        or key.startswith("arm")
    )


@functools.cache
def _composed(groups: tuple[str, ...]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="coordchannels.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(groups), return_hydra_config=False)
    complete_arms(cfg)
    return cfg


def sweep_config(*overrides: str) -> DictConfig:
    """The config of a sweep (`-m`) as Hydra's multirun composes it: its fixed overrides applied,
    Hydra's own settings included (`hydra.sweeper.params`), and every override given, swept ones
    too, in `hydra.overrides.task` (what `coordchannels.sweep.sweep_overrides` expands)."""
    fixed = [
        o.input_line for o in OverridesParser.create().parse_overrides(list(overrides)) if not o.is_sweep_override()
    ]
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="coordchannels.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=fixed, return_hydra_config=True)
    GlobalHydra.instance().clear()
    OmegaConf.set_readonly(cfg, False)
    OmegaConf.update(cfg, "hydra.overrides.task", list(overrides), merge=False)
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    """Factory: the real config for a task, with every path under tmp_path and training shrunk."""

    def factory(*overrides: str) -> DictConfig:
        return compose_config(
            [f"paths.root_dir={tmp_path}", "train.epochs=1", "train.device=cpu", "train.num_threads=1", *overrides]
        )

    return factory


@pytest.fixture
def tiny_cfg(make_cfg):
    """The real config of a task, shrunk to a few tiny jobs on fake data."""

    def factory(task="ecg", *overrides):
        if task == "ecg":
            sizes = [
                f"task.models.nimeshanet.net.length={LENGTH}",
                f"task.models.nimeshanet_reduced.net.length={LENGTH}",
            ]
        else:
            sizes = [f"task.models.lakshyanet.net.size={SIZE}", f"task.models.lakshyanet_reduced.net.size={SIZE}"]
        cfg = make_cfg(
            f"task={task}", "train.epochs=3", "train.folds=[1]", "train.eval_batch_size=16", *sizes, *overrides
        )
        with open_dict(cfg):
            cfg.task.loader = "tests.helpers.fake_loader"
            cfg.task.data.fake_n = 60
            cfg.task.data.fake_seed = 0
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
    from coordchannels.train import job

    real_log_epoch = job.log_epoch

    def die(job, row, columns, seconds):
        real_log_epoch(job, row, columns, seconds)
        if row[0] == epoch:
            raise Killed(f"simulated kill after epoch {epoch}")

    with monkeypatch.context() as patch:
        patch.setattr(job, "log_epoch", die)
        with pytest.raises(Killed):
            train.train_stage(cfg)


def call_stage(cfg: DictConfig, name: str):
    """Call stage `name`'s function as the runner does, with its context, bypassing the runner's
    skip and upstream checks (those are tested through `run_stages` in test_pipeline.py)."""
    from coordchannels.stages import stage_context, stage_function, stage_spec

    stage = stage_spec(cfg, name)
    return stage_function(stage)(cfg, stage_context(cfg, stage))
