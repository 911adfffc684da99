"""CoordGate's 1-D spatially-varying convolution experiment, on a grid small enough for seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from coordchannels.coordgate.data import make_data, make_inputs, make_operator, psnr_peak, regime_weights
from coordchannels.coordgate.fit import psnr_db
from coordchannels.coordgate.nets import CNN1d, CoordGateNet, ModelSpec, build_model, model_grid, n_params, random_map
from coordchannels.coordgate.stage import conditions
from coordchannels.coordgate.summary import COLUMNS, claim_a, claim_b, claim_c, claim_random_map
from coordchannels.pipeline import run_stages
from coordchannels.stages import stage_spec
from tests.conftest import call_stage

# 500 signals, one plain 1-layer CNN and one CoordGate layer, 15 epochs, one condition: about two seconds.
TINY = (
    "task=coordgate",
    "task.data.n_signals=500",
    "task.data.operator.support=2",
    "task.experiment.grid=extended",
    "task.experiment.cnn_families=[plain]",
    "task.experiment.coordgate_families=[coordgate]",
    "task.experiment.grids.extended.cnn=[{layers:1,kernel:3,channels:8}]",
    "task.experiment.grids.extended.coordgate=[{kernel:5,channels:5}]",
    "task.experiment.extra_conditions=[]",
    "task.experiment.train.max_epochs=15",
    "task.experiment.train.batch_size=16",
    "task.experiment.timing.repeats=3",
    "task.experiment.timing.warmup=1",
)
OUTPUTS = ("results.csv", "psnr_vs_time.png", "psnr_vs_params.png", "summary.md", "operator.npy", "run.json")
DETERMINISTIC = [
    "model",
    "label",
    "family",
    "layers",
    "kernel",
    "channels",
    "params",
    "psnr_db",
    "epochs",
    "best_epoch",
    "val_psnr_db",
    "test_mse",
]


def run_tiny(make_cfg, *extra: str):
    cfg = make_cfg(*TINY, *extra)
    run_stages(cfg)
    out = stage_spec(cfg, "experiment").out
    return cfg, out, pd.read_csv(out / "results.csv")


# --- the operator A ------------------------------------------------------------------------------
def default_operator(make_cfg) -> tuple[np.ndarray, object]:
    op = make_cfg("task=coordgate").task.data.operator
    return make_operator(30, op.support, list(op.regimes), op.transition), op


def test_operator_rows_are_gaussians_in_three_regimes(make_cfg):
    a, op = default_operator(make_cfg)
    assert a.shape == (30, 30) and (a >= 0).all()
    # Banded: nothing beyond the support; rows away from the ends sum to one.
    i, j = np.nonzero(a)
    assert np.abs(i - j).max() <= op.support
    np.testing.assert_allclose(a[op.support : -op.support].sum(axis=1), 1.0)
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


def test_kernel_blend_is_a_superposition_of_three_kernels(make_cfg):
    a, op = default_operator(make_cfg)
    b = make_operator(30, op.support, list(op.regimes), op.transition, blend="kernels")
    # Rows of b are w_1(i) G_1 + w_2(i) G_2 + w_3(i) G_3: at most rank 3 as kernels (away from the ends).
    inner = np.stack([b[i, i - op.support : i + op.support + 1] for i in range(op.support, 30 - op.support)])
    assert np.linalg.matrix_rank(inner, tol=1e-10) == 3
    np.testing.assert_allclose(b[op.support : -op.support].sum(axis=1), 1.0)
    # Same as the parameter blend inside the regimes, different near the boundaries (samples 9.5, 19.5).
    np.testing.assert_allclose(b[4], a[4], atol=0.01)
    assert np.abs(b[10] - a[10]).max() > 0.05
    with pytest.raises(ValueError, match="operator.blend must be one of parameters, kernels, got 'mix'"):
        make_operator(30, 4, list(op.regimes), 1.0, blend="mix")


def test_regime_weights_are_a_partition_of_unity():
    w = regime_weights(30, 1.0)
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    assert (w >= 0).all()
    assert w[:, 0].argmax() == 0 and w[:, 15].argmax() == 1 and w[:, 29].argmax() == 2


def test_bad_settings_are_clear_errors(make_cfg):
    cfg = make_cfg("task=coordgate", "task.data.split=[0.8,0.3,0.1]")
    with pytest.raises(ValueError, match="data.split"):
        make_data(cfg.task.data, 0)
    with pytest.raises(ValueError, match="3 regimes"):
        make_operator(30, 4, [{"offset": 0, "sigma": 1}], 1.0)
    cfg = make_cfg("task=coordgate", "task.experiment.cnn_families=[resnet]")
    with pytest.raises(ValueError, match="unknown family 'resnet'"):
        model_grid(cfg.task.experiment)
    with pytest.raises(ValueError, match="odd"):
        CNN1d(1, 4, 8, 30)


@pytest.mark.parametrize(
    ("override", "call", "message"),
    [
        ("task.data.input_norm=zscore", "data", "data.input_norm must be one of none, standard, got 'zscore'"),
        ("task.experiment.grid=huge", "grid", "experiment.grid must name one of experiment.grids"),
        ("task.experiment.grids.paper.cnn_output=dense", "grid", "experiment.grids.paper.cnn_output"),
        (
            "task.experiment.coordgate_families=[coordgate,noise]",
            "grid",
            "experiment.coordgate_families: unknown family 'noise'",
        ),
        ("task.experiment.psnr_peak=max", "peak", "experiment.psnr_peak must be 'auto' or a positive number"),
        ("task.experiment.psnr_peak=-1", "peak", "experiment.psnr_peak must be 'auto' or a positive number"),
        ("task.experiment.random_map_seed=abc", "build", "experiment.random_map_seed must be an integer"),
        ("task.experiment.extra_conditions=[{grid:paper}]", "conditions", r"experiment.extra_conditions\[0\] must be"),
        ("task.experiment.extra_conditions=[{grid:paper,input_norm:zscore}]", "conditions", "data.input_norm"),
        ("task.experiment.extra_conditions=[{grid:paper,input_norm:standard}]", "conditions", "repeats the condition"),
    ],
)
def test_new_settings_are_validated_with_their_name(make_cfg, override, call, message):
    cfg = make_cfg("task=coordgate", override)
    exp = cfg.task.experiment
    with pytest.raises(ValueError, match=message):
        if call == "data":
            make_data(cfg.task.data, 0)
        elif call == "grid":
            model_grid(exp)
        elif call == "peak":
            psnr_peak(cfg.task.data, exp, np.eye(30))
        elif call == "build":
            build_model(ModelSpec("random_map", 1, 9, 3), 30, exp)
        else:
            conditions(cfg, stage_spec(cfg, "experiment").out)


def test_data_splits_and_targets(make_cfg):
    cfg = make_cfg(*TINY)
    a, data = make_data(cfg.task.data, 7)
    assert [len(data[k].x) for k in ("train", "val", "test")] == [400, 50, 50]
    x = data["test"].x[:, 0].double().numpy()
    np.testing.assert_allclose(data["test"].y[:, 0].numpy(), x @ a.T, rtol=1e-5, atol=1e-6)
    assert -(3**0.5) <= x.min() and x.max() <= 3**0.5


def test_standardised_inputs_have_zero_mean_unit_variance(make_cfg):
    cfg = make_cfg(*TINY, "task.data.n_signals=2000")
    assert cfg.task.data.input_norm == "standard"  # the default: the paper's normalised samples
    _, data = make_data(cfg.task.data, 3)
    x = torch.cat([data[k].x for k in ("train", "val", "test")]).double()
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01
    # Analytical, not estimated: the same uniform draws, shifted by 1/2 and scaled by sqrt(12).
    raw = make_inputs(make_cfg(*TINY, "task.data.n_signals=2000", "task.data.input_norm=none").task.data, 3)
    np.testing.assert_allclose(make_inputs(cfg.task.data, 3), (raw - 0.5) * 12**0.5)
    assert 0 <= raw.min() and raw.max() <= 1


def test_psnr_peak_follows_the_range_of_the_targets(make_cfg):
    a, _ = default_operator(make_cfg)
    cfg = make_cfg("task=coordgate")
    assert cfg.task.experiment.psnr_peak == "auto"
    assert psnr_peak(cfg.task.data, cfg.task.experiment, a) == pytest.approx(2 * 3**0.5)
    cfg = make_cfg("task=coordgate", "task.data.input_norm=none")
    assert psnr_peak(cfg.task.data, cfg.task.experiment, a) == pytest.approx(1.0)
    cfg = make_cfg("task=coordgate", "task.experiment.psnr_peak=2.5")
    assert psnr_peak(cfg.task.data, cfg.task.experiment, a) == 2.5


def convs(model) -> list[tuple[int, int, int]]:
    """(in, out, kernel) of every Conv1d, in order."""
    return [
        (m.in_channels, m.out_channels, m.kernel_size[0]) for m in model.modules() if isinstance(m, torch.nn.Conv1d)
    ]


def test_models_have_the_requested_structure():
    plain = CNN1d(4, 3, 16, 30)
    coord = CNN1d(4, 3, 16, 30, coordconv=True)
    # CoordConv only adds the input channel's weights to the first layer.
    assert n_params(coord) - n_params(plain) == 16 * 3
    assert convs(plain) == [(1, 16, 3)] + [(16, 16, 3)] * 3 + [(16, 1, 1)]  # extended grid: 1x1 output
    gate = CoordGateNet(9, 9, 30, hidden=32, n_layers=3)
    spatial = [c for c in convs(gate) if c[2] > 1]
    assert spatial == [(1, 9, 9)]  # one spatial convolution; the rest are 1x1

    for model in (plain, coord, gate):
        assert model(torch.rand(5, 1, 30)).shape == (5, 1, 30)


# (layers, kernel, channels): trainable parameters of CNN(n, k, c) = (n - 1) x (conv(k, c) -> ReLU)
# -> conv(k, 1), e.g. CNN(4,7,4): (1*7+1)*4 + 2*(4*7+1)*4 + (4*7+1) = 32 + 232 + 29 = 293.
PAPER_CNNS = {(3, 7, 4): 177, (4, 7, 4): 293, (8, 7, 4): 757, (4, 7, 20): 5941}


def test_the_paper_grid_composes_to_the_named_models(make_cfg):
    exp = make_cfg("task=coordgate").task.experiment
    assert exp.grid == "paper"
    specs = model_grid(exp)
    assert [s.label for s in specs] == (
        [f"CNN({n},{k},{c})" for n, k, c in PAPER_CNNS]
        + [f"CoordConv({n},{k},{c})" for n, k, c in PAPER_CNNS]
        + ["CoordGate(1,9,3)", "RandomMapGate(1,9,3)"]
    )
    models = {s.label: build_model(s, 30, exp) for s in specs}
    for (n, k, c), params in PAPER_CNNS.items():
        plain, coord = models[f"CNN({n},{k},{c})"], models[f"CoordConv({n},{k},{c})"]
        # n conv layers of kernel k; c channels, except the last layer: 1 channel.
        assert convs(plain) == [(1, c, k)] + [(c, c, k)] * (n - 2) + [(c, 1, k)]
        assert convs(coord) == [(2, c, k)] + [(c, c, k)] * (n - 2) + [(c, 1, k)]
        assert n_params(plain) == params and n_params(coord) == params + c * k
        assert not isinstance(list(plain.modules())[-1], torch.nn.ReLU)  # linear output
    for label in ("CoordGate(1,9,3)", "RandomMapGate(1,9,3)"):
        gate = models[label]
        assert [c for c in convs(gate) if c[2] > 1] == [(1, 3, 9)]  # ONE conv layer, 3 channels
        # conv 30 + encoder 1->32->32->3 (64 + 1056 + 99) + 1x1 head 4
        assert n_params(gate) == 30 + 1219 + 4
        assert gate(torch.randn(2, 1, 30)).shape == (2, 1, 30)
    assert CNN1d(1, 7, 4, 30, output="last_layer")(torch.randn(2, 1, 30)).shape == (2, 1, 30)


def test_random_map_gate_uses_a_fixed_non_coordinate_map(make_cfg):
    exp = make_cfg("task=coordgate").task.experiment
    spec = ModelSpec("random_map", 1, 9, 3)
    first, second = (build_model(spec, 30, exp).gated.gate for _ in range(2))
    linspace = build_model(ModelSpec("coordgate", 1, 9, 3), 30, exp).gated.gate.coords
    assert first.coords.shape == linspace.shape == (1, 30)
    assert not torch.allclose(first.coords, linspace)
    assert first.coords.min() >= -1 and first.coords.max() <= 1 and first.coords.std() > 0.3
    torch.testing.assert_close(first.coords, second.coords)  # seeded: the same map every build
    assert not torch.equal(random_map(30, 1), random_map(30, 0))
    torch.testing.assert_close(first.coords, random_map(30, exp.random_map_seed))
    # Static: training does not change it, and it is what the gate's encoder reads.
    assert "gated.gate.coords" not in dict(build_model(spec, 30, exp).named_parameters())
    torch.testing.assert_close(first.compute_gate(), first.encoder(random_map(30, 0).unsqueeze(0)).squeeze(0))
    model = build_model(spec, 30, exp)
    before = model.gated.gate.coords.clone()
    torch.optim.Adam(model.parameters()).zero_grad()
    model(torch.randn(4, 1, 30)).pow(2).mean().backward()
    torch.testing.assert_close(model.gated.gate.coords, before)


def test_psnr_definition():
    assert psnr_db(0.01, 1.0) == pytest.approx(20.0)
    assert psnr_db(0.01, 2.0) == pytest.approx(20.0 + 20 * np.log10(2))


# --- the stage -----------------------------------------------------------------------------------
def test_stage_writes_outputs_and_coordgate_beats_a_plain_layer(make_cfg):
    cfg, out, df = run_tiny(make_cfg)
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    assert (out / "logs" / "experiment.log").exists()
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert df.model.tolist() == ["plain_n1_k3_c8", "coordgate_n1_k5_c5"]
    assert df.label.tolist() == ["CNN(1,3,8)+1x1", "CoordGate(1,5,5)"]
    assert (df.params > 0).all() and (df.infer_ms > 0).all() and (df.epochs <= 15).all()
    psnr = df.set_index("family").psnr_db
    assert psnr["coordgate"] > psnr["plain"]
    summary = (out / "summary.md").read_text()
    assert "(a) One CoordGate layer learns A" in summary and "peak = 3.464" in summary
    assert "coordgate_n1_k5_c5" in summary
    assert not list(out.glob(".*.part"))  # nothing half-written left behind


def test_stage_is_deterministic_and_skips_finished_work(make_cfg, tmp_path):
    _, out, first = run_tiny(make_cfg)
    # Same config in another folder: identical numbers (timings aside).
    cfg2, out2, second = run_tiny(make_cfg, f"paths.outputs_dir={tmp_path}/again")
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
        ("plain", 1, 3, 16, 18.0),
        ("plain", 4, 3, 16, 25.0),
        ("coordconv", 1, 3, 16, 18.5),
        ("coordconv", 4, 3, 16, 24.0),
        ("coordgate", 1, 9, 9, 50.0),
        ("random_map", 1, 9, 9, 21.0),
    ]
    df = pd.DataFrame(
        [
            {
                "model": f"{f}_n{n}_k{k}_c{c}",
                "label": ModelSpec(f, n, k, c).label,
                "family": f,
                "layers": n,
                "kernel": k,
                "channels": c,
                "params": 100,
                "psnr_db": p,
                "epochs": 9,
            }
            for f, n, k, c, p in rows
        ]
    )
    assert str(claim_a(df, 40.0)).startswith("**holds**")
    assert str(claim_a(df, 60.0)).startswith("**does not hold**")
    assert claim_a(df, 40.0).cell() == "**holds**: 50.0 dB vs best CNN 25.0 dB"
    assert str(claim_b(df, 1.0)).startswith("**holds**")
    assert str(claim_random_map(df, 40.0)).startswith("**holds**")  # 21 dB: did not converge
    assert "vs CoordGate 50.0 dB" in str(claim_random_map(df, 40.0))
    assert str(claim_random_map(df, 20.0)).startswith("**does not hold**")
    assert claim_random_map(df[df.family != "random_map"], 40.0).holds is None
    # The control is no CNN: claim (a) compares CoordGate with CNNs only.
    df.loc[df.family == "random_map", "psnr_db"] = 55.0
    assert claim_a(df, 40.0).holds
    df.loc[df.family == "coordconv", "psnr_db"] += 10
    assert str(claim_b(df, 1.0)).startswith("**does not hold**")
    assert str(claim_c(df, 3.0)).startswith("**holds**")
    assert str(claim_c(df, 10.0)).startswith("**does not hold**")
    assert str(claim_c(df[df.layers == 1], 3.0)).startswith("not tested")


def test_extra_conditions_run_into_their_folders_and_the_summary_compares_them(make_cfg):
    cfg, out, df = run_tiny(
        make_cfg,
        "task.experiment.extra_conditions=[{grid:extended,input_norm:none}]",
        "task.experiment.coordgate_families=[coordgate,random_map]",
    )
    sub = out / "conditions" / "extended_none"
    for name in (*OUTPUTS, "config.yaml"):
        assert (sub / name).stat().st_size > 0, name
    other = pd.read_csv(sub / "results.csv")
    assert other.label.tolist() == df.label.tolist() == ["CNN(1,3,8)+1x1", "CoordGate(1,5,5)", "RandomMapGate(1,5,5)"]
    assert "input_norm: none" in (sub / "config.yaml").read_text()
    assert "peak = 1:" in (sub / "summary.md").read_text()
    summary = (out / "summary.md").read_text()
    assert "## The claims under each condition" in summary
    assert "| claim | extended grid, standardised inputs | extended grid, U(0, 1) inputs |" in summary
    assert "(d) The random-map control does not converge" in summary
    # Same draws, affinely mapped, and PSNR's peak follows: the two conditions differ, but not wildly.
    assert not np.allclose(df.psnr_db, other.psnr_db)


def test_the_experiment_writes_to_data_unless_asked_to_publish(make_cfg):
    """Only `make coordgate` (paths.outputs_dir = the committed results/) writes into results/."""
    from coordchannels.stages import stage_spec

    cfg = make_cfg("task=coordgate")
    for name in ("experiment", "manifest"):
        out = stage_spec(cfg, name).out
        assert out == Path(str(cfg.paths.outputs_dir)) / "coordgate"
        assert not out.resolve().is_relative_to(Path(str(cfg.paths.results_dir)).resolve())
