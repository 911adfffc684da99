"""CoordGate's 1-D experiment (SPEC section 8): learning a spatially-varying convolution y = A x.

The data: uniform random signals x of length L and y = A x, where row i of A is a Gaussian kernel
whose offset and width change with i through three regimes (see `make_operator`). A plain CNN
applies the same kernel everywhere, so it can only tell positions apart through the zero padding
at the ends, an effect that reaches one kernel radius further inward per layer: it needs depth.
CoordConv (a coordinate channel at the input) gives position to the first layer, but a ReLU CNN
still has to build the position-dependent *multiplication* from additions; the paper finds it no
better than a plain CNN. CoordGate multiplies the channels of one convolution by a learned function
of position, which is exactly the form of A (a locally connected layer).

Models (experiment.grid): `paper`, the models the paper names, CNN(3,7,4), CNN(4,7,4), CNN(8,7,4),
CNN(4,7,20) (n conv layers of kernel k and c channels, the n-th giving the one output channel),
CoordConv at the same sizes and CoordGate(1,9,3) (ONE conv, 3 channels); or `extended`, our earlier
grid (n conv+ReLU layers of 16 channels, then a 1x1 output layer). Each CoordGate network has a
twin, the paper's control, whose coordinate map is replaced by a fixed random map. Inputs
(data.input_norm): `standard` (zero mean, unit variance, the paper's "normalized" samples) or `none`
(U(0, 1)). All models are trained with Adam at its default settings on the MSE, with early stopping
on the validation loss, and compared on held-out PSNR, parameter count and CPU inference time.

Outputs in the stage folder, and for each of experiment.extra_conditions in
conditions/<grid>_<input_norm>/: results.csv, psnr_vs_time.png, psnr_vs_params.png, summary.md,
run.json, config.yaml and operator.npy (the matrix A). The stage folder's summary.md also tabulates
the paper's claims under every condition.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from coordchannels import tables
from coordchannels.coordgate import GatedConv1d
from coordchannels.figures import save_png
from coordchannels.io import save_npy, write_csv, write_text

log = logging.getLogger(__name__)

OUTPUTS = ("results.csv", "psnr_vs_time.png", "psnr_vs_params.png", "summary.md", "operator.npy", "run.json")
COLUMNS = ["model", "label", "family", "layers", "kernel", "channels", "params", "psnr_db", "infer_ms", "epochs"]
CNN_FAMILIES = ("plain", "coordconv")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def _check_kernel(kernel: int) -> None:
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel sizes must be odd (symmetric 'same' zero padding), got {kernel}")


CNN_OUTPUTS = ("last_layer", "pointwise")


class CNN1d(nn.Module):
    """A plain (or CoordConv) CNN of `layers` conv layers of kernel `kernel`, zero 'same' padding.

    output="last_layer" (the paper's CNN(n, k, c)): (layers - 1) x (conv(kernel, channels) -> ReLU)
    -> conv(kernel, 1 channel), linear; the 1-channel output layer is the n-th layer.
    output="pointwise" (our extended grid): layers x (conv(kernel, channels) -> ReLU) -> 1x1 conv to 1.
    coordconv=True appends a linspace(-1, 1, L) channel to the input (CoordConv, Liu et al. 2018).
    """

    def __init__(
        self, layers: int, kernel: int, channels: int, length: int, coordconv: bool = False, output: str = "pointwise"
    ):
        super().__init__()
        _check_kernel(kernel)
        if layers < 1 or channels < 1:
            raise ValueError(f"a CNN needs layers >= 1 and channels >= 1, got {layers=}, {channels=}")
        if output not in CNN_OUTPUTS:
            raise ValueError(f"cnn_output must be one of {', '.join(CNN_OUTPUTS)}, got {output!r}")
        self.coordconv = coordconv
        self.register_buffer("coords", torch.linspace(-1.0, 1.0, length).view(1, 1, length), persistent=False)
        n_in = 2 if coordconv else 1
        n_hidden = layers - 1 if output == "last_layer" else layers
        body: list[nn.Module] = []
        for i in range(n_hidden):
            body += [nn.Conv1d(n_in if i == 0 else channels, channels, kernel, padding=kernel // 2), nn.ReLU()]
        self.body = nn.Sequential(*body)
        head_in = channels if n_hidden > 0 else n_in
        if output == "last_layer":
            self.head = nn.Conv1d(head_in, 1, kernel, padding=kernel // 2)
        else:
            self.head = nn.Conv1d(head_in, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.coordconv:
            x = torch.cat([x, self.coords.expand(x.shape[0], 1, x.shape[2])], dim=1)
        return self.head(self.body(x))


def random_map(length: int, seed: int) -> torch.Tensor:
    """The random-map control's static map: (1, L) numbers from U(-1, 1), fixed by `seed`.

    Same shape and range as CoordGate's coordinate map linspace(-1, 1, L), but with no order: the
    value at a position says nothing about where its neighbours are.
    """
    gen = torch.Generator().manual_seed(int(seed))
    return torch.rand(1, length, generator=gen) * 2.0 - 1.0


class CoordGateNet(nn.Module):
    """One convolution (1 -> channels), CoordGate on its channels, then a 1x1 conv to 1 channel.

    map_seed: if given, the gate's coordinate map is replaced by `random_map(length, map_seed)` (the
    paper's control): the same encoder, fed a static map of random numbers instead of coordinates.
    """

    def __init__(
        self, kernel: int, channels: int, length: int, hidden: int, n_layers: int, map_seed: int | None = None
    ):
        super().__init__()
        _check_kernel(kernel)
        self.gated = GatedConv1d(1, channels, kernel, length, hidden=hidden, n_layers=n_layers)
        if map_seed is not None:
            # Replaces the (non-persistent) buffer: it moves with the module, stays out of state_dict.
            self.gated.gate.coords = random_map(length, map_seed)
            self.gated.gate.invalidate_gate()
        self.head = nn.Conv1d(channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gated(x))


GATE_FAMILIES = ("coordgate", "random_map")
FAMILY_NAMES = {"plain": "CNN", "coordconv": "CoordConv", "coordgate": "CoordGate", "random_map": "RandomMapGate"}


@dataclass(frozen=True)
class ModelSpec:
    family: str
    layers: int
    kernel: int
    channels: int
    output: str = "pointwise"  # CNNs only: see CNN1d

    @property
    def name(self) -> str:
        return f"{self.family}_n{self.layers}_k{self.kernel}_c{self.channels}"

    @property
    def label(self) -> str:
        """The paper's notation: CNN(n, k, c), CoordConv(n, k, c), CoordGate(1, k, c); our extended
        grid's CNNs, with a 1x1 output layer after the n layers, get "+1x1"."""
        tail = "+1x1" if self.family in CNN_FAMILIES and self.output == "pointwise" else ""
        return f"{FAMILY_NAMES[self.family]}({self.layers},{self.kernel},{self.channels}){tail}"


def grid_config(exp_cfg: DictConfig, grid: str | None = None) -> DictConfig:
    """The entry of experiment.grids named by `grid` (default experiment.grid)."""
    grid = exp_cfg.grid if grid is None else grid
    grids = exp_cfg.grids
    if not isinstance(grid, str) or grid not in grids:
        raise ValueError(f"experiment.grid must name one of experiment.grids ({', '.join(grids)}), got {grid!r}")
    g = grids[grid]
    if g.get("cnn_output") not in CNN_OUTPUTS:
        raise ValueError(
            f"experiment.grids.{grid}.cnn_output must be one of {', '.join(CNN_OUTPUTS)}, got {g.get('cnn_output')!r}"
        )
    return g


def model_grid(exp_cfg: DictConfig) -> list[ModelSpec]:
    """Every model to train: each CNN of the grid once per CNN family, then each CoordGate entry once
    per gate family (CoordGate and its random-map control)."""
    g = grid_config(exp_cfg)
    specs = []
    for family in exp_cfg.cnn_families:
        if family not in CNN_FAMILIES:
            raise ValueError(f"experiment.cnn_families: unknown family {family!r}; expected plain or coordconv")
        specs += [ModelSpec(family, int(e.layers), int(e.kernel), int(e.channels), str(g.cnn_output)) for e in g.cnn]
    for family in exp_cfg.coordgate_families:
        if family not in GATE_FAMILIES:
            raise ValueError(
                f"experiment.coordgate_families: unknown family {family!r}; expected {' or '.join(GATE_FAMILIES)}"
            )
        specs += [ModelSpec(family, 1, int(e.kernel), int(e.channels)) for e in g.coordgate]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"experiment grid lists a model twice: {sorted(n for n in names if names.count(n) > 1)}")
    return specs


