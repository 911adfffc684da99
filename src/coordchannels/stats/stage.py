"""The statistics stage (`stats_stage`: tables and figures together) and its two figures.

`learning_curves.png`, the paper's Figure 2: per epoch the mean over folds (and seeds) of train
R^2 (solid) and test R^2 (dashed), with a shaded band of +-1 SD over folds. With two arms (the
paper's comparison) one panel per model holds both, control red and study blue; with more arms,
small multiples: one panel per model and arm, every panel on the same axes, the other arms' test
curves in grey behind for reference.

`final_values.png`: per model and metric (train R^2, test R^2, instability), each arm's per-fold
final values as dots and their mean with a 95% t-interval.

Arms are labelled with their `label` from conf/arm/ (which starts with the arm's name, the name the
tables use). Drawn with matplotlib's Agg canvas only (no display, no pyplot global state) and
written atomically.
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
from coordchannels.figures import STYLE, save_figure, save_png
from coordchannels.io import atomic_files
from coordchannels.logs import FoldLog
from coordchannels.settings import SettingError, plain
from coordchannels.stages import StageContext
from coordchannels.stats.comparison import build_outputs, limited_note, load_checked_logs, table_names, write_outputs

log = logging.getLogger(__name__)

FIGURE_NAME = "learning_curves.png"
FINALS_NAME = "final_values.png"
CURVES_NAME = "learning_curves.csv"
SPLITS = (("train", "Train", "-"), ("test", "Test", "--"))


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
                    rows.append(
                        {
                            "model": model,
                            "arm": arm,
                            "split": split,
                            "epoch": int(epoch),
                            "mean": float(mean),
                            "sd": float(spread),
                            "n": len(curves),
                        }
                    )
    return pd.DataFrame(rows, columns=["model", "arm", "split", "epoch", "mean", "sd", "n"])


def _arm_styles(arms) -> dict[str, tuple[str, str]]:
    """{arm: (label, colour)}: from the arm files; unknown arms get spare colours."""
    styles, spare = {}, 0
    for arm in arms:
        label, colour, known = arm_style(None, arm, spare)
        spare += not known
        styles[arm] = (label, colour)
    return styles


def _epoch_axis(ax, epochs: pd.Series) -> None:
    ax.set_xlim(epochs.min(), epochs.max())
    ticks = np.unique(epochs)
    if len(ticks) > 10:
        ticks = ticks[:: math.ceil(len(ticks) / 8)]
    ax.set_xticks(ticks)
    ax.grid(True, linestyle="--", color="0.85", linewidth=0.7)


def _curve(ax, sel: pd.DataFrame, colour: str, linestyle: str, label: str | None, band: bool = True, **kwargs) -> None:
    ax.plot(
        sel.epoch,
        sel["mean"],
        color=colour,
        linestyle=linestyle,
        linewidth=kwargs.pop("linewidth", 1.6),
        label=label,
        **kwargs,
    )
    if band:
        ax.fill_between(sel.epoch, sel["mean"] - sel.sd, sel["mean"] + sel.sd, color=colour, alpha=0.15, linewidth=0)


def draw_panel(ax, summary: pd.DataFrame, model: str) -> None:
    """One model: every arm's train (solid) and test (dashed) mean curve with a +-SD band."""
    rows = summary[summary.model == model]
    for arm, (label, colour) in _arm_styles(dict.fromkeys(rows.arm)).items():
        for split, split_label, linestyle in SPLITS:
            _curve(
                ax,
                rows[(rows.arm == arm) & (rows.split == split)],
                colour,
                linestyle,
                f"{label}, {split_label.lower()}",
            )
    _epoch_axis(ax, rows.epoch)
    ax.set_title(model, fontweight="bold", fontsize=12)
    ax.set_xlabel("Epoch", fontsize=11)
    ax.set_ylabel("R² (mean ± SD over folds)", fontsize=11)
    ax.legend(loc="lower right", fontsize=9, frameon=True, framealpha=0.85)


