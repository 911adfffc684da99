"""Helpers shared by several test modules: per-fold logs written in the published layout, and a
tiny synthetic task that stands in for a task's loader (`task.loader=tests.helpers.fake_loader`).

The fake task: 1-D signals whose target is the position of a bump (the ECG task's shape) or 2-D
images whose targets are the (x, y) of a blob (SiPaKMeD's shape), with the arm's coordinate
channels appended by the real channel code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import open_dict

from coordchannels import train
from coordchannels.channels import extra_channels_1d, extra_channels_2d
from coordchannels.logs import log_columns, log_path
from coordchannels.stages import StageContext


# ---------------------------------------------------------------------------------------------
# Per-fold logs
# ---------------------------------------------------------------------------------------------
def write_log(path: Path, epochs: int = 6, dims: int = 1, offset: float = 0.0, columns=None) -> Path:
    """A plausible log: R^2 rising with the epoch, shifted by `offset`."""
    ep = np.arange(1, epochs + 1)
    base = 0.5 + 0.3 * (1 - np.exp(-ep / 3)) + offset
    cols = columns or log_columns(("",) if dims == 1 else ("h", "k"))
    data = {"epoch": ep}
    for i, name in enumerate(cols[1:]):
        data[name] = base + 0.01 * i
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(data).to_csv(path, index=False)
    return path


def write_set(
    root: Path,
    models=("NimeshaNet",),
    arms=("control", "study"),
    folds=range(1, 6),
    seeds=(None,),
    epochs: int = 6,
    dims: int = 1,
) -> Path:
    for model in models:
        for a, arm in enumerate(arms):
            for seed in seeds:
                for fold in folds:
                    write_log(log_path(root, model, arm, fold, seed), epochs, dims, offset=0.01 * a + 0.001 * fold)
    return root


# ---------------------------------------------------------------------------------------------
# A tiny synthetic task
# ---------------------------------------------------------------------------------------------
LENGTH = 64  # 1-D signal length (NimeshaNet pools it to 4, reduced to 2)
SIZE = 32  # 2-D image side (LakshyaNet pools it to 4, reduced to 2)


@dataclass
class FakeData:
    x: torch.Tensor
    y: torch.Tensor
    fold_of: np.ndarray
    target_names: tuple[str, ...]
    target_stats_samples: int | None = None

    @property
    def n_channels(self) -> int:
        return int(self.x.shape[1])

    def split(self, fold):
        return np.flatnonzero(self.fold_of != fold), np.flatnonzero(self.fold_of == fold)

    def targets(self, idx):
        return self.y[idx.to(self.y.device)]

    def inputs(self, idx):
        return self.x[idx.to(self.x.device)]


LOADS = []  # (task, arm) of every call, to check that data are loaded once per arm


def fake_loader(cfg, arm, device):
    """`task.loader` for the tests: n = task.data.fake_n samples, made from task.data.fake_seed."""
    LOADS.append((cfg.task.name, arm.name))
    n, rng = int(cfg.task.data.fake_n), np.random.default_rng(int(cfg.task.data.fake_seed))
    folds = np.arange(n) % int(cfg.task.data.n_folds) + 1
    if cfg.task.dims == 1:
        pos = rng.uniform(8, LENGTH - 8, n)
        t = np.arange(LENGTH)
        bump = np.exp(-0.5 * ((t[None] - pos[:, None]) / 2.0) ** 2)
        leads = np.stack([bump, 0.5 * bump], axis=1) + 0.05 * rng.standard_normal((n, 2, LENGTH))
        signal = torch.tensor(leads, dtype=torch.float32)
        x = torch.cat([signal, extra_channels_1d(signal, arm.channels)], dim=1)
        y = torch.tensor(pos * 20.0 / LENGTH, dtype=torch.float32)[:, None]
        return FakeData(x.to(device), y.to(device), folds, ("",))
    cx, cy = rng.uniform(6, SIZE - 6, n), rng.uniform(6, SIZE - 6, n)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    blob = np.exp(-0.5 * ((cols[None] - cx[:, None, None]) ** 2 + (rows[None] - cy[:, None, None]) ** 2) / 4.0)
    image = torch.tensor(
        np.repeat(blob[:, None], 3, axis=1) + 0.05 * rng.standard_normal((n, 3, SIZE, SIZE)), dtype=torch.float32
    )
    x = torch.cat([image, extra_channels_2d(image, arm.channels)], dim=1)
    y = torch.tensor(np.stack([cx, cy], axis=1), dtype=torch.float32)
    return FakeData(x.to(device), y.to(device), folds, ("h", "k"), target_stats_samples=10)


def read(path) -> pd.DataFrame:
    return pd.read_csv(path)


def job_log(cfg, model="nimeshanet", arm="study", fold=1):
    return train.job_log_path(cfg, train.Job(model, arm, 42, fold))


# ---- probe stages for the runner's tests (test_pipeline, test_reliability)
CALLS: list[str] = []
CONTEXTS: dict[str, object] = {}  # stage name -> the second argument its function was called with


def make_stage(cfg, ctx: StageContext) -> None:
    """A data stage: writes made.txt with the settings it was made from."""
    CALLS.append("make")
    CONTEXTS["make"] = ctx
    ctx.log.info("make running")
    ctx.out.mkdir(parents=True, exist_ok=True)
    (ctx.out / "made.txt").write_text(f"{cfg.task.data.label_match} {cfg.seed}{cfg.get('probe_extra', '')}")


def use_stage(cfg, ctx: StageContext) -> None:
    """A stage reading make's output."""
    CALLS.append("use")
    CONTEXTS["use"] = ctx
    ctx.log.info("use reads %s", ctx.after["make"])
    (ctx.out / "used.txt").write_text((ctx.after["make"] / "made.txt").read_text())