def build_model(spec: ModelSpec, length: int, exp_cfg: DictConfig) -> nn.Module:
    if spec.family in GATE_FAMILIES:
        gate = exp_cfg.coordgate
        map_seed = None
        if spec.family == "random_map":
            map_seed = exp_cfg.random_map_seed
            if not isinstance(map_seed, int) or isinstance(map_seed, bool):
                raise ValueError(f"experiment.random_map_seed must be an integer, got {map_seed!r}")
        return CoordGateNet(spec.kernel, spec.channels, length, int(gate.hidden), int(gate.n_layers), map_seed)
    return CNN1d(
        spec.layers, spec.kernel, spec.channels, length, coordconv=spec.family == "coordconv", output=spec.output
    )


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Report: figures and summary
# ---------------------------------------------------------------------------------------------
STYLE = {
    "plain": ("tab:gray", "o", "plain CNN"),
    "coordconv": ("tab:orange", "s", "CoordConv CNN"),
    "coordgate": ("tab:blue", "*", "CoordGate (1 conv)"),
    "random_map": ("tab:red", "X", "random-map gate (control)"),
}
INPUT_TEXT = {"standard": "standardised inputs", "none": "U(0, 1) inputs"}


def condition_title(grid: str, input_norm: str) -> str:
    return f"{grid} grid, {INPUT_TEXT[input_norm]}"