def _overlay_figure(summary: pd.DataFrame, models: list[str]) -> Figure:
    ncols = min(2, len(models))
    nrows = math.ceil(len(models) / ncols)
    fig = Figure(figsize=(7 * ncols, 5 * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)  # render with Agg: no display needed
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, sharey=True)).ravel()
    for ax, model in zip(axes, models):
        draw_panel(ax, summary, model)
        ax.yaxis.set_tick_params(labelleft=True)
    for ax in axes[len(models) :]:
        ax.set_visible(False)
    return fig


def _small_multiples_figure(summary: pd.DataFrame, models: list[str]) -> Figure:
    """One panel per model and arm (a model's arms on consecutive rows), all on the same axes."""
    styles = _arm_styles(dict.fromkeys(summary.arm))
    per_model = {m: [a for a in styles if a in set(summary.loc[summary.model == m, "arm"])] for m in models}
    ncols = min(3, max(len(arms) for arms in per_model.values()))
    layout = [(m, i) for m in models for i in range(math.ceil(len(per_model[m]) / ncols))]
    fig = Figure(figsize=(4.2 * ncols, 3.3 * len(layout) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(layout), ncols, squeeze=False, sharex=True, sharey=True)
    for r, (model, chunk) in enumerate(layout):
        rows = summary[summary.model == model]
        arms = per_model[model]
        for c in range(ncols):
            ax = axes[r, c]
            k = chunk * ncols + c
            if k >= len(arms):
                ax.set_visible(False)
                continue
            arm = arms[k]
            label, colour = styles[arm]
            for other in arms:
                if other != arm:
                    _curve(
                        ax,
                        rows[(rows.arm == other) & (rows.split == "test")],
                        "0.6",
                        "--",
                        None,
                        band=False,
                        linewidth=0.8,
                        alpha=0.6,
                    )
            for split, split_label, linestyle in SPLITS:
                _curve(ax, rows[(rows.arm == arm) & (rows.split == split)], colour, linestyle, split_label.lower())
            _epoch_axis(ax, rows.epoch)
            ax.set_title(label, fontsize=11, color=colour, fontweight="bold")
            if c == 0:
                ax.set_ylabel(f"{model}\nR² (mean ± SD)", fontsize=10)
            if r == len(layout) - 1 or k + ncols >= len(arms):
                ax.set_xlabel("Epoch", fontsize=10)
                ax.xaxis.set_tick_params(labelbottom=True)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="0.2", linestyle=ls, linewidth=1.6) for _, _, ls in SPLITS]
    handles.append(Line2D([], [], color="0.6", linestyle="--", linewidth=0.8))
    labels = [f"{name.lower()} (the panel's arm)" for _, name, _ in SPLITS] + ["other arms of the model, test"]
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=10, frameon=False)
    return fig


def learning_curves_figure(summary: pd.DataFrame, heading: str | None = None) -> Figure:
    """The Figure 2 layout for two arms; small multiples (a panel per arm) for more."""
    models = list(dict.fromkeys(summary.model))
    with rc_context(STYLE):
        if summary.arm.nunique() <= 2:
            fig = _overlay_figure(summary, models)
        else:
            fig = _small_multiples_figure(summary, models)
        title = "Learning curves: mean R² over folds, train (solid) and test (dashed), band ± 1 SD"
        fig.suptitle(f"{heading}\n{title}" if heading else title, fontweight="bold", fontsize=13)
    return fig


METRIC_LABELS = {"train_r2": "Final train R²", "test_r2": "Final test R²", "instability": "Instability (test R² curve)"}


