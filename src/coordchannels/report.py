"""The statistics stage (`stats_stage`: tables and figures together) and its figure, the learning
curves of the paper's Figure 2.

One panel per model: per epoch the mean over folds (and seeds) of train R^2 (solid) and test
R^2 (dashed) for each compared arm, control red and study blue as in the paper, with a shaded
band of +-1 SD over folds (the paper shows these as error bars in a second version). Drawn with
matplotlib's Agg canvas only (no display, no pyplot global state) and written atomically.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from coordchannels.components import arm_style
from coordchannels.io import atomic_path, write_csv
from coordchannels.logs import FoldLog
from coordchannels.settings import SettingError, plain
from coordchannels.stats import build_outputs, load_checked_logs, table_names, write_outputs

log = logging.getLogger(__name__)

FIGURE_NAME = "learning_curves.png"
CURVES_NAME = "learning_curves.csv"
SPLITS = (("train", "Train", "-"), ("test", "Test", "--"))
STYLE = {"font.family": "serif", "font.serif": ["STIXGeneral", "DejaVu Serif"], "mathtext.fontset": "stix"}


def curve_summary(logs: dict[str, dict[str, list[FoldLog]]]) -> pd.DataFrame:
    """Per model, arm, split and epoch: mean, SD (ddof=1; 0 for one fold) and number of folds."""
    rows = []
    for model, arms in logs.items():
        for arm, fold_logs in arms.items():
            epochs = fold_logs[0].epochs  # validated identical across the model's logs
            for split, _, _ in SPLITS:
                curves = np.stack([getattr(fl, split) for fl in fold_logs])
                sd = curves.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(curves.shape[1])
                for epoch, mean, spread in zip(epochs, curves.mean(axis=0), sd):
                    rows.append({"model": model, "arm": arm, "split": split, "epoch": int(epoch),
                                 "mean": float(mean), "sd": float(spread), "n": len(curves)})
    return pd.DataFrame(rows, columns=["model", "arm", "split", "epoch", "mean", "sd", "n"])


def draw_panel(ax, summary: pd.DataFrame, model: str) -> None:
    """One model: every arm's train (solid) and test (dashed) mean curve with a +-SD band."""
    arms = list(dict.fromkeys(summary.loc[summary.model == model, "arm"]))
    spare = 0
    for arm in arms:
        label, colour, known = arm_style(None, arm, spare)
        spare += not known
        for split, split_label, linestyle in SPLITS:
            sel = summary[(summary.model == model) & (summary.arm == arm) & (summary.split == split)]
            ax.plot(sel.epoch, sel["mean"], color=colour, linestyle=linestyle, linewidth=1.6,
                    label=f"{label} ({split_label})")
            ax.fill_between(sel.epoch, sel["mean"] - sel.sd, sel["mean"] + sel.sd, color=colour,
                            alpha=0.12, linewidth=0)
    epochs = summary.loc[summary.model == model, "epoch"]
    ax.set_xlim(epochs.min(), epochs.max())
    ax.set_xticks(np.unique(epochs) if epochs.nunique() <= 20 else ax.get_xticks())
    ax.set_title(model, fontweight="bold", fontsize=12)
    ax.set_xlabel("Epoch", fontsize=11)
    ax.set_ylabel("Average R² Score", fontsize=11)
    ax.grid(True, linestyle="--", color="0.8", linewidth=0.8)
    ax.legend(loc="lower right", fontsize=8, frameon=False)


def learning_curves_figure(summary: pd.DataFrame) -> Figure:
    """The Figure 2 layout: two panels per row, models in Table 3 order."""
    models = list(dict.fromkeys(summary.model))
    ncols = min(2, len(models))
    nrows = math.ceil(len(models) / ncols)
    with rc_context(STYLE):
        fig = Figure(figsize=(7 * ncols, 5 * nrows + 0.6), layout="constrained")
        FigureCanvasAgg(fig)  # render with Agg: no display needed
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        for ax, model in zip(axes, models):
            draw_panel(ax, summary, model)
        for ax in axes[len(models):]:
            ax.set_visible(False)
        fig.suptitle("Model Performance Comparison (Average R² Curves, mean ± SD over folds)",
                     fontweight="bold", fontsize=14)
    return fig


def save_png(fig: Figure, path: Path, dpi: int = 120) -> None:
    """Write the figure atomically (the temporary name has no .png suffix, so say the format)."""
    with rc_context(STYLE), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def stats_stage(cfg: DictConfig, out: Path) -> None:
    """The `stats` stage: compare arms on a folder of per-fold logs and draw their learning curves,
    into `out` (stats.out_dir).

    Tables and figure come from one reading of the logs and are all computed before the first file
    is written, so that a failure leaves the previous set whole and a new set is never paired with
    an old figure.
    """
    check_committed_logs(cfg, out)
    logs = load_checked_logs(cfg)
    outputs = with_heading(build_outputs(cfg, logs), cfg.stats.get("heading"))
    summary = curve_summary(logs)
    figure = learning_curves_figure(summary)
    write_outputs(outputs, out)
    write_csv(summary, out / CURVES_NAME)
    save_png(figure, out / FIGURE_NAME)
    log.info("stats: wrote %s, %s and %s to %s", ", ".join(outputs), CURVES_NAME, FIGURE_NAME, out)