def plot_psnr(df: pd.DataFrame, x_col: str, x_label: str, path: Path, title: str = "") -> None:
    """PSNR against `x_col` (log axis), one marker style per family, points labelled in the paper's notation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    notes = []
    for family, group in df.groupby("family", sort=False):
        colour, marker, label = STYLE[family]
        ax.scatter(
            group[x_col],
            group["psnr_db"],
            c=colour,
            marker=marker,
            s=80 if marker in "*X" else 36,
            label=label,
            zorder=3,
        )
        for _, r in group.iterrows():
            notes.append(
                ax.annotate(
                    r["label"],
                    (r[x_col], r["psnr_db"]),
                    fontsize=6.5,
                    xytext=(4, 3),
                    textcoords="offset points",
                    color=colour,
                )
            )
    ax.set_xscale("log")
    # Label 1-2-5 ticks in plain numbers; matplotlib's default labels the minor ticks as 3x10^0 etc.
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    lo, hi = df[x_col].min(), df[x_col].max()
    ax.set_xlim(lo / 1.3, hi * 2.2)  # room for the labels right of the rightmost points
    ax.set_xlabel(x_label)
    ax.set_ylabel("test PSNR (dB)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    _separate_labels(fig, notes)
    save_png(fig, path, dpi=150, style=None)  # drawn with matplotlib's defaults, saved with them
    plt.close(fig)


def _separate_labels(fig, notes: list) -> None:
    """Move point labels up or down (in steps of 8 points) until a label overlaps no other label and
    no marker and stays inside the axes: a greedy pass, top first; the first try wins if none fits."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    ax = notes[0].axes if notes else None
    frame = ax.get_window_extent(renderer) if ax is not None else None
    markers = []
    for note in notes:
        px, py = ax.transData.transform(note.xy)
        markers.append(Bbox.from_extents(px - 5, py - 5, px + 5, py + 5))
    placed: list = []
    for note in sorted(notes, key=lambda n: -n.xy[1]):
        for dy in (3, -8, 11, -13, 19, -21, 27, -29, 35, 3):
            note.set_position((4, dy))
            box = note.get_window_extent(renderer).expanded(1.02, 1.1)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in placed + markers):
                break
        placed.append(note.get_window_extent(renderer))


