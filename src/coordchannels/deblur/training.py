"""One deblurring job's loop, run by the trainer (`coordchannels.train.run_job`) in place of the
regression loop: Adam on the pixel MSE between restored and sharp images, the learning rate halved
when the validation loss has not improved for `patience` epochs (task.loop), and per epoch the
training loss, validation loss, PSNR and SSIM.

The learning rate of every epoch is a pure function of the validation losses logged before it
(`plateau_lr`, the rule of torch's ReduceLROnPlateau), so a resumed job needs no scheduler state
beyond its log rows and continues with exactly the rates an uninterrupted job uses.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from coordchannels.deblur.metrics import psnr, ssim
from coordchannels.train import job as trainer
from coordchannels.train.device import resolve_device, seed_everything, set_determinism, tune_malloc
from coordchannels.train.grid import Job
from coordchannels.train.job import Execution, build_model, epoch_generator, job_indices, task_data
from coordchannels.train.tracker import job_tracker

COLUMNS = ["epoch", "train_loss", "val_loss", "val_psnr", "val_ssim", "lr"]


def plateau_lr(val_losses: list[float], lr: float, patience: int, factor: float, threshold: float = 1e-4) -> float:
    """The learning rate after the epochs whose validation losses are given (ReduceLROnPlateau,
    mode min, relative threshold, no cooldown): times `factor` whenever `patience` epochs in a row
    have not improved on the best loss by more than `threshold` of it."""
    best, bad = float("inf"), 0
    for loss in val_losses:
        if loss < best * (1 - threshold):
            best, bad = loss, 0
        else:
            bad += 1
        if bad > patience:
            lr, bad = lr * factor, 0
    return lr


def train_job(cfg: DictConfig, job: Job, state: dict | None, checkpoint) -> tuple[list[list[float]], list[str]]:
    """Train `job` from `state` to cfg.train.epochs (see coordchannels.train.job.train_job)."""
    device = resolve_device(cfg.train.device)
    set_determinism(bool(cfg.train.deterministic), device)
    tune_malloc()
    data = task_data(cfg, job.arm, device)
    train_idx, val_idx = job_indices(cfg, data, job.fold, job.seed)
    seed_everything(job.seed)
    run = Execution.from_config(cfg.train, device)
    model = run.place(build_model(cfg.task.models[job.model], cfg.arms[job.arm], data.n_channels).to(device))
    lr0, loop = float(cfg.train.lr), cfg.task.loop
    optimizer = torch.optim.Adam(model.parameters(), lr=lr0)
    rows: list[list[float]] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rows = [list(r) for r in state["rows"]]
    forward = run.compiled(model)
    with job_tracker(cfg, job) as track:
        for epoch in range(len(rows) + 1, int(cfg.train.epochs) + 1):
            start = time.perf_counter()
            lr = plateau_lr([r[2] for r in rows], lr0, int(loop.patience), float(loop.factor))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = train_epoch(forward, optimizer, data, train_idx, int(cfg.train.batch_size), job, epoch, run)
            pred, true = restore(forward, data, val_idx, int(cfg.train.eval_batch_size), run)
            val_loss = float(np.mean((pred.astype(np.float64) - true) ** 2))
            rows.append([epoch, loss, val_loss, float(psnr(pred, true).mean()), float(ssim(pred, true).mean()), lr])
            checkpoint(model, optimizer, rows)
            # Through the module, as the regression loop does: its progress line is the hook a test uses to
            # interrupt a job.
            trainer.log_epoch(job, rows[-1], COLUMNS, time.perf_counter() - start)
            track(rows[-1], COLUMNS)
    return rows, COLUMNS


def train_epoch(model, optimizer, data, train_idx: torch.Tensor, batch_size: int, job: Job, epoch: int, run) -> float:
    """One pass over shuffled batches (order from (seed, fold, epoch)); the mean training MSE."""
    model.train()
    order = train_idx[torch.randperm(len(train_idx), generator=epoch_generator(job.seed, job.fold, epoch))]
    total = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        with run.autocast():
            pred = model(run.prepare(data.inputs(idx))).float()
        loss = F.mse_loss(pred, data.targets(idx))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(idx)
    return total / len(order)


def restore(model, data, idx: torch.Tensor, batch_size: int, run: Execution | None = None):
    """(restored, sharp) of images `idx` in eval mode, as (N, H, W) float32 numpy arrays."""
    pred, true = trainer.predict(model, data, idx, batch_size, run)
    return pred[:, 0], true[:, 0]
