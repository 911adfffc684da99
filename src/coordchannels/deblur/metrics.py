"""Image-quality measures: PSNR and SSIM per image (SSIM from scikit-image), their means with
bootstrap intervals over images, and the per-position squared error."""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from coordchannels.stats.comparison import montecarlo_means

DATA_RANGE = 1.0  # images are in [0, 1]


def psnr(pred: np.ndarray, true: np.ndarray, peak: float = DATA_RANGE) -> np.ndarray:
    """(N,) PSNR in dB of (N, ...) images: 10 log10(peak^2 / MSE) per image."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    mse = ((pred - true) ** 2).reshape(len(pred), -1).mean(axis=1)
    return 10.0 * np.log10(peak**2 / np.maximum(mse, 1e-20))


def ssim(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(N,) SSIM of (N, H, W) or (N, 1, H, W) images (scikit-image, Gaussian-free 7x7 window)."""
    pred = np.asarray(pred, np.float64).reshape(len(pred), *np.shape(pred)[-2:])
    true = np.asarray(true, np.float64).reshape(len(true), *np.shape(true)[-2:])
    return np.array([structural_similarity(p, t, data_range=DATA_RANGE) for p, t in zip(pred, true)])


def mean_ci(values: np.ndarray, n_resamples: int, seed: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean over images."""
    values = np.asarray(values, np.float64)
    means = montecarlo_means(values, n_resamples, seed)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(low), float(high)


def error_map(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(H, W) mean squared error per pixel position over the images."""
    diff = np.asarray(pred, np.float64) - np.asarray(true, np.float64)
    return (diff.reshape(len(diff), *diff.shape[-2:]) ** 2).mean(axis=0)


def centre_edge_ratio(emap: np.ndarray, inner: float = 1 / 3, outer: float = 2 / 3) -> float:
    """Mean error within radius `inner` of the centre over that beyond `outer` (r = 1 at the corners)."""
    h, w = emap.shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    r = np.sqrt(yy**2 + xx**2) / np.sqrt(2.0)
    return float(emap[r <= inner].mean() / emap[r >= outer].mean())
