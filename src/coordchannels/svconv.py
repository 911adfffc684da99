"""CoordGate's 1-D experiment (SPEC section 8): learning a spatially-varying convolution y = A x.

The data: uniform random signals x of length L and y = A x, where row i of A is a Gaussian kernel
whose offset and width change with i through three regimes (see `make_operator`). A plain CNN
applies the same kernel everywhere, so it can only tell positions apart through the zero padding
at the ends, an effect that reaches one kernel radius further inward per layer: it needs depth.
CoordConv (a coordinate channel at the input) gives position to the first layer, but a ReLU CNN
still has to build the position-dependent *multiplication* from additions; the paper finds it no
better than a plain CNN. CoordGate multiplies the channels of one convolution by a learned function
of position, which is exactly the form of A (a locally connected layer).

Models: plain CNNs and CoordConv CNNs over a grid of (layers, kernel, channels), and CoordGate
networks with one convolution (conv -> CoordGate -> 1x1 conv). All are trained with Adam at its
default settings on the MSE, with early stopping on the validation loss, and compared on held-out
PSNR, parameter count and CPU inference time.

Outputs in the stage folder: results.csv, psnr_vs_time.png, psnr_vs_params.png, summary.md and
operator.npy (the matrix A).
"""

from __future__ import annotations

import copy
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
from omegaconf import DictConfig
from torch import nn

from coordchannels.coordgate import GatedConv1d
from coordchannels.io import atomic_path, save_npy, write_csv, write_text
from coordchannels.pipeline import stage_spec

log = logging.getLogger(__name__)

OUTPUTS = ("results.csv", "psnr_vs_time.png", "psnr_vs_params.png", "summary.md", "operator.npy")
COLUMNS = ["model", "family", "layers", "kernel", "channels", "params", "psnr_db", "infer_ms", "epochs"]
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


def make_operator(length: int, support: int, regimes: list, transition: float) -> np.ndarray:
    """The spatially-varying convolution matrix A (L, L).

    Row i is a Gaussian in the offset d = j - i, centred at offset(i) with width sigma(i), where
    (offset, sigma) blend the three `regimes` (list of {offset, sigma} in samples) with
    `regime_weights`. The kernel is cut to |d| <= support (a finite point-spread function, so that
    one convolution of kernel 2*support+1 can express A) and normalised to sum 1 over that window;
    taps that fall outside the signal are then dropped, as zero padding of x would do.
    """
    if len(regimes) != 3:
        raise ValueError(f"operator.regimes must list 3 regimes (first, middle, last third), got {len(regimes)}")
    if support < 0 or length < 3:
        raise ValueError(f"need operator.support >= 0 and length >= 3, got {support=}, {length=}")
    offsets = np.array([float(r["offset"]) for r in regimes])
    sigmas = np.array([float(r["sigma"]) for r in regimes])
    if np.any(sigmas <= 0):
        raise ValueError(f"operator regime widths (sigma) must be > 0, got {sigmas.tolist()}")
    w = regime_weights(length, transition)
    offset_i, sigma_i = offsets @ w, sigmas @ w
    d = np.arange(-support, support + 1, dtype=np.float64)
    kernels = np.exp(-0.5 * ((d[None, :] - offset_i[:, None]) / sigma_i[:, None]) ** 2)
    kernels /= kernels.sum(axis=1, keepdims=True)
    a = np.zeros((length, length))
    for i in range(length):
        for tap, dd in enumerate(range(-support, support + 1)):
            if 0 <= i + dd < length:
                a[i, i + dd] = kernels[i, tap]
    return a


@dataclass
class Split:
    x: torch.Tensor  # (N, 1, L) float32
    y: torch.Tensor  # (N, 1, L) float32


def make_data(data_cfg: DictConfig, seed: int) -> tuple[np.ndarray, dict[str, Split]]:
    """A and the train/val/test splits of uniform random signals x and targets y = A x."""
    n, length = int(data_cfg.n_signals), int(data_cfg.length)
    fractions = [float(f) for f in data_cfg.split]
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"data.split must be three positive fractions (train, val, test) summing to 1, got {fractions}")
    op = data_cfg.operator
    a = make_operator(length, int(op.support), list(op.regimes), float(op.transition))
    lo, hi = (float(v) for v in data_cfg.signal_range)
    x = np.random.default_rng(seed).uniform(lo, hi, size=(n, length))
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


