"""Learning-curve figure (paper Figure 2): fold means and SDs, panel layout, colours, no bad output."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from PIL import Image

from coordchannels.logs import LogError, load_logs, log_path
from coordchannels.pipeline import run_stages
from coordchannels.stats.stage import curve_summary, learning_curves_figure
from tests.conftest import PUBLISHED_LOGS, call_stage, require
from tests.helpers import write_set


def report_cfg(make_cfg, logs, out, *extra):
    return make_cfg(f"stats.logs_dir={logs}", f"stats.out_dir={out}", *extra)


def test_curve_summary_is_mean_and_sd_over_folds(tmp_path):
    write_set(tmp_path, folds=[1, 2, 3], epochs=5)
    logs = load_logs(tmp_path)
    summary = curve_summary(logs)
    sel = summary[(summary.arm == "study") & (summary.split == "test")]
    curves = np.stack([fl.test for fl in logs["NimeshaNet"]["study"]])
    np.testing.assert_allclose(sel["mean"], curves.mean(axis=0))
    np.testing.assert_allclose(sel["sd"], curves.std(axis=0, ddof=1))
    assert list(sel.epoch) == [1, 2, 3, 4, 5] and set(sel.n) == {3}


def test_figure_has_a_panel_per_model_with_paper_colours(tmp_path):
    write_set(tmp_path, models=("NimeshaNet", "LakshyaNet", "Other"), folds=[1, 2])
    fig = learning_curves_figure(curve_summary(load_logs(tmp_path)))
    assert isinstance(fig.canvas, FigureCanvasAgg)  # drawn with Agg, never a display backend
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["NimeshaNet", "LakshyaNet", "Other"]
    lines = {line.get_label(): line for line in visible[0].get_lines()}
    assert to_rgba(lines["control (CoordConv), train"].get_color()) == to_rgba("red")
    assert to_rgba(lines["study (intensity-weighted), test"].get_color()) == to_rgba("blue")
    assert lines["control (CoordConv), train"].get_linestyle() == "-"
    assert lines["control (CoordConv), test"].get_linestyle() == "--"
    assert len(visible[0].collections) == 4  # one +-SD band per arm and split


def test_report_stage_writes_a_png_without_a_display(tmp_path, make_cfg):
    logs = require(PUBLISHED_LOGS, "published per-fold logs")
    call_stage(report_cfg(make_cfg, logs, tmp_path), "stats")
    with Image.open(tmp_path / "learning_curves.png") as image:
        assert image.format == "PNG" and image.width > 1000 and image.height > 800
    summary = pd.read_csv(tmp_path / "learning_curves.csv")
    assert list(dict.fromkeys(summary.model)) == [
        "NimeshaNet",
        "Reduced Parameter NimeshaNet",
        "LakshyaNet",
        "Reduced Parameter LakshyaNet",
    ]
    # The paper's Figure 2: Reduced Parameter NimeshaNet control test R^2 dips to ~0.28 at epoch 4.
    dip = summary[
        (summary.model == "Reduced Parameter NimeshaNet")
        & (summary.arm == "control")
        & (summary.split == "test")
        & (summary.epoch == 4)
    ]["mean"].item()
    assert dip == pytest.approx(0.28, abs=0.01)


def test_pipeline_runs_stats_and_report_from_config(tmp_path, make_cfg):
    logs = write_set(tmp_path / "logs")
    out = tmp_path / "out"
    cfg = report_cfg(make_cfg, logs, out, "stages=[stats]")
    assert run_stages(cfg) == ["stats"]
    assert run_stages(cfg) == []  # the same logs and settings: nothing to redo
    for name in (
        "comparison_table.csv",
        "comparison_table.md",
        "comparison_table.tex",
        "fold_values.csv",
        "fold_differences.csv",
        "learning_curves.png",
        "learning_curves.csv",
    ):
        assert (out / name).is_file(), name


def test_bad_input_writes_no_figure(tmp_path, make_cfg):
    logs = write_set(tmp_path / "logs")
    log_path(logs, "NimeshaNet", "control", 5).unlink()
    out = tmp_path / "out"
    with pytest.raises(LogError, match="control_set_fold_5_log.csv"):
        call_stage(report_cfg(make_cfg, logs, out), "stats")
    assert not out.exists() or not any(out.iterdir())