@dataclass(frozen=True)
class Claim:
    """A verdict on one claim of the paper: holds (None: not tested), the numbers behind it in full
    (`text`) and in a few words for the table across conditions (`short`)."""

    holds: bool | None
    text: str
    short: str

    @property
    def verdict(self) -> str:
        return "not tested" if self.holds is None else ("holds" if self.holds else "does not hold")

    def __str__(self) -> str:
        return self.text if self.holds is None else f"**{self.verdict}** ({self.text})"

    def cell(self) -> str:
        return self.verdict if self.holds is None else f"**{self.verdict}**: {self.short}"


def claim_a(df: pd.DataFrame, threshold_db: float) -> Claim:
    """(a) one CoordGate layer learns A: its best PSNR reaches `threshold_db` and beats every CNN."""
    gate, cnn = df[df.family == "coordgate"], df[df.family.isin(CNN_FAMILIES)]
    if gate.empty:
        return Claim(None, "not tested (no CoordGate model in the grid)", "")
    best = gate.loc[gate.psnr_db.idxmax()]
    text = f"best CoordGate model {best.label}: {best.psnr_db:.1f} dB with {best.params} parameters"
    short = f"{best.psnr_db:.1f} dB"
    if not cnn.empty:
        top = cnn.loc[cnn.psnr_db.idxmax()]
        text += f"; best CNN {top.label}: {top.psnr_db:.1f} dB with {top.params} parameters"
        short += f" vs best CNN {top.psnr_db:.1f} dB"
    holds = bool(best.psnr_db >= threshold_db and (cnn.empty or best.psnr_db > cnn.psnr_db.max()))
    return Claim(holds, f"{text}; threshold {threshold_db:g} dB", short)


def claim_b(df: pd.DataFrame, tolerance_db: float) -> Claim:
    """(b) CoordConv is no better than the plain CNN of the same (layers, kernel, channels)."""
    keys = ["layers", "kernel", "channels"]
    pairs = df[df.family == "plain"].merge(df[df.family == "coordconv"], on=keys, suffixes=("_plain", "_cc"))
    if pairs.empty:
        return Claim(None, "not tested (no plain/CoordConv pair of the same size in the grid)", "")
    diff = pairs.psnr_db_cc - pairs.psnr_db_plain
    detail = ", ".join(f"({r.layers},{r.kernel},{r.channels}): {d:+.1f}" for (_, r), d in zip(pairs.iterrows(), diff))
    holds = bool(diff.median() <= tolerance_db)
    return Claim(
        holds,
        f"CoordConv minus plain PSNR per size (n,k,c), dB: {detail}; median {diff.median():+.1f} dB, "
        f"tolerance {tolerance_db:g} dB",
        f"CoordConv - CNN median {diff.median():+.1f} dB ({diff.min():+.1f} to {diff.max():+.1f})",
    )


def claim_c(df: pd.DataFrame, gain_db: float) -> Claim:
    """(c) plain CNNs need depth: at fixed kernel and channels, the deepest beats the shallowest."""
    plain = df[df.family == "plain"]
    lines, gains, verdicts = [], [], []
    for (k, c), group in plain.groupby(["kernel", "channels"]):
        if group.layers.nunique() < 2:
            continue
        group = group.sort_values("layers")
        gain = group.psnr_db.iloc[-1] - group.psnr_db.iloc[0]
        verdicts.append(bool(gain >= gain_db))
        curve = ", ".join(f"{n} layer{'s' * (n > 1)} {p:.1f}" for n, p in zip(group.layers, group.psnr_db))
        lines.append(f"k{k} c{c}: {curve} dB (gain {gain:+.1f} dB)")
        gains.append(f"k{k}: {group.layers.iloc[0]} to {group.layers.iloc[-1]} layers {gain:+.1f} dB")
    if not verdicts:
        return Claim(None, "not tested (no plain CNNs of different depths with the same kernel and channels)", "")
    return Claim(all(verdicts), f"{'; '.join(lines)}; required gain {gain_db:g} dB", "; ".join(gains))


