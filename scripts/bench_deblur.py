#!/usr/bin/env python
"""Training throughput of the deblurring task's models (task=deblur): images per second and share of
the machine's measured fp32 peak, each model against U-Net(1) as the baseline.

Each model trains on random (batch, 1, S, S) images for `--steps` Adam steps after `--warmup`
(forward, MSE, backward, step), in one process with `--threads` torch threads (the training jobs
use 1). FLOPs per image are counted by torch.utils.flop_counter (convolutions, transposed
convolutions and the FFTs' matrix products are counted; ReLU, pooling, the gates' products and
Adam are memory-bound and not); the peak is a large fp32 matmul on the same threads
(bench_sipakmed.measure_peak_flops). The models and sizes are those of the composed config, so
Hydra overrides after `--` change them (e.g. `-- task.data.patch_size=128`).

Example:
    python scripts/bench_deblur.py --out results/benchmarks/deblur_train_cpu
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf, open_dict
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sipakmed import measure_peak_flops  # noqa: E402  (the one peak measurement)
from coordchannels.deblur.psf import Lens, psf_field  # noqa: E402
from coordchannels.deblur.unet import n_parameters  # noqa: E402
from coordchannels.environment import hardware, package_versions  # noqa: E402
from coordchannels.io import write_text  # noqa: E402
from coordchannels.train import build_model  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (the training jobs use 1)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: train.batch_size)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="passes over all models; the fastest pass of each counts")
    p.add_argument("--out", type=Path, default=None, help="write <out>.md and <out>.json")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the task=deblur config")
    return p.parse_args(argv)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from coordchannels.components import complete_arms

    with initialize_config_module(config_module="coordchannels.conf", version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["task=deblur", *overrides])
    complete_arms(cfg)
    return cfg


def time_steps(model: torch.nn.Module, x: torch.Tensor, steps: int, warmup: int) -> float:
    """Seconds per training step (forward, MSE to the input, backward, Adam)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def flops_per_image(model: torch.nn.Module, x: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        torch.nn.functional.mse_loss(model(x), x).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = compose(args.overrides)
    torch.set_num_threads(args.threads)
    size = int(cfg.task.data.patch_size)
    batch = args.batch or int(cfg.train.batch_size)
    # On a shared machine the load changes from second to second: every model is timed in each of
    # `rounds` passes, with the peak measured at the start of each pass, and the fastest pass of each
    # (and the highest peak) count, the closest to what an idle machine gives.
    peaks, best = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        psf_file = Path(tmp) / "psf.npy"
        np.save(psf_file, psf_field(size, Lens.from_config(cfg.task.data.psf)).astype(np.float32))
        with open_dict(cfg):
            cfg.task.models.multiwiener6.net.psf_file = str(psf_file)
        models = {}
        for name, model_cfg in cfg.task.models.items():
            torch.manual_seed(0)
            models[name] = build_model(model_cfg, cfg.arms.none, 1)
        x = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0))
        flops = {name: flops_per_image(model, x) for name, model in models.items()}
        for r in range(args.rounds):
            peak, peak_what = measure_peak_flops(torch.device("cpu"), amp=False)
            peaks.append(peak)
            for name, model in models.items():
                seconds = time_steps(model, x, args.steps, args.warmup)
                best[name] = min(best.get(name, float("inf")), seconds)
                print(f"round {r + 1}: {cfg.task.models[name].label}: {batch / seconds:.1f} images/s", flush=True)
    peak = max(peaks)
    rows = [
        {
            "model": str(cfg.task.models[name].label),
            "parameters": n_parameters(model),
            "images_per_s": batch / best[name],
            "gflop_per_image": flops[name] / 1e9,
            "share_of_peak": batch / best[name] * flops[name] / peak,
        }
        for name, model in models.items()
    ]
    base = rows[0]["images_per_s"]
    for r in rows:
        r["ratio_to_baseline"] = r["images_per_s"] / base
    settings = {
        "threads": args.threads,
        "batch": batch,
        "patch_size": size,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
    }
    report = {
        "settings": settings,
        "overrides": args.overrides,
        "peak_flops": peak,
        "peak_flops_per_round": peaks,
        "peak_what": peak_what,
        "hardware": hardware("cpu"),
        "packages": package_versions(),
        "config_net": OmegaConf.to_container(cfg.task.net, resolve=True),
        "rows": rows,
    }
    text = markdown(report)
    print(text)
    if args.out:
        write_text(args.out.with_suffix(".md"), text)
        write_text(args.out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    return report


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"# Deblurring models: training throughput on {report['hardware'].get('cpu', 'this CPU')}",
        "",
        f"{s['threads']} torch thread(s), batches of {s['batch']} images of {s['patch_size']}x{s['patch_size']} px, "
        f"fp32, {s['steps']} timed steps after {s['warmup']} warm-up steps, the fastest of {s['rounds']} passes "
        f"(`python scripts/bench_deblur.py`). Peak: {report['peak_flops'] / 1e9:.1f} GFLOP/s, the highest of the "
        f"passes ({', '.join(f'{p / 1e9:.1f}' for p in report['peak_flops_per_round'])}; {report['peak_what']}, same threads). "
        "Share of peak = images/s x counted FLOPs per image / peak. The machine was shared with other "
        "runs while this was measured: the ratios are the robust part.",
        "",
        "| model | parameters | images/s | x U-Net(1) | GFLOP/image (fwd+bwd) | share of fp32 peak |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {r['images_per_s']:.1f} | {r['ratio_to_baseline']:.2f} | "
            f"{r['gflop_per_image']:.3f} | {100 * r['share_of_peak']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