def failing_stage(cfg, ctx: StageContext) -> None:
    raise RuntimeError("the probe broke")


def folder_stage(cfg, out: Path) -> None:
    """A stage written for the first contract, `fn(cfg, out)` with `out` its folder."""
    CONTEXTS["old"] = out
    (out / "old.txt").write_text("made")


def with_probes(tmp_path, *overrides: str):
    from tests.conftest import compose_config  # conftest imports this module

    cfg = compose_config([f"paths.root_dir={tmp_path}", *overrides])
    with open_dict(cfg):
        cfg.stage_defs.make = {
            "fn": "tests.helpers.make_stage",
            "out": str(tmp_path / "make"),
            "outputs": ["made.txt"],
            "settings": ["task.data.label_match"],
        }
        cfg.stage_defs.use = {
            "fn": "tests.helpers.use_stage",
            "out": str(tmp_path / "use"),
            "outputs": ["used.txt"],
            "settings": ["seed"],
            "after": ["make"],
        }
        cfg.stage_defs.broken = {
            "fn": "tests.helpers.failing_stage",
            "out": str(tmp_path / "broken"),
            "outputs": ["never.txt"],
        }
        cfg.stage_defs.old = {"fn": "tests.helpers.folder_stage", "out": str(tmp_path / "old"), "outputs": ["old.txt"]}
    CALLS.clear()
    CONTEXTS.clear()
    return cfg


# ---------------------------------------------------------------------------------------------
# The app, run in this process as a user's command runs it
# ---------------------------------------------------------------------------------------------
def run_app(*argv: str) -> int:
    """`coordchannels argv...` (Hydra and its sweeps `-m` included) in this process, so that a test
    may patch what it calls; its exit status (a one-line error goes to stderr). The root logger is
    restored afterwards (Hydra configures it for the run)."""
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from coordchannels.__main__ import main

    root = logging.getLogger()
    handlers, level, old_argv = root.handlers[:], root.level, sys.argv
    GlobalHydra.instance().clear()
    sys.argv = ["coordchannels", *argv]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old_argv
        GlobalHydra.instance().clear()
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
    return code