def claim_random_map(df: pd.DataFrame, threshold_db: float) -> Claim:
    """(d) the random-map control does not converge: no random-map gate reaches `threshold_db`
    (the PSNR at which claim (a) says CoordGate has learnt A)."""
    rand = df[df.family == "random_map"]
    if rand.empty:
        return Claim(None, "not tested (no random-map control in the grid)", "")
    gates = df[df.family == "coordgate"].set_index(["kernel", "channels"]).psnr_db
    parts, shorts = [], []
    for _, r in rand.iterrows():
        twin = gates.get((r.kernel, r.channels))
        twin_text = f" vs CoordGate {twin:.1f} dB" if twin is not None else ""
        parts.append(f"{r.label}: {r.psnr_db:.1f} dB after {r.epochs} epochs{twin_text}")
        shorts.append(f"{r.psnr_db:.1f} dB{twin_text}")
    holds = bool((rand.psnr_db < threshold_db).all())
    return Claim(holds, f"{'; '.join(parts)}; it converges when it reaches {threshold_db:g} dB", "; ".join(shorts))


CLAIMS = (
    ("(a) One CoordGate layer learns A", lambda df, c: claim_a(df, float(c.learns_a_db))),
    (
        "(b) CoordConv is no better than a plain CNN of the same size",
        lambda df, c: claim_b(df, float(c.coordconv_tolerance_db)),
    ),
    ("(c) Plain CNNs need depth", lambda df, c: claim_c(df, float(c.depth_gain_db))),
    ("(d) The random-map control does not converge", lambda df, c: claim_random_map(df, float(c.learns_a_db))),
)


def grid_text(exp_cfg: DictConfig) -> str:
    g = grid_config(exp_cfg)
    if g.cnn_output == "last_layer":
        cnn = (
            "CNN(n, k, c) = (n - 1) x (conv(k, c) -> ReLU) -> conv(k, 1 channel): n conv layers, the "
            "last one giving the single output channel, as the paper defines it"
        )
    else:
        cnn = "CNN(n, k, c)+1x1 = n x (conv(k, c) -> ReLU) -> 1x1 conv to one channel"
    return (
        f"`{exp_cfg.grid}` grid. Plain CNNs {cnn}; CoordConv(n, k, c): the same with a linspace(-1, 1) "
        f"channel appended to the input; CoordGate(1, k, c): ONE conv(k, c) -> CoordGate (encoder of "
        f"{exp_cfg.coordgate.n_layers} 1x1 layers, {exp_cfg.coordgate.hidden} hidden units) -> 1x1 conv; "
        f"RandomMapGate(1, k, c): the same network with its coordinate map replaced by a fixed map of "
        f"{{length}} numbers from U(-1, 1) (seed {exp_cfg.random_map_seed}), the paper's control."
    )


