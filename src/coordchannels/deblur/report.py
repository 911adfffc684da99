"""The deblurring task's `stats` stage: validation PSNR and SSIM per model with bootstrap intervals,
the paper's claims (a)-(g) as holds / does not hold, figures, all written together.

Every number comes from the final checkpoints of the jobs of this run's grid on the validation
images. With several seeds, per-image values are averaged over seeds first; the table also gives
the spread (SD) of the per-seed means. Jobs that have not finished are listed, never guessed.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from scipy.stats import spearmanr

from coordchannels.deblur import figures
from coordchannels.deblur.data import load_task_data
from coordchannels.deblur.evaluate import Evaluation, evaluate_grid
from coordchannels.deblur.metrics import centre_edge_ratio, error_map, mean_ci, psnr, ssim
from coordchannels.io import write_csv, write_text
from coordchannels.stages import StageContext
from coordchannels.stats.comparison import montecarlo_means
from coordchannels.tables import markdown_table

log = logging.getLogger(__name__)

FIGURES = ["psf_grid.png", "restored.png", "psnr_vs_params.png", "error_maps.png"]


def outputs(cfg: DictConfig) -> list[str]:
    return ["metrics.csv", "per_image.csv", "table.md", "summary.md", *FIGURES]


def heading(cfg: DictConfig) -> str:
    smoke = cfg.stats.get("heading")
    return f"{smoke} {cfg.task.scale}" if smoke else str(cfg.task.scale)


def stats_stage(cfg: DictConfig, ctx: StageContext) -> None:
    data = load_task_data(cfg)
    evaluations, missing, val_idx = evaluate_grid(cfg, data)
    if not evaluations:
        raise FileNotFoundError(f"no finished training job in {cfg.train.run_dir}: run the train stage first")
    sharp = data.sharp[val_idx, 0].numpy()
    blurred = data.blurred[val_idx, 0].numpy()
    s = cfg.stats
    table = metrics_table(cfg, evaluations, int(s.n_resamples), int(s.seed), float(s.confidence))
    blurred_psnr = float(psnr(blurred, sharp).mean())
    claims = claim_lines(cfg, table, evaluations)
    gains = gate_gains(cfg, evaluations)
    per_image = pd.concat(
        [
            pd.DataFrame({"model": m, "seed": seed, "image": val_idx, "psnr": ev.psnr[i], "ssim": ev.ssim[i]})
            for m, ev in evaluations.items()
            for i, seed in enumerate(ev.seeds)
        ]
    )
    psf_report = json.loads((ctx.after["blur"] / "psf_report.json").read_text())
    head = heading(cfg)
    labels = {m: str(cfg.task.models[m].label) for m in evaluations}
    maps = {"blurred input": error_map(blurred, sharp), **{labels[m]: ev.error_map for m, ev in evaluations.items()}}
    # Everything is computed; now write (a failure above leaves the previous set whole).
    write_csv(table, ctx.out / "metrics.csv", float_format="%.4f")
    write_csv(per_image, ctx.out / "per_image.csv", float_format="%.4f")
    md = markdown(table, head, blurred_psnr, float(ssim(blurred, sharp).mean()), len(val_idx), missing)
    write_text(ctx.out / "table.md", md)
    write_text(ctx.out / "summary.md", summary(head, md, claims, gains, psf_report, missing))
    field = np.load(ctx.after["blur"] / "psf.npy")
    figures.psf_grid(field, ctx.out / "psf_grid.png", head)
    figures.restored(sharp[0], blurred[0], evaluations, labels, ctx.out / "restored.png", head)
    figures.psnr_vs_params(table, ctx.out / "psnr_vs_params.png", head, blurred_psnr)
    figures.error_maps(maps, ctx.out / "error_maps.png", head)


def metrics_table(
    cfg: DictConfig, evaluations: dict[str, Evaluation], n_resamples: int, seed: int, confidence: float
) -> pd.DataFrame:
    """One row per model in the paper's order: parameters, PSNR and SSIM (mean over images of the
    seed-averaged values, bootstrap interval), SD of per-seed means, centre/edge error ratio."""
    rows = []
    for model, ev in evaluations.items():
        m = cfg.task.models[model]
        p, p_lo, p_hi = mean_ci(ev.psnr.mean(axis=0), n_resamples, seed, confidence)
        q, q_lo, q_hi = mean_ci(ev.ssim.mean(axis=0), n_resamples, seed, confidence)
        rows.append(
            {
                "model": model,
                "label": str(m.label),
                "family": str(m.family),
                "depth": int(m.depth),
                "order": int(m.order),
                "n_params": ev.n_params,
                "n_seeds": len(ev.seeds),
                "psnr": p,
                "psnr_low": p_lo,
                "psnr_high": p_hi,
                "psnr_seed_sd": float(ev.psnr.mean(axis=1).std(ddof=1)) if len(ev.seeds) > 1 else float("nan"),
                "ssim": q,
                "ssim_low": q_lo,
                "ssim_high": q_hi,
                "ssim_seed_sd": float(ev.ssim.mean(axis=1).std(ddof=1)) if len(ev.seeds) > 1 else float("nan"),
                "centre_edge_ratio": centre_edge_ratio(ev.error_map),
            }
        )
    return pd.DataFrame(rows).sort_values("order").reset_index(drop=True)


def paired(a: Evaluation, b: Evaluation, cfg: DictConfig) -> tuple[float, float, float]:
    """Mean PSNR difference a - b over validation images (seed-averaged) and its bootstrap interval."""
    d = a.psnr.mean(axis=0) - b.psnr.mean(axis=0)
    means = montecarlo_means(d, int(cfg.stats.n_resamples), int(cfg.stats.seed))
    tail = 100 * (1 - float(cfg.stats.confidence)) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(d.mean()), float(low), float(high)


def _verdict(ok: bool) -> str:
    return "**holds**" if ok else "**does not hold**"


def _diff(d: tuple[float, float, float]) -> str:
    return f"{d[0]:+.2f} dB (95% CI {d[1]:+.2f} to {d[2]:+.2f})"


def claim_lines(cfg: DictConfig, table: pd.DataFrame, ev: dict[str, Evaluation]) -> list[str]:
    """Claims (a)-(g), each as holds / does not hold with its numbers; a claim whose models did not
    all finish says so."""
    c = cfg.task.claims
    by = table.set_index("model")
    lines = []

    def need(*models: str) -> str | None:
        absent = [m for m in models if m not in ev]
        return f"not tested: {', '.join(absent)} not trained (in this run's grid or finished)" if absent else None

    unets = table[table.family == "unet"].sort_values("depth")
    if len(unets) >= 3:
        rho = float(spearmanr(unets.depth, unets.psnr).statistic)
        values = ", ".join(f"{r.label} {r.psnr:.2f}" for r in unets.itertuples())
        lines.append(
            f"(a) PSNR rises with U-Net depth: {_verdict(rho >= float(c.depth_rank_correlation))} "
            f"(Spearman rho = {rho:.2f}, threshold {float(c.depth_rank_correlation)}; {values} dB)"
        )
    else:
        lines.append("(a) PSNR rises with U-Net depth: not tested: fewer than 3 U-Net depths finished")
    if (why := need("unet1_coordgate", "unet6")) is None:
        d = paired(ev["unet1_coordgate"], ev["unet6"], cfg)
        ratio = by.n_params["unet6"] / by.n_params["unet1_coordgate"]
        lines.append(
            f"(b) U-Net(1) + CoordGate beats U-Net(6) with about 60x fewer parameters: {_verdict(d[1] > 0)} "
            f"(difference {_diff(d)}; {ratio:.0f}x fewer parameters: "
            f"{by.n_params['unet1_coordgate']:,} vs {by.n_params['unet6']:,})"
        )
    else:
        lines.append(f"(b) U-Net(1) + CoordGate beats U-Net(6) with about 60x fewer parameters: {why}")
    if (why := need("unet6_coordgate", "unet1_coordgate")) is None:
        d = paired(ev["unet6_coordgate"], ev["unet1_coordgate"], cfg)
        lines.append(
            f"(c) U-Net(6) + CoordGate beats U-Net(1) + CoordGate: {_verdict(d[1] > 0)} (difference {_diff(d)})"
        )
    else:
        lines.append(f"(c) U-Net(6) + CoordGate beats U-Net(1) + CoordGate: {why}")
    if (why := need("coordconv_unet6", "unet6")) is None:
        d = paired(ev["coordconv_unet6"], ev["unet6"], cfg)
        tol = float(c.coordconv_tolerance_db)
        lines.append(
            f"(d) CoordConv-UNet(6) performs about like U-Net(6): {_verdict(abs(d[0]) <= tol)} "
            f"(difference {_diff(d)}; tolerance +-{tol} dB)"
        )
    else:
        lines.append(f"(d) CoordConv-UNet(6) performs about like U-Net(6): {why}")
    if (why := need("multiwiener6", "unet6", "unet1_coordgate")) is None:
        over_unet = paired(ev["multiwiener6"], ev["unet6"], cfg)
        over_gate = paired(ev["multiwiener6"], ev["unet1_coordgate"], cfg)
        ok = over_unet[1] > 0 and over_gate[0] < 0
        lines.append(
            f"(e) MultiWienerNet(6) beats U-Net(6) but not U-Net(1) + CoordGate: {_verdict(ok)} "
            f"(minus U-Net(6): {_diff(over_unet)}; minus U-Net(1) + CoordGate: {_diff(over_gate)})"
        )
    else:
        lines.append(f"(e) MultiWienerNet(6) beats U-Net(6) but not U-Net(1) + CoordGate: {why}")
    if len(table) >= 3:
        rho = float(spearmanr(table.psnr, table.ssim).statistic)
        lines.append(
            f"(f) SSIM follows PSNR: {_verdict(rho >= float(c.depth_rank_correlation))} "
            f"(Spearman rho of the models' PSNR and SSIM = {rho:.2f}, threshold {float(c.depth_rank_correlation)})"
        )
    else:
        lines.append("(f) SSIM follows PSNR: not tested: fewer than 3 models finished")
    gates = table[table.family == "coordgate"]
    if len(gates):
        worst = float(gates.centre_edge_ratio.max())
        others = ", ".join(f"{r.label} {r.centre_edge_ratio:.2f}" for r in table.itertuples())
        lines.append(
            f"(g) CoordGate's error is much lower near the image centre: "
            f"{_verdict(worst <= float(c.centre_edge_ratio))} (centre/edge mean squared error ratio "
            f"at most {worst:.2f}, threshold {float(c.centre_edge_ratio)}; every model: {others})"
        )
    else:
        lines.append(
            "(g) CoordGate's error is much lower near the image centre: not tested: no CoordGate model finished"
        )
    return lines


def gate_gains(cfg: DictConfig, ev: dict[str, Evaluation]) -> list[str]:
    """What CoordGate adds to the plain U-Net of the same depth (paired over images): the effect
    the claims compare across depths, stated on its own."""
    lines = []
    for depth in (1, 6):
        gated, plain = f"unet{depth}_coordgate", f"unet{depth}"
        if gated in ev and plain in ev:
            d = paired(ev[gated], ev[plain], cfg)
            lines.append(f"CoordGate on U-Net({depth}): {_diff(d)} over the plain U-Net({depth})")
    return lines


def markdown(table: pd.DataFrame, head: str, blurred_psnr: float, blurred_ssim: float, n_val: int, missing) -> str:
    lines = [
        f"**{head}**",
        "",
        f"Validation PSNR and SSIM over {n_val} images (mean, 95% bootstrap interval over images; "
        "SD over seeds when there are several). Centre/edge: mean squared error within r <= 1/3 of the "
        "centre over that beyond r >= 2/3 (r = 1 at the corners).",
        "",
    ]
    rows = [["blurred input (no restoration)", 0, f"{blurred_psnr:.2f}", "", f"{blurred_ssim:.4f}", "", "", ""]]
    for r in table.itertuples():
        sd = f" (SD {r.psnr_seed_sd:.2f})" if r.n_seeds > 1 else ""
        rows.append(
            [r.label, f"{r.n_params:,}", f"{r.psnr:.2f}{sd}", f"{r.psnr_low:.2f} to {r.psnr_high:.2f}"]
            + [f"{r.ssim:.4f}", f"{r.ssim_low:.4f} to {r.ssim_high:.4f}", r.n_seeds, f"{r.centre_edge_ratio:.2f}"]
        )
    header = ["model", "parameters", "PSNR (dB)", "95% CI", "SSIM", "95% CI", "seeds", "centre/edge"]
    lines += markdown_table(header, rows, align="lrrlrlrr", pad_empty=False)
    if missing:
        lines += ["", f"INCOMPLETE: {len(missing)} job(s) not finished: " + "; ".join(map(str, missing))]
    return "\n".join(lines) + "\n"


def summary(head: str, md: str, claims: list[str], gains: list[str], psf_report: dict, missing) -> str:
    lines = [
        "# Deblurring with U-Nets and CoordGate: the CoordGate paper's Fig. 4 and 5",
        "",
        f"**{head}**",
        "",
        "## Claims",
        "",
        *[f"- {line}" for line in claims],
        "",
        "Differences are paired over validation images (95% bootstrap intervals); with one seed per model "
        "they do not include the variation between training runs. The lens is in focus at the centre, so "
        "every model's error is lower there: claim (g) is judged on the CoordGate models, the other "
        "models' ratios are given for comparison.",
        "",
        *[f"- {line}" for line in gains],
        "",
        "## Models",
        "",
        md.split("\n", 2)[2],
        "## The lens",
        "",
        f"Gaussian PSF, {psf_report['sigma_centre_px']} px at the centre to {psf_report['sigma_edge_px']} px "
        f"at the corners, {psf_report['kernel_size']}x{psf_report['kernel_size']} px kernels, applied "
        f"{psf_report['applied']}. A rank-{psf_report['basis_rank']} PSF basis approximates the field to "
        f"{psf_report['basis_field_relative_error']:.4f} (relative) and the blurred images (the first "
        f"{psf_report['basis_checked_on_images']}) to {psf_report['basis_blur_relative_error']:.4f}.",
    ]
    if missing:
        lines += ["", f"**INCOMPLETE RUN**: {len(missing)} job(s) had not finished."]
    return "\n".join(lines) + "\n"