def with_heading(outputs: dict, heading: str | None) -> dict:
    """The tables with `heading` (stats.heading, e.g. a smoke run's warning) as their first line."""
    if not heading:
        return outputs
    out = dict(outputs)
    for name, content in outputs.items():
        if name.endswith(".md"):
            out[name] = f"**{heading}**\n\n{content}"
        elif name.endswith(".tex"):
            out[name] = f"% {heading}\n{content}"
    return out


def outputs(cfg: DictConfig) -> list[str]:
    """The stats stage's declared outputs."""
    return [*table_names(cfg), CURVES_NAME, FIGURE_NAME]


# --------------------------------------------------------------------------------------------
# Committed results are replaced only on purpose
# --------------------------------------------------------------------------------------------
# The training settings that make the per-fold logs; compared with a committed result's when the
# statistics read this config's own training logs. Keys absent from the committed config (older
# versions) are not compared.
TRAIN_KEYS = ("seed", "task.name", "train.models", "train.arms", "train.folds", "train.seeds", "train.epochs",
              "train.batch_size", "train.lr", "train.limit_train", "train.limit_test", "train.precision")


def committed_folder(cfg: DictConfig) -> Path | None:
    """stats.out_dir when it is inside paths.results_dir (the committed results) and already holds
    a result (its stats config), else None."""
    out = Path(str(cfg.stats.out_dir)).resolve()
    results = Path(str(cfg.paths.results_dir)).resolve()
    if not out.is_relative_to(results) or not (out / "logs" / "stats.config.yaml").is_file():
        return None
    return out


def _replacing(cfg: DictConfig) -> bool:
    return bool(cfg.get("overwrite")) or bool(cfg.stats.get("replace_results"))


def _compared_keys(cfg: DictConfig) -> list[str]:
    from coordchannels.pipeline import stage_spec

    keys = [k for k in stage_spec(cfg, "stats").settings]
    if Path(str(cfg.stats.logs_dir)).resolve() == Path(str(cfg.train.logs_dir)).resolve():
        ignore = set(cfg.train.get("fingerprint_ignore") or ())
        keys += [*TRAIN_KEYS, *(f"task.data.{k}" for k in (cfg.task.get("data") or {}) if k not in ignore)]
    return keys


def check_results_dir(cfg: DictConfig) -> None:
    """The stats stage's `check` (run before any stage): writing into a committed result folder
    (inside paths.results_dir) needs the settings it was made with; other settings are an error
    unless stats.replace_results=true (or overwrite=true)."""
    folder = committed_folder(cfg)
    if folder is None or _replacing(cfg):
        return
    committed = OmegaConf.load(folder / "logs" / "stats.config.yaml")
    missing = object()
    differ = []
    for key in _compared_keys(cfg):
        old = OmegaConf.select(committed, key, default=missing)
        if old is missing:
            continue
        new = plain(OmegaConf.select(cfg, key, default=None))
        if plain(old) != new:
            differ.append(f"{key}: {plain(old)!r} -> {new!r}")
    if differ:
        raise SettingError(
            f"stats.out_dir={cfg.stats.out_dir} holds committed results made with other settings "
            f"({'; '.join(differ)}). Write elsewhere (leave stats.out_dir and paths.outputs_dir at their "
            "defaults: data/results/), or set stats.replace_results=true to replace them on purpose.")


def check_committed_logs(cfg: DictConfig, out: Path) -> None:
    """In the stats stage, before anything is written: a committed result folder is replaced only
    by statistics of the same per-fold logs (their digest in its logs/stats.inputs.json)."""
    from coordchannels.pipeline import stage_record, stage_spec

    record = Path(out) / "logs" / "stats.inputs.json"
    if committed_folder(cfg) is None or _replacing(cfg) or not record.is_file():
        return
    stored = json.loads(record.read_text())
    wanted = stage_record(cfg, stage_spec(cfg, "stats"))
    differ = [k for k in stored if k.startswith("sha256(") and stored[k] != wanted.get(k)]
    if differ:
        raise SettingError(
            f"{out} holds committed results computed from other per-fold logs than those in "
            f"{cfg.stats.logs_dir}: its tables would change. Write elsewhere (the default "
            "data/results/), or set stats.replace_results=true to replace them on purpose.")
