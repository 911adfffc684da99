"""Every trained model of the grid on the validation images: per-image PSNR and SSIM, the
per-position squared error, and restored examples, from each job's final checkpoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig

from coordchannels.deblur.metrics import error_map, psnr, ssim
from coordchannels.deblur.training import restore
from coordchannels.deblur.unet import n_parameters
from coordchannels.train import build_model, checkpoint_path, job_grid, job_indices, job_log_path
from coordchannels.train.device import torch_threads
from coordchannels.train.grid import Job
from coordchannels.train.record import job_fingerprint, load_checkpoint

log = logging.getLogger(__name__)
N_EXAMPLES = 2  # restored validation images kept per model for the figure


@dataclass
class Evaluation:
    """One model's validation results (over its seeds: per-image values averaged over seeds)."""

    model: str
    seeds: list[int]
    n_params: int
    psnr: np.ndarray  # (seeds, images)
    ssim: np.ndarray  # (seeds, images)
    error_map: np.ndarray  # (H, W), mean over seeds and images
    examples: np.ndarray  # (N_EXAMPLES, H, W), first seed


def evaluate_grid(cfg: DictConfig, data) -> tuple[dict[str, Evaluation], list[Job], np.ndarray]:
    """({model: Evaluation} of the finished jobs, the unfinished jobs, validation indices)."""
    # The held-out images every model is scored on: those of the first seed's jobs (the same for every
    # seed unless train.limit_test draws a subset).
    _, val_idx = job_indices(cfg, data, 1, int(cfg.train.seeds[0]))
    finished: dict[str, list] = {}
    missing = []
    with torch_threads(int(cfg.train.num_threads)):
        for job in job_grid(cfg):
            if not job_log_path(cfg, job).exists():
                missing.append(job)
                continue
            finished.setdefault(job.model, []).append(evaluate_job(cfg, job, data, val_idx))
    evaluations = {}
    for model, runs in finished.items():
        evaluations[model] = Evaluation(
            model,
            [r["seed"] for r in runs],
            runs[0]["n_params"],
            np.stack([r["psnr"] for r in runs]),
            np.stack([r["ssim"] for r in runs]),
            np.mean([r["error_map"] for r in runs], axis=0),
            runs[0]["examples"],
        )
    return evaluations, missing, val_idx.numpy()


def evaluate_job(cfg: DictConfig, job: Job, data, val_idx: torch.Tensor) -> dict:
    """The job's final weights (its checkpoint, refused if made with another configuration) on the
    validation images."""
    state = load_checkpoint(checkpoint_path(cfg, job), job_fingerprint(cfg, job))
    if state is None:
        raise FileNotFoundError(f"{job}: its log exists but its checkpoint {checkpoint_path(cfg, job)} does not")
    torch.manual_seed(job.seed)
    model = build_model(cfg.task.models[job.model], cfg.arms[job.arm], data.n_channels)
    model.load_state_dict(state["model"])
    pred, true = restore(model, data, val_idx, int(cfg.train.eval_batch_size))
    log.info("%s: validation PSNR %.2f dB", job, psnr(pred, true).mean())
    return {
        "seed": job.seed,
        "n_params": n_parameters(model),
        "psnr": psnr(pred, true),
        "ssim": ssim(pred, true),
        "error_map": error_map(pred, true),
        "examples": pred[:N_EXAMPLES],
    }