def summary_markdown(
    df: pd.DataFrame, cfg: DictConfig, meta: dict, conditions: list[tuple[str, str, pd.DataFrame]] | None = None
) -> str:
    """The settings, a verdict per claim of the paper (with the numbers behind it), the table and,
    given `conditions` (grid, input_norm, results), the claims and PSNRs under each condition."""
    data_cfg, exp_cfg = cfg.task.data, cfg.task.experiment
    op, tr, claims = data_cfg.operator, exp_cfg.train, exp_cfg.claims
    lo, hi = (float(v) for v in data_cfg.signal_range)
    xlo, xhi = input_range(data_cfg)
    n_train, n_val, _ = (round(float(f) * int(data_cfg.n_signals)) for f in data_cfg.split)
    n_test = int(data_cfg.n_signals) - n_train - n_val
    regimes = "\n".join(
        f"  - {part}: offset {r.offset:+g}, sigma {r.sigma:g}"
        for part, r in zip(("first third", "middle third", "last third"), op.regimes)
    )
    load = meta.get("load")
    load_text = f", load average {load:.1f} on {os.cpu_count()} cores at the end" if load is not None else ""
    if data_cfg.input_norm == "standard":
        inputs = (
            f"u ~ U({lo:g}, {hi:g}) standardised with the distribution's own mean and std, x = (u - {(lo + hi) / 2:g})"
            f" / {(hi - lo) / math.sqrt(12):.4g}: mean 0, variance 1, x in [{xlo:.4g}, {xhi:.4g}]"
        )
    else:
        inputs = f"x ~ U({lo:g}, {hi:g}) (not normalised)"
    peak_text = (
        f"{meta['psnr_peak']:.4g}: the range of y that A allows for x in [{xlo:.4g}, {xhi:.4g}] (rows of A "
        f"are non-negative and sum to at most 1, so the range of x)"
        if exp_cfg.psnr_peak == "auto"
        else f"{meta['psnr_peak']:.4g} (set in experiment.psnr_peak)"
    )
    verdicts = "\n".join(f"- {name}: {fn(df, claims)}" for name, fn in CLAIMS)
    blend_text = (
        "Its offset and width sigma (in samples) blend"
        if op.get("blend", "parameters") == "parameters"
        else "It is the weighted sum of the Gaussians (offset, sigma in samples) of"
    )
    text = f"""# CoordGate 1-D experiment: learning a spatially-varying convolution

Condition: **{condition_title(exp_cfg.grid, data_cfg.input_norm)}**.

## Setup

- Data: {data_cfg.n_signals} signals of length {data_cfg.length}, {inputs}; target y = A x;
  {n_train} / {n_val} / {n_test} for training / validation (early stopping) / test (PSNR).
- A (saved as operator.npy): row i is a Gaussian in the offset j - i, cut to |j - i| <= {op.support}
  and normalised to sum 1; taps beyond the signal ends are dropped, as zero padding of x would do.
  {blend_text} three regimes, joined by logistic steps of width
  {op.transition:g} sample(s) at the boundaries between thirds:
{regimes}
- Models: {grid_text(exp_cfg).format(length=data_cfg.length)}
- Training: Adam (default settings), MSE, batch {tr.batch_size}, at most {tr.max_epochs} epochs, early
  stopping after {tr.patience} epochs without a {100 * float(tr.min_rel_improvement):g} % drop of the validation MSE
  (best weights kept), seed {exp_cfg.seed}.
- PSNR = 10 log10(peak^2 / MSE) over the test split, peak = {peak_text}.
- Inference time: median of {exp_cfg.timing.repeats} forward passes over the whole test split ({n_test}
  signals), CPU, torch.inference_mode, {exp_cfg.num_threads} thread(s), models timed in interleaved
  rounds. Wall time of the run: {meta["wall_s"]:.0f} s{load_text}; on a shared machine the times are noisy.

## Do the paper's claims hold in this run?

{verdicts}

## Results

{markdown_table(df[COLUMNS])}

{convergence_note(df, int(tr.max_epochs))}
"""
    if conditions:
        text += "\n" + conditions_markdown(conditions, claims)
    return text


def conditions_markdown(conditions: list[tuple[str, str, pd.DataFrame]], claims: DictConfig) -> str:
    """The claims under each (grid, inputs) condition, and each grid's PSNRs under both inputs."""
    head = [condition_title(g, n) for g, n, _ in conditions]
    rows = [[name] + [fn(df, claims).cell() for _, _, df in conditions] for name, fn in CLAIMS]
    lines = [
        "## The claims under each condition",
        "",
        "Each condition is one run of the stage's experiment (the first is this folder; the others are in "
        "conditions/<grid>_<inputs>/, each with its own summary.md, results.csv, figures and config.yaml).",
        "",
        *tables.markdown_table(["claim", *head], rows),
    ]
    for grid in dict.fromkeys(g for g, _, _ in conditions):
        runs = [(n, df) for g, n, df in conditions if g == grid]
        table = runs[0][1][["label", "params"]].copy()
        for n, df in runs:
            table[f"PSNR (dB), {INPUT_TEXT[n]}"] = table.label.map(df.set_index("label").psnr_db)
        lines += ["", f"PSNR of every model of the `{grid}` grid:", "", markdown_table(table, digits=1)]
    return "\n".join(lines) + "\n"


def convergence_note(df: pd.DataFrame, max_epochs: int) -> str:
    """Name the models that early stopping did not stop: their PSNR may still have been rising."""
    capped = df[df.epochs >= max_epochs].label.tolist()
    if not capped:
        return "Every model was stopped by early stopping, before the epoch limit."
    return (
        f"Stopped at the epoch limit ({max_epochs}) while the validation loss was still improving by more "
        f"than the early-stopping threshold: {', '.join(capped)}. Their PSNR is a lower bound."
    )


