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
import os
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from coordchannels.coordgate.data import check_input_norm
from coordchannels.coordgate.fit import run_experiment
from coordchannels.coordgate.nets import grid_config
from coordchannels.coordgate.summary import condition_title, plot_psnr, summary_markdown
from coordchannels.io import save_npy, write_csv, write_text
from coordchannels.stages import StageContext

log = logging.getLogger(__name__)

OUTPUTS = ("results.csv", "psnr_vs_time.png", "psnr_vs_params.png", "summary.md", "operator.npy", "run.json")


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


def experiment_stage(cfg: DictConfig, ctx: StageContext) -> None:
    """Run the experiment under each condition (the configured one, then experiment.extra_conditions),
    each writing results.csv, the two figures, summary.md, run.json, config.yaml and operator.npy; the
    stage folder's summary.md then also compares the claims across the conditions."""
    runs = conditions(cfg, ctx.out)
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