def t_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Mean +- the t-interval half width over the folds (0 for one fold)."""
    from scipy import stats as sps

    n = len(values)
    if n < 2:
        return 0.0, 0.0
    half = sps.t.ppf(0.5 + confidence / 2, n - 1) * np.std(values, ddof=1) / math.sqrt(n)
    return float(half), float(half)


def final_values_figure(values: pd.DataFrame, heading: str | None = None, confidence: float = 0.95) -> Figure:
    """Per model (rows) and metric (columns): each arm's per-fold final values (dots) and their
    mean with a t-interval (bar); metrics share their y-range across models."""
    models = list(dict.fromkeys(values.model))
    metrics = [m for m in METRIC_LABELS if m in set(values.metric)]
    styles = _arm_styles(dict.fromkeys(values.arm))
    arms = list(styles)
    rng = np.random.default_rng(0)  # jitter of the dots only
    with rc_context(STYLE):
        fig = Figure(
            figsize=(max(3.2, 0.75 * len(arms) + 1.6) * len(metrics), 3.6 * len(models) + 0.8), layout="constrained"
        )
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(models), len(metrics), squeeze=False, sharey="col", sharex=True)
        for r, model in enumerate(models):
            for c, metric in enumerate(metrics):
                ax = axes[r, c]
                for x, arm in enumerate(arms):
                    v = values[
                        (values.model == model) & (values.metric == metric) & (values.arm == arm)
                    ].value.to_numpy()
                    v = v[np.isfinite(v)]
                    if not len(v):
                        continue
                    colour = styles[arm][1]
                    ax.scatter(x + rng.uniform(-0.12, 0.12, len(v)), v, s=14, color=colour, alpha=0.55, linewidths=0)
                    low, high = t_interval(v, confidence)
                    ax.errorbar(
                        [x + 0.28],
                        [v.mean()],
                        yerr=[[low], [high]],
                        fmt="o",
                        color=colour,
                        markersize=5,
                        capsize=3,
                        linewidth=1.4,
                    )
                ax.set_xticks(range(len(arms)))
                ax.set_xticklabels([styles[a][0] for a in arms], rotation=30, ha="right", fontsize=9)
                ax.set_xlim(-0.5, len(arms) - 0.3)
                ax.grid(True, axis="y", linestyle="--", color="0.85", linewidth=0.7)
                # The model on a line of its own: "model: metric" on one line is wider than a
                # narrow panel (two arms) and ran into the next panel's title.
                ax.set_title(
                    METRIC_LABELS[metric] if len(models) == 1 else f"{model}\n{METRIC_LABELS[metric]}", fontsize=11
                )
        title = f"Final-epoch values per arm: folds (dots), mean with {confidence:.0%} t-interval (bar)"
        fig.suptitle(f"{heading}\n{title}" if heading else title, fontweight="bold", fontsize=12)
    return fig


def stats_stage(cfg: DictConfig, ctx: StageContext) -> None:
    """The `stats` stage: compare arms on a folder of per-fold logs and draw their learning curves,
    into `ctx.out` (stats.out_dir).

    Tables and figures come from one reading of the logs and are written as one set (a temporary
    folder renamed into place), so that a failure leaves the previous set whole and a new set is
    never paired with an old figure.
    """
    check_committed_logs(cfg, ctx.out)
    check_run_logs_intact(cfg)
    heading = cfg.stats.get("heading")
    logs = load_checked_logs(cfg)
    outputs = with_heading(build_outputs(cfg, logs), heading)
    summary = curve_summary(logs)
    # a reduced run says so in its figures too, not only in its tables
    titles = "\n".join(line for line in (heading, limited_note(cfg, logs)) if line) or None
    figure = learning_curves_figure(summary, titles)
    values = next(v for k, v in outputs.items() if k.startswith("fold_values"))
    finals = final_values_figure(values, titles, float(cfg.stats.confidence))
    # One set: a failure while writing leaves the previous tables and figures, never a mixture.
    with atomic_files(ctx.out) as tmp:
        write_outputs(outputs, tmp)
        save_figure(figure, tmp / FIGURE_NAME, summary, tmp / CURVES_NAME)
        save_png(finals, tmp / FINALS_NAME)
    log.info("stats: wrote %s, %s, %s and %s to %s", ", ".join(outputs), CURVES_NAME, FIGURE_NAME, FINALS_NAME, ctx.out)


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
    return [*table_names(cfg), CURVES_NAME, FIGURE_NAME, FINALS_NAME]


# --------------------------------------------------------------------------------------------
# Committed results are replaced only on purpose
# --------------------------------------------------------------------------------------------
# The settings that choose which per-fold logs are made (the training settings that make them are
# the train stage's declared `settings`); compared with a committed result's when the statistics
# read this config's own training logs. Keys absent from the committed config (older versions) are
# not compared.
GRID_KEYS = ("seed", "task.name", "train.models", "train.arms", "train.folds", "train.seeds")


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
    from coordchannels.stages import stage_spec

    keys = [k for k in stage_spec(cfg, "stats").settings]
    if Path(str(cfg.stats.logs_dir)).resolve() == Path(str(cfg.train.logs_dir)).resolve():
        ignore = set(cfg.train.get("fingerprint_ignore") or ())
        train = stage_spec(cfg, "train").settings
        keys += [*GRID_KEYS, *train, *(f"task.data.{k}" for k in (cfg.task.get("data") or {}) if k not in ignore)]
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
            "defaults: data/results/), or set stats.replace_results=true to replace them on purpose."
        )
    check_training_machine(cfg, folder)


def check_training_machine(cfg: DictConfig, folder: Path) -> None:
    """Before any job trains: logs trained here for a committed result would differ from its logs
    (they are bit-identical only on the same CPU model and torch build), so the statistics would be
    refused after hours of training. Refuse now when this run trains any of its jobs on another
    machine than the committed result's (its manifest's hardware)."""
    manifest = folder / "manifest.json"
    same_logs = Path(str(cfg.stats.logs_dir)).resolve() == Path(str(cfg.train.logs_dir)).resolve()
    if "train" not in cfg.stages or not same_logs or not manifest.is_file() or not cfg.task.get("models"):
        return
    import torch

    from coordchannels.environment import cpu_name
    from coordchannels.train.grid import job_grid
    from coordchannels.train.progress import done_epochs

    made = json.loads(manifest.read_text()).get("hardware") or {}
    here = {"cpu": cpu_name(), "torch": torch.__version__}
    if all(made.get(k) == v for k, v in here.items()):
        return
    epochs = int(cfg.train.epochs)
    if all(done_epochs(cfg, job) >= epochs for job in job_grid(cfg)):
        return  # nothing trains here: the statistics read logs already made
    raise SettingError(
        f"stats.out_dir={cfg.stats.out_dir} holds committed results trained on {made.get('cpu')!r} with torch "
        f"{made.get('torch')}; logs trained here ({here['cpu']!r}, torch {here['torch']}) are not bit-identical "
        "to those and would be refused after training. Write to the default folder under data/results/ "
        "and compare by statistic (`make compare-replication` for replications), or set "
        "stats.replace_results=true to replace the committed results on purpose."
    )


def check_committed_logs(cfg: DictConfig, out: Path) -> None:
    """In the stats stage, before anything is written: a committed result folder is replaced only
    by statistics of the same per-fold logs (their digest in its logs/stats.inputs.json)."""
    from coordchannels.stages import stage_record, stage_spec

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
            "data/results/), or set stats.replace_results=true to replace them on purpose."
        )


def check_stats_stage(cfg: DictConfig) -> None:
    """The stats stage's `check`, before any stage runs: the committed result it would replace, and
    the logs of a result folder it would read (`committed_logs_damage`)."""
    from coordchannels.stages import StageError

    check_results_dir(cfg)
    damaged = committed_logs_damage(cfg)
    if damaged:
        raise StageError(
            f"stats: per-fold logs changed since their manifest was written ({'; '.join(damaged)}); restore "
            f"them (git checkout -- {cfg.stats.logs_dir}) or point stats.logs_dir at intact logs"
        )


def committed_logs_damage(cfg: DictConfig) -> list[str]:
    """The logs under stats.logs_dir that differ from the SHA-256 in the manifest of the result
    folder holding them (none outside such a folder)."""
    from coordchannels.verify import check_files, manifest_folder, recorded_files

    logs_dir = Path(str(cfg.stats.logs_dir))
    folder = manifest_folder(logs_dir, Path(str(cfg.paths.root_dir)))
    return check_files(folder, recorded_files(folder), logs_dir.resolve()) if folder else []


def check_run_logs_intact(cfg: DictConfig) -> None:
    """In the stats stage, after training: this config's own training logs are those its train
    stage recorded (a log changed since is refused, naming it, not turned into tables)."""
    from coordchannels.stages import StageError, damaged_outputs, stage_spec

    if not cfg.task.get("models"):
        return
    if Path(str(cfg.stats.logs_dir)).resolve() != Path(str(cfg.train.logs_dir)).resolve():
        return
    damaged = damaged_outputs(cfg, stage_spec(cfg, "train"))
    if damaged:
        raise StageError(
            f"stats: per-fold logs changed since they were written ({'; '.join(damaged)}); "
            "run the train stage again to redo them"
        )