class CNN1d(nn.Module):
    """`layers` x (Conv1d(kernel, `channels`, zero 'same' padding) -> ReLU), then a 1x1 conv to 1.

    coordconv=True appends a linspace(-1, 1, L) channel to the input (CoordConv, Liu et al. 2018).
    """

    def __init__(self, layers: int, kernel: int, channels: int, length: int, coordconv: bool = False):
        super().__init__()
        _check_kernel(kernel)
        if layers < 1 or channels < 1:
            raise ValueError(f"a CNN needs layers >= 1 and channels >= 1, got {layers=}, {channels=}")
        self.coordconv = coordconv
        self.register_buffer("coords", torch.linspace(-1.0, 1.0, length).view(1, 1, length), persistent=False)
        body: list[nn.Module] = []
        for i in range(layers):
            body += [nn.Conv1d((2 if coordconv else 1) if i == 0 else channels, channels, kernel,
                               padding=kernel // 2), nn.ReLU()]
        self.body = nn.Sequential(*body)
        self.head = nn.Conv1d(channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.coordconv:
            x = torch.cat([x, self.coords.expand(x.shape[0], 1, x.shape[2])], dim=1)
        return self.head(self.body(x))


class CoordGateNet(nn.Module):
    """One convolution (1 -> channels), CoordGate on its channels, then a 1x1 conv to 1 channel."""

    def __init__(self, kernel: int, channels: int, length: int, hidden: int, n_layers: int):
        super().__init__()
        _check_kernel(kernel)
        self.gated = GatedConv1d(1, channels, kernel, length, hidden=hidden, n_layers=n_layers)
        self.head = nn.Conv1d(channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gated(x))


@dataclass(frozen=True)
class ModelSpec:
    family: str
    layers: int
    kernel: int
    channels: int

    @property
    def name(self) -> str:
        return f"{self.family}_n{self.layers}_k{self.kernel}_c{self.channels}"


def model_grid(exp_cfg: DictConfig) -> list[ModelSpec]:
    """Every model to train: each CNN grid entry once per CNN family, then the CoordGate entries."""
    specs = []
    for family in exp_cfg.cnn_families:
        if family not in CNN_FAMILIES:
            raise ValueError(f"experiment.cnn_families: unknown family {family!r}; expected plain or coordconv")
        specs += [ModelSpec(family, int(g.layers), int(g.kernel), int(g.channels)) for g in exp_cfg.cnn_grid]
    specs += [ModelSpec("coordgate", 1, int(g.kernel), int(g.channels)) for g in exp_cfg.coordgate_grid]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"experiment grid lists a model twice: {sorted(n for n in names if names.count(n) > 1)}")
    return specs


def build_model(spec: ModelSpec, length: int, exp_cfg: DictConfig) -> nn.Module:
    if spec.family == "coordgate":
        gate = exp_cfg.coordgate
        return CoordGateNet(spec.kernel, spec.channels, length, int(gate.hidden), int(gate.n_layers))
    return CNN1d(spec.layers, spec.kernel, spec.channels, length, coordconv=spec.family == "coordconv")


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
        pred = model(split.x[s:s + batch_size])
        total += float(((pred - split.y[s:s + batch_size]) ** 2).sum())
    return total / split.y.numel()


@dataclass
class Fit:
    epochs: int       # epochs trained (early stopping included)
    best_epoch: int   # epoch whose weights were kept (lowest validation MSE)
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
            idx = order[s:s + bs]
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


def run_experiment(cfg: DictConfig) -> tuple[np.ndarray, pd.DataFrame]:
    """Train and evaluate every model of the grid; return A and one results row per model."""
    data_cfg, exp_cfg = cfg.task.data, cfg.task.experiment
    seed = int(exp_cfg.seed)
    a, data = make_data(data_cfg, seed)
    length, peak = int(data_cfg.length), float(exp_cfg.psnr_peak)
    rows, models = [], []
    for spec in model_grid(exp_cfg):
        torch.manual_seed(model_seed(seed, spec.name))
        model = build_model(spec, length, exp_cfg)
        fit = train(model, data, exp_cfg.train, model_seed(seed, spec.name) + 1)
        test_mse = mse(model, data["test"], int(exp_cfg.train.eval_batch_size))
        rows.append({
            "model": spec.name, "family": spec.family, "layers": spec.layers, "kernel": spec.kernel,
            "channels": spec.channels, "params": n_params(model), "psnr_db": psnr_db(test_mse, peak),
            "infer_ms": math.nan, "epochs": fit.epochs, "best_epoch": fit.best_epoch,
            "val_psnr_db": psnr_db(fit.val_mse, peak), "test_mse": test_mse, "train_s": fit.train_s,
        })
        models.append(model)
        log.info("%s: %d params, test PSNR %.2f dB, %d epochs (best %d), %.1f s", spec.name, rows[-1]["params"],
                 rows[-1]["psnr_db"], fit.epochs, fit.best_epoch, fit.train_s)
    timing = exp_cfg.timing
    for row, ms in zip(rows, inference_ms(models, data["test"].x, int(timing.repeats), int(timing.warmup))):
        row["infer_ms"] = ms
    return a, pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Report: figures and summary
# ---------------------------------------------------------------------------------------------
STYLE = {"plain": ("tab:gray", "o", "plain CNN"), "coordconv": ("tab:orange", "s", "CoordConv CNN"),
         "coordgate": ("tab:blue", "*", "CoordGate (1 conv)")}


def plot_psnr(df: pd.DataFrame, x_col: str, x_label: str, path: Path) -> None:
    """PSNR against `x_col` (log axis), one marker style per family, points labelled n/k/c."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for family, group in df.groupby("family", sort=False):
        colour, marker, label = STYLE[family]
        ax.scatter(group[x_col], group["psnr_db"], c=colour, marker=marker, s=70 if marker == "*" else 36,
                   label=label, zorder=3)
        for _, r in group.iterrows():
            ax.annotate(f"n{r.layers} k{r.kernel} c{r.channels}", (r[x_col], r["psnr_db"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points", color=colour)
    ax.set_xscale("log")
    # Label 1-2-5 ticks in plain numbers; matplotlib's default labels the minor ticks as 3x10^0 etc.
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(x_label)
    ax.set_ylabel("test PSNR (dB)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    plt.close(fig)


def claim_a(df: pd.DataFrame, threshold_db: float) -> str:
    """(a) one CoordGate layer learns A: its best PSNR reaches `threshold_db` and beats every CNN."""
    gate, cnn = df[df.family == "coordgate"], df[df.family != "coordgate"]
    if gate.empty:
        return "not tested (no CoordGate model in the grid)"
    best = gate.loc[gate.psnr_db.idxmax()]
    text = f"best CoordGate model {best.model}: {best.psnr_db:.1f} dB with {best.params} parameters"
    if not cnn.empty:
        top = cnn.loc[cnn.psnr_db.idxmax()]
        text += f"; best CNN {top.model}: {top.psnr_db:.1f} dB with {top.params} parameters"
    holds = best.psnr_db >= threshold_db and (cnn.empty or best.psnr_db > cnn.psnr_db.max())
    return f"**{'holds' if holds else 'does not hold'}** ({text}; threshold {threshold_db:g} dB)"


def claim_b(df: pd.DataFrame, tolerance_db: float) -> str:
    """(b) CoordConv is no better than the plain CNN of the same (layers, kernel, channels)."""
    keys = ["layers", "kernel", "channels"]
    pairs = df[df.family == "plain"].merge(df[df.family == "coordconv"], on=keys, suffixes=("_plain", "_cc"))
    if pairs.empty:
        return "not tested (no plain/CoordConv pair of the same size in the grid)"
    diff = pairs.psnr_db_cc - pairs.psnr_db_plain
    detail = ", ".join(f"n{r.layers} k{r.kernel} c{r.channels}: {d:+.1f}" for (_, r), d in zip(pairs.iterrows(), diff))
    holds = float(diff.median()) <= tolerance_db
    return (f"**{'holds' if holds else 'does not hold'}** (CoordConv minus plain PSNR per size, dB: {detail}; "
            f"median {diff.median():+.1f} dB, tolerance {tolerance_db:g} dB)")


def claim_c(df: pd.DataFrame, gain_db: float) -> str:
    """(c) plain CNNs need depth: at fixed kernel and channels, the deepest beats the shallowest."""
    plain = df[df.family == "plain"]
    lines, verdicts = [], []
    for (k, c), group in plain.groupby(["kernel", "channels"]):
        if group.layers.nunique() < 2:
            continue
        group = group.sort_values("layers")
        gain = group.psnr_db.iloc[-1] - group.psnr_db.iloc[0]
        verdicts.append(gain >= gain_db)
        curve = ", ".join(f"{n} layer{'s' * (n > 1)} {p:.1f}" for n, p in zip(group.layers, group.psnr_db))
        lines.append(f"k{k} c{c}: {curve} dB (gain {gain:+.1f} dB)")
    if not verdicts:
        return "not tested (no plain CNNs of different depths with the same kernel and channels)"
    return (f"**{'holds' if all(verdicts) else 'does not hold'}** ({'; '.join(lines)}; "
            f"required gain {gain_db:g} dB)")


def summary_markdown(df: pd.DataFrame, cfg: DictConfig, wall_s: float, load: float | None) -> str:
    """The settings, a verdict per claim of the paper (with the numbers behind it) and the table."""
    data_cfg, exp_cfg = cfg.task.data, cfg.task.experiment
    op, tr, claims = data_cfg.operator, exp_cfg.train, exp_cfg.claims
    lo, hi = (float(v) for v in data_cfg.signal_range)
    n_train, n_val, _ = (round(float(f) * int(data_cfg.n_signals)) for f in data_cfg.split)
    n_test = int(data_cfg.n_signals) - n_train - n_val
    regimes = "\n".join(f"  - {part}: offset {r.offset:+g}, sigma {r.sigma:g}"
                        for part, r in zip(("first third", "middle third", "last third"), op.regimes))
    load_text = f", load average {load:.1f} on {os.cpu_count()} cores at the end" if load is not None else ""
    return f"""# CoordGate 1-D experiment: learning a spatially-varying convolution

## Setup

- Data: {data_cfg.n_signals} signals x ~ U({lo:g}, {hi:g}) of length {data_cfg.length}; target y = A x;
  {n_train} / {n_val} / {n_test} for training / validation (early stopping) / test (PSNR).
- A (saved as operator.npy): row i is a Gaussian in the offset j - i, cut to |j - i| <= {op.support}
  and normalised to sum 1; taps beyond the signal ends are dropped, as zero padding of x would do.
  Its offset and width sigma (in samples) blend three regimes, joined by logistic steps of width
  {op.transition:g} sample(s) at the boundaries between thirds:
{regimes}
- Models: plain CNNs `n` x (conv(kernel k, c channels) -> ReLU) -> 1x1 conv; CoordConv: the same with a
  linspace(-1, 1) channel appended to the input; CoordGate: ONE conv(k, c) -> CoordGate (encoder of
  {exp_cfg.coordgate.n_layers} 1x1 layers, {exp_cfg.coordgate.hidden} hidden units) -> 1x1 conv.
- Training: Adam (default settings), MSE, batch {tr.batch_size}, at most {tr.max_epochs} epochs, early
  stopping after {tr.patience} epochs without a {100 * float(tr.min_rel_improvement):g} % drop of the validation MSE
  (best weights kept), seed {exp_cfg.seed}.
- PSNR = 10 log10(peak^2 / MSE) over the test split, peak = {exp_cfg.psnr_peak:g}: the range of y, since
  x lies in [{lo:g}, {hi:g}] and each row of A is non-negative and sums to at most 1.
- Inference time: median of {exp_cfg.timing.repeats} forward passes over the whole test split ({n_test}
  signals), CPU, torch.inference_mode, {exp_cfg.num_threads} thread(s), models timed in interleaved
  rounds. Wall time of the run: {wall_s:.0f} s{load_text}; on a shared machine the times are noisy.

## Do the paper's claims hold in this run?

- (a) One CoordGate layer learns A: {claim_a(df, float(claims.learns_a_db))}
- (b) CoordConv is no better than a plain CNN of the same size: {claim_b(df, float(claims.coordconv_tolerance_db))}
- (c) Plain CNNs need depth: {claim_c(df, float(claims.depth_gain_db))}

## Results

{markdown_table(df[COLUMNS])}

{convergence_note(df, int(tr.max_epochs))}
"""


def convergence_note(df: pd.DataFrame, max_epochs: int) -> str:
    """Name the models that early stopping did not stop: their PSNR may still have been rising."""
    capped = df[df.epochs >= max_epochs].model.tolist()
    if not capped:
        return "Every model was stopped by early stopping, before the epoch limit."
    return (f"Stopped at the epoch limit ({max_epochs}) while the validation loss was still improving by more "
            f"than the early-stopping threshold: {', '.join(capped)}. Their PSNR is a lower bound.")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (written here: pandas.to_markdown needs the extra `tabulate`)."""
    def cell(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Stage
# ---------------------------------------------------------------------------------------------
def stage_out(cfg: DictConfig) -> Path:
    """The experiment stage's output folder (task.stage_defs.experiment.out)."""
    return Path(stage_spec(cfg, "experiment").out)


def svconv_stage(cfg: DictConfig, out: Path) -> None:
    """Run the experiment and write results.csv, the two figures, summary.md and operator.npy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg.task.experiment.num_threads))
    try:
        start = time.perf_counter()
        a, df = run_experiment(cfg)
        wall = time.perf_counter() - start
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    finally:
        torch.set_num_threads(threads)
    save_npy(out / "operator.npy", a)
    plot_psnr(df, "infer_ms", "inference time per test-set batch (ms, CPU)", out / "psnr_vs_time.png")
    plot_psnr(df, "params", "trainable parameters", out / "psnr_vs_params.png")
    write_text(out / "summary.md", summary_markdown(df, cfg, wall, load))
    write_csv(df, out / "results.csv", float_format="%.6g")  # last: its presence marks a finished run
