"""CoordGate's 1-D spatially-varying convolution experiment, on a grid small enough for seconds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from coordchannels import svconv
from coordchannels.pipeline import run_stages
from tests.conftest import call_stage

# 500 signals, one plain 1-layer CNN and one CoordGate layer, 15 epochs: about two seconds.
TINY = (
    "task=coordgate",
    "task.data.n_signals=500",
    "task.data.operator.support=2",
    "task.experiment.cnn_families=[plain]",
    "task.experiment.cnn_grid=[{layers:1,kernel:3,channels:8}]",
    "task.experiment.coordgate_grid=[{kernel:5,channels:5}]",
    "task.experiment.train.max_epochs=15",
    "task.experiment.train.batch_size=16",
    "task.experiment.timing.repeats=3",
    "task.experiment.timing.warmup=1",
)
OUTPUTS = ("results.csv", "psnr_vs_time.png", "psnr_vs_params.png", "summary.md", "operator.npy")
DETERMINISTIC = ["model", "family", "layers", "kernel", "channels", "params", "psnr_db", "epochs",
                 "best_epoch", "val_psnr_db", "test_mse"]


def run_tiny(make_cfg, *extra: str):
    cfg = make_cfg(*TINY, *extra)
    run_stages(cfg)
    out = svconv.stage_out(cfg)
    return cfg, out, pd.read_csv(out / "results.csv")


# --- the operator A ------------------------------------------------------------------------------
def default_operator(make_cfg) -> tuple[np.ndarray, object]:
    op = make_cfg("task=coordgate").task.data.operator
    return svconv.make_operator(30, op.support, list(op.regimes), op.transition), op


def test_operator_rows_are_gaussians_in_three_regimes(make_cfg):
    a, op = default_operator(make_cfg)
    assert a.shape == (30, 30) and (a >= 0).all()
    # Banded: nothing beyond the support; rows away from the ends sum to one.
    i, j = np.nonzero(a)
    assert np.abs(i - j).max() <= op.support
    np.testing.assert_allclose(a[op.support:-op.support].sum(axis=1), 1.0)
    assert (a.sum(axis=1) <= 1 + 1e-12).all()  # y stays within the range of x: PSNR peak 1

    def centre(row):
        return (a[row] * (np.arange(30) - row)).sum() / a[row].sum()

    def width(row):
        return np.sqrt((a[row] * (np.arange(30) - row - centre(row)) ** 2).sum() / a[row].sum())

    # Regime centres (samples 5, 15, 24): centred narrow, shifted right and wide, shifted left narrow.
    assert abs(centre(5)) < 0.05 and width(5) < 0.8
    assert centre(15) > 1.0 and width(15) > 1.2
    assert centre(24) < -1.0 and width(24) < 0.8
    # Smooth: the offset changes by well under a sample between neighbours.
    centres = np.array([centre(r) for r in range(op.support, 30 - op.support)])
    assert np.abs(np.diff(centres)).max() < 1.0


def test_regime_weights_are_a_partition_of_unity():
    w = svconv.regime_weights(30, 1.0)
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    assert (w >= 0).all()
    assert w[:, 0].argmax() == 0 and w[:, 15].argmax() == 1 and w[:, 29].argmax() == 2


def test_bad_settings_are_clear_errors(make_cfg):
    cfg = make_cfg("task=coordgate", "task.data.split=[0.8,0.3,0.1]")
    with pytest.raises(ValueError, match="data.split"):
        svconv.make_data(cfg.task.data, 0)
    with pytest.raises(ValueError, match="3 regimes"):
        svconv.make_operator(30, 4, [{"offset": 0, "sigma": 1}], 1.0)
    cfg = make_cfg("task=coordgate", "task.experiment.cnn_families=[resnet]")
    with pytest.raises(ValueError, match="unknown family 'resnet'"):
        svconv.model_grid(cfg.task.experiment)
    with pytest.raises(ValueError, match="odd"):
        svconv.CNN1d(1, 4, 8, 30)


def test_data_splits_and_targets(make_cfg):
    cfg = make_cfg(*TINY)
    a, data = svconv.make_data(cfg.task.data, 7)
    assert [len(data[k].x) for k in ("train", "val", "test")] == [400, 50, 50]
    x = data["test"].x[:, 0].double().numpy()
    np.testing.assert_allclose(data["test"].y[:, 0].numpy(), x @ a.T, rtol=1e-5, atol=1e-6)
    assert 0 <= x.min() and x.max() <= 1


def test_models_have_the_requested_structure():
    plain = svconv.CNN1d(4, 3, 16, 30)
    coord = svconv.CNN1d(4, 3, 16, 30, coordconv=True)
    # CoordConv only adds the input channel's weights to the first layer.
    assert svconv.n_params(coord) - svconv.n_params(plain) == 16 * 3
    gate = svconv.CoordGateNet(9, 9, 30, hidden=32, n_layers=3)
    convs = [m for m in gate.modules() if type(m).__name__ == "Conv1d" and m.kernel_size[0] > 1]
    assert len(convs) == 1  # one spatial convolution; the rest are 1x1
    import torch

    for model in (plain, coord, gate):
        assert model(torch.rand(5, 1, 30)).shape == (5, 1, 30)


def test_psnr_definition():
    assert svconv.psnr_db(0.01, 1.0) == pytest.approx(20.0)
    assert svconv.psnr_db(0.01, 2.0) == pytest.approx(20.0 + 20 * np.log10(2))


# --- the stage -----------------------------------------------------------------------------------
def test_stage_writes_outputs_and_coordgate_beats_a_plain_layer(make_cfg):
    cfg, out, df = run_tiny(make_cfg)
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    assert (out / "logs" / "experiment.log").exists()
    assert list(df.columns[:len(svconv.COLUMNS)]) == svconv.COLUMNS
    assert df.model.tolist() == ["plain_n1_k3_c8", "coordgate_n1_k5_c5"]
    assert (df.params > 0).all() and (df.infer_ms > 0).all() and (df.epochs <= 15).all()
    psnr = df.set_index("family").psnr_db
    assert psnr["coordgate"] > psnr["plain"]
    summary = (out / "summary.md").read_text()
    assert "(a) One CoordGate layer learns A" in summary and "peak = 1" in summary
    assert "coordgate_n1_k5_c5" in summary
    assert not list(out.glob(".*.part"))  # nothing half-written left behind


def test_stage_is_deterministic_and_skips_finished_work(make_cfg, tmp_path):
    _, out, first = run_tiny(make_cfg)
    # Same config in another folder: identical numbers (timings aside).
    cfg2, out2, second = run_tiny(make_cfg, f"paths.results_dir={tmp_path}/again")
    assert out2 != out
    pd.testing.assert_frame_equal(first[DETERMINISTIC], second[DETERMINISTIC])
    np.testing.assert_array_equal(np.load(out / "operator.npy"), np.load(out2 / "operator.npy"))
    # A finished run is not redone unless overwrite=true.
    stamp = (out2 / "results.csv").stat().st_mtime_ns
    assert run_stages(cfg2) == []
    assert (out2 / "results.csv").stat().st_mtime_ns == stamp
    cfg2.overwrite = True
    OmegaConf.update(cfg2, "task.experiment.train.max_epochs", 2)
    call_stage(cfg2, "experiment")
    assert (pd.read_csv(out2 / "results.csv").epochs <= 2).all()


def test_summary_judges_the_claims():
    rows = [  # (family, layers, kernel, channels, psnr)
        ("plain", 1, 3, 16, 18.0), ("plain", 4, 3, 16, 25.0),
        ("coordconv", 1, 3, 16, 18.5), ("coordconv", 4, 3, 16, 24.0),
        ("coordgate", 1, 9, 9, 50.0),
    ]
    df = pd.DataFrame([{"model": f"{f}_n{n}_k{k}_c{c}", "family": f, "layers": n, "kernel": k,
                        "channels": c, "params": 100, "psnr_db": p} for f, n, k, c, p in rows])
    assert svconv.claim_a(df, 40.0).startswith("**holds**")
    assert svconv.claim_a(df, 60.0).startswith("**does not hold**")
    assert svconv.claim_b(df, 1.0).startswith("**holds**")
    df.loc[df.family == "coordconv", "psnr_db"] += 10
    assert svconv.claim_b(df, 1.0).startswith("**does not hold**")
    assert svconv.claim_c(df, 3.0).startswith("**holds**")
    assert svconv.claim_c(df, 10.0).startswith("**does not hold**")
    assert svconv.claim_c(df[df.layers == 1], 3.0).startswith("not tested")
