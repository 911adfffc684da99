"""CoordGate's 1-D experiment, its data: the spatially-varying operator A, the input signals and
their splits, and the PSNR peak (see `coordchannels.coordgate.stage` for the experiment as a whole)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def regime_weights(length: int, transition: float) -> np.ndarray:
    """(3, L) smooth partition of unity: weight of regime r (first/middle/last third) at each i.

    Logistic steps centred on the boundaries between thirds (L/3 - 0.5 and 2L/3 - 0.5, i.e.
    between samples) with width `transition` samples join the regimes smoothly.
    """
    if transition <= 0:
        raise ValueError(f"operator.transition must be > 0 samples, got {transition}")
    i = np.arange(length, dtype=np.float64)
    step = [1.0 / (1.0 + np.exp(-(i - (b * length / 3.0 - 0.5)) / transition)) for b in (1, 2)]
    return np.stack([1.0 - step[0], step[0] - step[1], step[1]])


BLENDS = ("parameters", "kernels")


def make_operator(length: int, support: int, regimes: list, transition: float, blend: str = "parameters") -> np.ndarray:
    """The spatially-varying convolution matrix A (L, L).

    Row i is a Gaussian kernel in the offset d = j - i, cut to |d| <= support (a finite point-spread
    function, so that one convolution of kernel 2*support+1 can express A) and normalised to sum 1
    over that window; taps that fall outside the signal are then dropped, as zero padding of x would
    do. The three `regimes` (list of {offset, sigma} in samples) are joined with `regime_weights`:
    blend="parameters": row i is ONE Gaussian whose (offset, sigma) are the weighted regime values;
    blend="kernels": row i is the weighted sum of the three regime Gaussians (the paper's "superposition
    of 3 Gaussian kernels"), which 3 gated channels can express exactly.
    """
    if len(regimes) != 3:
        raise ValueError(f"operator.regimes must list 3 regimes (first, middle, last third), got {len(regimes)}")
    if support < 0 or length < 3:
        raise ValueError(f"need operator.support >= 0 and length >= 3, got {support=}, {length=}")
    if blend not in BLENDS:
        raise ValueError(f"operator.blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    offsets = np.array([float(r["offset"]) for r in regimes])
    sigmas = np.array([float(r["sigma"]) for r in regimes])
    if np.any(sigmas <= 0):
        raise ValueError(f"operator regime widths (sigma) must be > 0, got {sigmas.tolist()}")
    w = regime_weights(length, transition)
    d = np.arange(-support, support + 1, dtype=np.float64)

    def gaussians(offset: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        g = np.exp(-0.5 * ((d[None, :] - offset[:, None]) / sigma[:, None]) ** 2)
        return g / g.sum(axis=1, keepdims=True)

    if blend == "parameters":
        kernels = gaussians(offsets @ w, sigmas @ w)
    else:
        kernels = w.T @ gaussians(offsets, sigmas)
    a = np.zeros((length, length))
    for i in range(length):
        for tap, dd in enumerate(range(-support, support + 1)):
            if 0 <= i + dd < length:
                a[i, i + dd] = kernels[i, tap]
    return a


INPUT_NORMS = ("none", "standard")


@dataclass
class Split:
    x: torch.Tensor  # (N, 1, L) float32
    y: torch.Tensor  # (N, 1, L) float32


def check_input_norm(value) -> str:
    if value not in INPUT_NORMS:
        raise ValueError(f"data.input_norm must be one of {', '.join(INPUT_NORMS)}, got {value!r}")
    return str(value)


def input_range(data_cfg: DictConfig) -> tuple[float, float]:
    """The interval the inputs x lie in: signal_range, mapped by the normalisation if any."""
    lo, hi = (float(v) for v in data_cfg.signal_range)
    if not hi > lo:
        raise ValueError(f"data.signal_range must be [low, high] with high > low, got {[lo, hi]}")
    if check_input_norm(data_cfg.get("input_norm", "none")) == "standard":
        mean, std = (lo + hi) / 2.0, (hi - lo) / math.sqrt(12.0)
        return (lo - mean) / std, (hi - mean) / std
    return lo, hi


def make_inputs(data_cfg: DictConfig, seed: int) -> np.ndarray:
    """(n_signals, L) samples u ~ U(low, high); with input_norm=standard, (u - mean) / std using the
    distribution's analytical mean (low + high) / 2 and std (high - low) / sqrt(12)."""
    n, length = int(data_cfg.n_signals), int(data_cfg.length)
    lo, hi = (float(v) for v in data_cfg.signal_range)
    u = np.random.default_rng(seed).uniform(lo, hi, size=(n, length))
    if check_input_norm(data_cfg.get("input_norm", "none")) == "standard":
        return (u - (lo + hi) / 2.0) / ((hi - lo) / math.sqrt(12.0))
    return u


def psnr_peak(data_cfg: DictConfig, exp_cfg: DictConfig, a: np.ndarray) -> float:
    """experiment.psnr_peak, or with `auto` the range of y = A x over x in `input_range`.

    y_i lies between s_i * low and s_i * high when row i of A is non-negative with sum s_i, so the
    range is max_i max(s_i low, s_i high) - min_i min(s_i low, s_i high): the range of x when a row
    sums to 1 (1 for U(0, 1), 2 sqrt(3) for standardised inputs).
    """
    value = exp_cfg.psnr_peak
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"experiment.psnr_peak must be 'auto' or a positive number, got {value!r}")
        if (a < 0).any():
            raise ValueError("experiment.psnr_peak=auto needs a non-negative operator A; give a number")
        lo, hi = input_range(data_cfg)
        s = a.sum(axis=1)
        return float(max((s * lo).max(), (s * hi).max()) - min((s * lo).min(), (s * hi).min()))
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"experiment.psnr_peak must be 'auto' or a positive number, got {value!r}")
    return float(value)


def make_data(data_cfg: DictConfig, seed: int) -> tuple[np.ndarray, dict[str, Split]]:
    """A and the train/val/test splits of uniform random signals x and targets y = A x."""
    n, length = int(data_cfg.n_signals), int(data_cfg.length)
    fractions = [float(f) for f in data_cfg.split]
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(
            f"data.split must be three positive fractions (train, val, test) summing to 1, got {fractions}"
        )
    op = data_cfg.operator
    a = make_operator(
        length, int(op.support), list(op.regimes), float(op.transition), str(op.get("blend", "parameters"))
    )
    input_range(data_cfg)  # validates signal_range and input_norm
    x = make_inputs(data_cfg, seed)
    y = x @ a.T
    n_train, n_val = int(round(fractions[0] * n)), int(round(fractions[1] * n))
    if min(n_train, n_val, n - n_train - n_val) < 1:
        raise ValueError(f"data.n_signals={n} is too small for split {fractions}: a split would be empty")
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}

    def as_tensor(arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(arr.astype(np.float32)).unsqueeze(1)

    return a, {k: Split(as_tensor(x[s:e]), as_tensor(y[s:e])) for k, (s, e) in bounds.items()}
