"""CoordGate's 1-D experiment, training and evaluation: Adam with early stopping, held-out PSNR,
CPU inference time; `run_experiment` trains one condition's grid."""

from __future__ import annotations

import copy
import logging
import math
import time
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn

from coordchannels.coordgate.data import Split, make_data, psnr_peak
from coordchannels.coordgate.nets import build_model, model_grid, n_params

log = logging.getLogger(__name__)


def model_seed(seed: int, name: str) -> int:
    """A per-model seed that depends only on the experiment seed and the model's name, so that
    adding or removing other models from the grid does not change this model's numbers."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


@torch.no_grad()
def mse(model: nn.Module, split: Split, batch_size: int) -> float:
    model.eval()
    total = 0.0
    for s in range(0, len(split.x), batch_size):
        pred = model(split.x[s : s + batch_size])
        total += float(((pred - split.y[s : s + batch_size]) ** 2).sum())
    return total / split.y.numel()


@dataclass
class Fit:
    epochs: int  # epochs trained (early stopping included)
    best_epoch: int  # epoch whose weights were kept (lowest validation MSE)
    val_mse: float
    train_s: float


def train(model: nn.Module, data: dict[str, Split], train_cfg: DictConfig, seed: int) -> Fit:
    """Adam (default settings) on the MSE; stop when validation MSE has not improved by a relative
    `min_rel_improvement` for `patience` epochs (or at `max_epochs`); keep the best weights."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters())
    bs, patience = int(train_cfg.batch_size), int(train_cfg.patience)
    min_rel = float(train_cfg.min_rel_improvement)
    best, best_state, best_epoch, wait, epoch = math.inf, None, 0, 0, 0
    start = time.perf_counter()
    x, y = data["train"].x, data["train"].y
    for epoch in range(1, int(train_cfg.max_epochs) + 1):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), bs):
            idx = order[s : s + bs]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        val = mse(model, data["val"], int(train_cfg.eval_batch_size))
        if val < best * (1.0 - min_rel):
            best, best_state, best_epoch, wait = val, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            wait += 1
            if wait >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return Fit(epoch, best_epoch, best, time.perf_counter() - start)


def psnr_db(mse_value: float, peak: float) -> float:
    """10 log10(peak^2 / MSE); peak is the range of the targets (1 for x in [0, 1], see summary)."""
    return float("inf") if mse_value == 0 else 10.0 * math.log10(peak**2 / mse_value)


def inference_ms(models: list[nn.Module], x: torch.Tensor, repeats: int, warmup: int) -> list[float]:
    """Median wall time (ms) of one forward pass of each model over the whole batch `x`.

    Under torch.inference_mode, in eval mode (so CoordGate's gate is the cached constant). The
    models are timed in interleaved rounds, one pass of each per round, so that a change in the
    machine's load during timing affects every model alike instead of whichever model was being
    timed at that moment.
    """
    times: list[list[float]] = [[] for _ in models]
    for model in models:
        model.eval()
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            for model, record in zip(models, times):
                start = time.perf_counter()
                model(x)
                if round_ >= warmup:
                    record.append(time.perf_counter() - start)
    return [1000.0 * float(np.median(t)) for t in times]


def run_experiment(cfg: DictConfig) -> tuple[np.ndarray, pd.DataFrame, float]:
    """Train and evaluate every model of the grid; return A, one results row per model and the PSNR peak."""
    data_cfg, exp_cfg = cfg.task.data, cfg.task.experiment
    seed = int(exp_cfg.seed)
    specs = model_grid(exp_cfg)  # validate the grid before spending time on data
    a, data = make_data(data_cfg, seed)
    length, peak = int(data_cfg.length), psnr_peak(data_cfg, exp_cfg, a)
    rows, models = [], []
    for spec in specs:
        torch.manual_seed(model_seed(seed, spec.name))
        model = build_model(spec, length, exp_cfg)
        fit = train(model, data, exp_cfg.train, model_seed(seed, spec.name) + 1)
        test_mse = mse(model, data["test"], int(exp_cfg.train.eval_batch_size))
        rows.append(
            {
                "model": spec.name,
                "label": spec.label,
                "family": spec.family,
                "layers": spec.layers,
                "kernel": spec.kernel,
                "channels": spec.channels,
                "params": n_params(model),
                "psnr_db": psnr_db(test_mse, peak),
                "infer_ms": math.nan,
                "epochs": fit.epochs,
                "best_epoch": fit.best_epoch,
                "val_psnr_db": psnr_db(fit.val_mse, peak),
                "test_mse": test_mse,
                "train_s": fit.train_s,
            }
        )
        models.append(model)
        log.info(
            "%s: %d params, test PSNR %.2f dB, %d epochs (best %d), %.1f s",
            spec.label,
            rows[-1]["params"],
            rows[-1]["psnr_db"],
            fit.epochs,
            fit.best_epoch,
            fit.train_s,
        )
    timing = exp_cfg.timing
    for row, ms in zip(rows, inference_ms(models, data["test"].x, int(timing.repeats), int(timing.warmup))):
        row["infer_ms"] = ms
    return a, pd.DataFrame(rows), peak
