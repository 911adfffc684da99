"""CoordGate's 1-D experiment, its report: the PSNR figures, the paper's claims judged from the
numbers, and the summary tables."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from coordchannels.coordgate.data import input_range
from coordchannels.coordgate.nets import CNN_FAMILIES, grid_config
from coordchannels.io import atomic_path

log = logging.getLogger(__name__)

# The columns of results.csv, in the summary's table.
COLUMNS = ["model", "label", "family", "layers", "kernel", "channels", "params", "psnr_db", "infer_ms", "epochs"]

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
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
        "| claim | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
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

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
