"""Figures a reader can read, and committed results replaced only by the same per-fold logs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from coordchannels.figures import save_figure
from coordchannels.logs import load_logs
from coordchannels.pipeline import run_stages
from coordchannels.settings import SettingError
from coordchannels.stats.stage import curve_summary, final_values_figure, learning_curves_figure
from tests.helpers import write_set

ARMS = ("none", "control", "study", "intensity")


def test_more_than_two_arms_get_a_panel_each_on_shared_axes(tmp_path):
    write_set(tmp_path, arms=ARMS, folds=[1, 2, 3])
    fig = learning_curves_figure(curve_summary(load_logs(tmp_path, compare="all")))
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == [
        "none (no coordinates)",
        "control (CoordConv)",
        "study (intensity-weighted)",
        "intensity (intensity channel)",
    ]
    assert len({ax.get_ylim() for ax in panels}) == 1  # one y-range for every panel


def test_final_values_figure_has_a_panel_per_metric_and_every_arm(tmp_path):
    rows = [
        {"model": "NimeshaNet", "arm": arm, "seed": None, "fold": f, "metric": metric, "value": 0.1 * f}
        for arm in ARMS
        for f in (1, 2, 3)
        for metric in ("train_r2", "test_r2", "instability")
    ]
    fig = final_values_figure(pd.DataFrame(rows), heading="SMOKE RUN")
    assert [ax.get_title() for ax in fig.axes] == ["Final train R²", "Final test R²", "Instability (test R² curve)"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][1] == "control (CoordConv)"
    assert fig.get_suptitle().startswith("SMOKE RUN")


def test_a_committed_result_is_replaced_only_by_statistics_of_the_same_logs(tmp_path, make_cfg):
    logs = write_set(tmp_path / "logs")
    out = tmp_path / "results" / "mine"
    cfg = make_cfg(f"stats.logs_dir={logs}", f"stats.out_dir={out}", "stages=[stats]")
    assert run_stages(cfg) == ["stats"]  # a new folder under results/: nothing to protect
    record = out / "logs" / "stats.inputs.json"
    stored = json.loads(record.read_text())
    stored = {k: ("0" * 64 if k.startswith("sha256(") else v) for k, v in stored.items()}
    record.write_text(json.dumps(stored))  # as if the committed tables came from other logs
    with pytest.raises(SettingError, match="other per-fold logs"):
        run_stages(cfg)
    assert run_stages(
        make_cfg(f"stats.logs_dir={logs}", f"stats.out_dir={out}", "stages=[stats]", "stats.replace_results=true")
    ) == ["stats"]


def _final_values(models, arms=("control", "study")) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"model": model, "arm": arm, "seed": None, "fold": f, "metric": metric, "value": 0.1 * f + 0.01 * m}
            for m, model in enumerate(models)
            for arm in arms
            for f in (1, 2, 3)
            for metric in ("train_r2", "test_r2", "instability")
        ]
    )


@pytest.mark.parametrize("arms", [("control", "study"), ARMS], ids=["two arms", "four arms"])
def test_final_values_titles_show_whole(arms):
    """Every title lies inside the figure and clear of its neighbours, also with the longest model
    name in the narrowest panels (two arms), where "model: metric" on one line used to be cut."""
    fig = final_values_figure(_final_values(("NimeshaNet", "Reduced Parameter NimeshaNet"), arms), heading="SMOKE")
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)  # the constrained layout places the titles when drawing
    inside = fig.bbox
    titles = [fig._suptitle] + [ax.title for ax in fig.axes]
    boxes = [t.get_window_extent(renderer) for t in titles]
    for text, box in zip(titles, boxes):
        assert text.get_text(), "a title is empty"
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, (
            f"title {text.get_text()!r} leaves the figure"
        )
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), "two titles overlap"
    assert fig.axes[0].get_title() == "NimeshaNet\nFinal train R²"


def test_save_figure_writes_the_png_and_the_numbers_it_draws(tmp_path):
    data = pd.DataFrame({"epoch": [1, 2, 3], "mean": [0.5, 0.625, 0.75]})
    fig = Figure(figsize=(2, 2))
    FigureCanvasAgg(fig)
    fig.subplots().plot(data.epoch, data["mean"])
    save_figure(fig, tmp_path / "curve.png", data)
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "curve.csv"), data)
    save_figure(fig, tmp_path / "other.png", data, tmp_path / "numbers.csv")
    assert (tmp_path / "numbers.csv").is_file() and not (tmp_path / "other.csv").exists()
    with pytest.raises(ValueError, match="does not end in .png"):
        save_figure(fig, tmp_path / "curve.pdf", data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.csv", "curve.png", "numbers.csv", "other.png"]