def markdown_table(df: pd.DataFrame, digits: int | None = None) -> str:
    """A GitHub markdown table (written here: pandas.to_markdown needs the extra `tabulate`)."""

    def cell(v) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else (f"{v:.{digits}f}" if digits is not None else f"{v:.4g}")
        return str(v)

    return "\n".join(tables.markdown_table(df.columns, [[cell(v) for v in row] for row in df.itertuples(index=False)]))


# ---------------------------------------------------------------------------------------------
# Stage
# ---------------------------------------------------------------------------------------------


def conditions(cfg: DictConfig, out: Path) -> list[tuple[DictConfig, Path]]:
    """(config, output folder) of each condition: the configured one into the stage folder `out`, then
    each of experiment.extra_conditions into <out>/conditions/<grid>_<input_norm>/."""
    exp_cfg = cfg.task.experiment
    grid_config(exp_cfg)
    check_input_norm(cfg.task.data.input_norm)
    runs, seen = [(cfg, out)], {(exp_cfg.grid, cfg.task.data.input_norm)}
    for i, cond in enumerate(exp_cfg.get("extra_conditions") or []):
        if not isinstance(cond, DictConfig) or set(cond) != {"grid", "input_norm"}:
            raise ValueError(f"experiment.extra_conditions[{i}] must be {{grid: ..., input_norm: ...}}, got {cond!r}")
        grid_config(exp_cfg, cond.grid)
        check_input_norm(cond.input_norm)
        if (cond.grid, cond.input_norm) in seen:
            raise ValueError(f"experiment.extra_conditions[{i}] repeats the condition {cond.grid}/{cond.input_norm}")
        seen.add((cond.grid, cond.input_norm))
        sub = copy.deepcopy(cfg)
        OmegaConf.update(sub, "task.experiment.grid", cond.grid)
        OmegaConf.update(sub, "task.data.input_norm", cond.input_norm)
        OmegaConf.update(sub, "task.experiment.extra_conditions", [], merge=False)
        runs.append((sub, out / "conditions" / f"{cond.grid}_{cond.input_norm}"))
    return runs


def run_condition(cfg: DictConfig, out: Path) -> tuple[pd.DataFrame, dict]:
    """Run one condition into `out` (or read it back if finished and overwrite is false)."""
    if not cfg.overwrite and all((out / f).exists() for f in OUTPUTS):
        log.info("CoordGate experiment outputs exist in %s: skipped (overwrite=true to redo)", out)
        return pd.read_csv(out / "results.csv"), json.loads((out / "run.json").read_text())
    exp_cfg = cfg.task.experiment
    log.info("CoordGate experiment: %s -> %s", condition_title(exp_cfg.grid, cfg.task.data.input_norm), out)
    start = time.perf_counter()
    a, df, peak = run_experiment(cfg)
    meta = {
        "grid": str(exp_cfg.grid),
        "input_norm": str(cfg.task.data.input_norm),
        "psnr_peak": peak,
        "wall_s": round(time.perf_counter() - start, 2),
        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    title = condition_title(exp_cfg.grid, cfg.task.data.input_norm)
    save_npy(out / "operator.npy", a)
    plot_psnr(df, "infer_ms", "inference time per test-set batch (ms, CPU)", out / "psnr_vs_time.png", title)
    plot_psnr(df, "params", "trainable parameters", out / "psnr_vs_params.png", title)
    write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_text(out / "run.json", json.dumps(meta, indent=2) + "\n")
    write_text(out / "summary.md", summary_markdown(df, cfg, meta))
    write_csv(df, out / "results.csv", float_format="%.6g")  # last: its presence marks a finished run
    return df, meta


def experiment_stage(cfg: DictConfig, out: Path) -> None:
    """Run the experiment under each condition (the configured one, then experiment.extra_conditions),
    each writing results.csv, the two figures, summary.md, run.json, config.yaml and operator.npy; the
    stage folder's summary.md then also compares the claims across the conditions."""
    runs = conditions(cfg, out)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg.task.experiment.num_threads))
    try:
        results = [(sub, out, *run_condition(sub, out)) for sub, out in runs]
    finally:
        torch.set_num_threads(threads)
    if len(results) > 1:
        _, out, df, meta = results[0]
        table = [(sub.task.experiment.grid, sub.task.data.input_norm, d) for sub, _, d, _ in results]
        write_text(out / "summary.md", summary_markdown(df, cfg, meta, table))
