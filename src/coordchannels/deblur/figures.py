"""The deblurring task's figures: the PSF across the field, sharp / blurred / restored images
(the paper's Fig. 5), PSNR against parameters (Fig. 4b) and the per-position error maps (claim g).
Drawn on matplotlib's Agg canvas and written atomically (coordchannels.stats.stage.save_png)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from coordchannels.deblur.evaluate import Evaluation
from coordchannels.stats.stage import save_png

FAMILY_STYLE = {"unet": ("tab:blue", "o"), "coordgate": ("tab:red", "s"), "coordconv": ("tab:green", "^")}
FAMILY_STYLE["wiener"] = ("tab:orange", "D")


def _title(fig: Figure, heading: str, title: str) -> None:
    text = "\n".join(textwrap.wrap(heading, 110)) + "\n" + title if heading else title
    fig.suptitle(text, fontsize=10)


def _panels(n: int, extra_width: float, cols: int = 4) -> tuple[Figure, np.ndarray]:
    """A figure of n image panels in rows of `cols`, without ticks; unused cells hidden."""
    rows = -(-n // cols)
    fig = Figure(figsize=(3.0 * cols + extra_width, 3.2 * rows + 1.0), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols))
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.set_axis_off()
    return fig, axes


def psf_grid(field: np.ndarray, path: Path, heading: str, n: int = 5) -> None:
    """The PSF at an n x n grid of field positions, each on its own colour scale."""
    h, w, k, _ = field.shape
    fig = Figure(figsize=(2.0 * n, 2.0 * n + 1.2), layout="constrained")
    axes = fig.subplots(n, n)
    for i, row in enumerate(np.linspace(0, h - 1, n).round().astype(int)):
        for j, col in enumerate(np.linspace(0, w - 1, n).round().astype(int)):
            ax = axes[i, j]
            ax.imshow(field[row, col], cmap="magma", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"pixel ({row}, {col})", fontsize=8)
    _title(
        fig, heading, f"PSF at {n}x{n} positions of the {h}x{w} px field ({k}x{k} px kernels, each on its own scale)"
    )
    save_png(fig, path)


def restored(sharp, blurred, evaluations: dict[str, Evaluation], labels: dict[str, str], path: Path, heading: str):
    """One validation image: sharp, blurred, and each model's restoration with its PSNR."""
    from coordchannels.deblur.metrics import psnr

    panels = [("sharp (target)", sharp), (f"blurred input\n{psnr(blurred[None], sharp[None])[0]:.2f} dB", blurred)]
    for model, ev in evaluations.items():
        out = ev.examples[0]
        panels.append((f"{labels[model]}\n{psnr(out[None], sharp[None])[0]:.2f} dB", out))
    fig, axes = _panels(len(panels), extra_width=0.0)
    for ax, (name, img) in zip(axes.flat, panels):
        ax.imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=9)
    _title(fig, heading, "A validation image: sharp, blurred and restored by each model (PSNR of this image)")
    save_png(fig, path)


def psnr_vs_params(table, path: Path, heading: str, blurred_psnr: float) -> None:
    """Mean validation PSNR (with its bootstrap interval) against parameters, as the paper's Fig. 4b."""
    fig = Figure(figsize=(8.5, 6.0), layout="constrained")
    ax = fig.subplots()
    unets = table[table.family == "unet"].sort_values("depth")
    ax.plot(unets.n_params, unets.psnr, color="tab:blue", linewidth=1, alpha=0.6)
    for _, r in table.iterrows():
        colour, marker = FAMILY_STYLE.get(r.family, ("black", "o"))
        err = [[r.psnr - r.psnr_low], [r.psnr_high - r.psnr]]
        ax.errorbar(r.n_params, r.psnr, yerr=err, fmt=marker, color=colour, markersize=7, capsize=3)
    ax.set_xscale("log")
    _label_points(ax, table)
    ax.axhline(blurred_psnr, color="0.5", linestyle="--", linewidth=1)
    ax.text(
        0.01, blurred_psnr, "blurred input", va="bottom", fontsize=8, color="0.4", transform=ax.get_yaxis_transform()
    )
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("validation PSNR (dB), mean with 95% bootstrap interval")
    ax.grid(True, which="both", linestyle="--", color="0.85", linewidth=0.6)
    _title(fig, heading, "PSNR against parameters (the paper's Fig. 4b)")
    save_png(fig, path)


def _label_points(ax, table) -> None:
    """Name every point; points of about the same size (the depth-6 models) are named in a column
    to their right, in PSNR order, with a line to each, so that no two names overlap."""
    biggest = table.n_params.max()
    crowd = table[table.n_params >= 0.8 * biggest].sort_values("psnr", ascending=False)
    for r in table.drop(crowd.index).itertuples():
        ax.annotate(r.label, (r.n_params, r.psnr), textcoords="offset points", xytext=(6, -12), fontsize=8)
    if crowd.empty:
        return
    spread = max(0.3 * (table.psnr.max() - table.psnr.min()), 0.5)
    ys = (
        np.linspace(crowd.psnr.max() + spread / 2, crowd.psnr.max() - spread / 2, len(crowd))
        if len(crowd) > 1
        else [crowd.psnr.iloc[0]]
    )
    for r, y in zip(crowd.itertuples(), ys):
        ax.annotate(
            r.label,
            (r.n_params, r.psnr),
            xytext=(biggest * 1.8, y),
            fontsize=8,
            va="center",
            arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.7},
        )
    ax.set_xlim(right=biggest * 12)


def error_maps(maps: dict[str, np.ndarray], path: Path, heading: str) -> None:
    """Per-position mean squared error of each model (and of the blurred input), each panel on its
    own colour scale (from 0), so that the shape of every map shows whatever its level."""
    fig, axes = _panels(len(maps), extra_width=2.0)
    for ax, (name, emap) in zip(axes.flat, maps.items()):
        image = ax.imshow(emap * 1e3, cmap="viridis", vmin=0, interpolation="nearest")
        ax.set_title(f"{name}\nmean {emap.mean() * 1e3:.2f}", fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    _title(
        fig,
        heading,
        "Mean squared error (x 1e-3) by position over the validation images, each panel on its own "
        "scale (claim g: lower near the centre)",
    )
    save_png(fig, path)
