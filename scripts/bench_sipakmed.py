#!/usr/bin/env python
"""Training throughput of SiPaKMeD LakshyaNet: on-device augmentation vs the authors' file pipeline.

Three measurements, on synthetic cell images (an elliptic nucleus in an elliptic cytoplasm on a
textured background; the target is the nucleus centre), all in one process on the same data:

(a) ours: every base image lives on the device as one uint8 (or float16) tensor; each batch is
    index -> normalise -> warp (coordchannels.warp) -> append the arm's coordinate channels ->
    forward / backward / Adam. The 20 variants per image are recomputed, never stored.
(b) the authors' style: each augmented sample pre-written as its own 5 x H x W float32 .npy file
    and read back by a torch DataLoader with worker processes. Only a subset is written (the full
    set is about 105 GB per arm). With --baseline-cache cold (default) every file is dropped from
    the page cache after it is written and after each read, as it would be for a data set that
    does not fit in memory; `warm` measures the best case.
(c) does bf16 autocast change the result beyond noise? Train fp32 and AMP from the same seed on
    the same data, plus fp32 from a second seed as the noise yardstick, and compare loss curves
    and held-out R^2.

Throughput is training samples per second; the share of peak is the model's forward+backward
FLOPs (counted by torch.utils.flop_counter: convolutions and the linear layer; batch norm, ReLU,
pooling and Adam are memory-bound and not counted) times samples/s over the FLOP/s of a large
matmul measured on the same device in the same precision.

Examples:
    python scripts/bench_sipakmed.py --threads 2                     # CPU, small defaults
    python scripts/bench_sipakmed.py --device cuda --images 4023 --steps 200 \
        --baseline-samples 2000 --channels-last --amp --out results/bench_sipakmed.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import r2_score
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from coordchannels.channels import N_EXTRA
from coordchannels.components import group_files
from coordchannels.environment import hardware
from coordchannels.io import save_npy, write_text
from coordchannels.models import LakshyaNet
from coordchannels.sipakmed.loader import SipakmedTaskData
from coordchannels.sipakmed.synthetic import synthetic_cells
from coordchannels.sipakmed.warp import variant_params
from coordchannels.tables import markdown_table
from coordchannels.train import Execution, train_step

# The arms the benchmark compares, and their channels, from their config files (conf/arm).
ARM_CHANNELS = {name: str(group_files("arm")[name].channels) for name in ("control", "study")}


# ---------------------------------------------------------------------------------------------
# Arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--images", type=int, default=64, help="synthetic base images")
    p.add_argument("--variants", type=int, default=20, help="augmented variants per image")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed training steps per pipeline and round; default 50 on cuda, 6 on cpu",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="alternating timed rounds, the best counts; default 3 on cuda, 2 on cpu",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps first (compile, cuDNN autotuning); default 5 on cuda, 1 on cpu",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--arm", default="study", choices=sorted(ARM_CHANNELS))
    p.add_argument("--reduced", action="store_true", help="Reduced Parameter LakshyaNet")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", action="store_true", help="bf16 autocast in (a) and (b)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode; 'reduce-overhead' adds CUDA graphs")
    p.add_argument(
        "--baseline-samples",
        type=int,
        default=None,
        help="files written for (b); default 2000 on cuda, 128 on cpu; 0 skips (b)",
    )
    p.add_argument("--baseline-cache", default="cold", choices=["cold", "warm"])
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers; default min(4, cores)")
    p.add_argument("--tmp-dir", default=None, help="where (b) writes its files; default system temp")
    p.add_argument(
        "--amp-check-steps",
        type=int,
        default=None,
        help="training steps per run in (c); default 300 on cuda, 30 on cpu; 0 skips (c)",
    )
    p.add_argument(
        "--amp-check-size", type=int, default=None, help="image side in (c); default --size on cuda, 64 on cpu"
    )
    p.add_argument(
        "--amp-check-batch", type=int, default=None, help="batch in (c); default --batch-size on cuda, 16 on cpu"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=None, help="write results to OUT (.json) and its .md sibling")
    args = p.parse_args(argv)
    return resolve_defaults(args)


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the device-dependent defaults: big enough to mean something on a GPU, short on a CPU."""
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    gpu = args.device == "cuda"
    for name, on_gpu, on_cpu in (("steps", 50, 6), ("rounds", 3, 2), ("warmup", 5, 1)):
        if getattr(args, name) is None:
            setattr(args, name, on_gpu if gpu else on_cpu)
    if args.baseline_samples is None:
        args.baseline_samples = 2000 if gpu else 128
    if args.workers is None:
        args.workers = min(4, os.cpu_count() or 1)
    if args.amp_check_steps is None:
        args.amp_check_steps = 300 if gpu else 30
    if args.amp_check_size is None:
        args.amp_check_size = args.size if gpu else 64
    if args.amp_check_batch is None:
        args.amp_check_batch = args.batch_size if gpu else 16
    for name in ("images", "variants", "steps", "rounds", "batch_size", "size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    return args


# ---------------------------------------------------------------------------------------------
# The on-device pipeline (a)


@dataclass
class DeviceData:
    """The project's SiPaKMeD loader (coordchannels.sipakmed.SipakmedTaskData) over synthetic
    cells, so that (a) times exactly the per-batch path training uses: normalise, warp, channels."""

    task: SipakmedTaskData

    @property
    def n_samples(self) -> int:
        return len(self.task)

    @property
    def channels(self) -> str:
        return self.task.channels

    @property
    def device(self) -> torch.device:
        return self.task.images.device

    @property
    def targets(self) -> torch.Tensor:
        """(N * V, 2) targets of every sample, in sample order."""
        return self.task.targets(torch.arange(self.n_samples, device=self.device))

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model input (B, 3 + k, H, W) float32 and targets (B, 2) for sample ids `idx`."""
        return self.task.inputs(idx), self.task.targets(idx)


def device_data(
    images: torch.Tensor, centres: torch.Tensor, args, device: torch.device, n_variants: int, seed: int
) -> DeviceData:
    """Base images (uint8) and their statistics on the device; variants warped per batch."""
    n, _, h, w = images.shape
    flat = images.float().flatten(1)
    task = SipakmedTaskData(
        images=images.to(device),
        mean=flat.mean(dim=1).to(device),
        std=flat.std(dim=1).clamp_min(1e-6).to(device),
        box=torch.tensor([[0, 0, h, w]] * n, device=device),  # synthetic cells fill the frame
        centres=centres.double().to(device),
        params=torch.from_numpy(variant_params(n, n_variants, seed)).to(device),
        image_fold=np.ones(n, dtype=np.int64),
        n_variants=n_variants,
        channels=ARM_CHANNELS[args.arm],
    )
    return DeviceData(task)


def index_stream(n_samples: int, batch: int, seed: int, device: torch.device):
    """Endless shuffled batches of sample ids (a fresh permutation per epoch), made on the device."""
    gen = torch.Generator(device=device).manual_seed(seed)
    while True:
        perm = torch.randperm(n_samples, generator=gen, device=device)
        for start in range(0, n_samples - batch + 1, batch):
            yield perm[start : start + batch]


# ---------------------------------------------------------------------------------------------
# The authors' file pipeline (b)


def _drop_from_cache(path: Path) -> None:
    """Ask the kernel to forget a file's pages, so the next read comes from the disk."""
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class SampleFiles(Dataset):
    """One augmented 5-channel sample per .npy file, as the authors' training scripts read them."""

    def __init__(self, paths: list[Path], targets: np.ndarray, cold: bool):
        self.paths, self.targets, self.cold = paths, targets, cold

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.load(self.paths[i]))
        if self.cold:
            _drop_from_cache(self.paths[i])
        return x, torch.from_numpy(self.targets[i])


def write_sample_files(
    data: DeviceData, ids: torch.Tensor, folder: Path, cold: bool
) -> tuple[list[Path], np.ndarray, float]:
    """Write each sample's full model input as float32 .npy; returns paths, targets, seconds taken."""
    t0 = time.perf_counter()
    paths, targets = [], []
    for chunk in ids.split(64):
        x, y = data.batch(chunk.to(data.device))
        x, y = x.float().cpu().numpy(), y.cpu().numpy()
        for sample, target, sid in zip(x, y, chunk.tolist()):
            path = folder / f"sample_{sid:06d}.npy"
            save_npy(path, sample)
            if cold:
                _drop_from_cache(path)
            paths.append(path)
            targets.append(target)
    return paths, np.stack(targets).astype(np.float32), time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Training step, timing, FLOPs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def execution(args, device: torch.device, amp: bool) -> Execution:
    """The trainer's own settings for how batches run (train.precision, train.channels_last)."""
    return Execution(device.type, "bf16" if amp else "fp32", args.channels_last)


def make_model(args, size: int, device: torch.device, seed: int, run: Execution):
    torch.manual_seed(seed)
    in_ch = 3 + N_EXTRA["2d"][ARM_CHANNELS[args.arm]]
    model = run.place(LakshyaNet(in_ch, reduced=args.reduced, out_scale=255.0, size=size).to(device))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, opt


def make_step(model, opt, mu: torch.Tensor, sd: torch.Tensor, run: Execution):
    """The trainer's step (coordchannels.train.train_step); returns (loss, predictions) without syncing."""
    return lambda x, y: train_step(model, opt, x, y, mu, sd, run)


def model_flops_per_sample(args, size: int) -> float:
    """Forward + backward FLOPs of one sample, counted on the CPU with a throwaway model."""
    in_ch = 3 + N_EXTRA["2d"][ARM_CHANNELS[args.arm]]
    model = LakshyaNet(in_ch, reduced=args.reduced, size=size)
    x = torch.randn(1, in_ch, size, size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    return float(counter.get_total_flops())


def measure_peak_flops(device: torch.device, amp: bool) -> tuple[float, str]:
    """FLOP/s of a large square matmul in the training precision: the device's practical peak.

    fp32 on CUDA is measured with TF32 allowed, since cuDNN runs fp32 convolutions in TF32 by
    default (torch.backends.cudnn.allow_tf32).
    """
    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if amp else torch.float32
    label = "bf16" if amp else ("tf32" if device.type == "cuda" else "fp32")
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if device.type == "cuda" else previous)
    try:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        reps = 20 if device.type == "cuda" else 3
        (a @ b)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            c = a @ b
        sync(device)
        elapsed = time.perf_counter() - t0
        del a, b, c
    finally:
        torch.set_float32_matmul_precision(previous)
    return 2.0 * n**3 * reps / elapsed, f"{label} matmul {n}x{n}"


@dataclass
class Pipeline:
    """An endless source of (input, target) batches on the device and the training step fed by it."""

    name: str
    batches: Iterator
    step: Callable
    extra: dict = field(default_factory=dict)
    data_only_s: float = float("nan")
    first_step_s: float = float("nan")
    round_s: list[float] = field(default_factory=list)


def warm_up(pipe: Pipeline, warmup: int, device: torch.device) -> None:
    """Untimed steps (compilation, cuDNN autotuning, worker start-up); records the first one's time."""
    for i in range(warmup):
        t0 = time.perf_counter()
        pipe.step(*next(pipe.batches))
        sync(device)
        if i == 0:
            pipe.first_step_s = time.perf_counter() - t0


def timed_steps(pipe: Pipeline, steps: int, device: torch.device) -> float:
    """Seconds for `steps` training steps, synchronising once at the end rather than per step."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss, _ = pipe.step(*next(pipe.batches))
    loss.item()
    sync(device)
    return time.perf_counter() - t0


def timed_batches(batches, steps: int, device: torch.device) -> float:
    """Seconds to produce `steps` batches on the device, with no model."""
    next(batches)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, _ = next(batches)
    x.sum().item()
    sync(device)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# (a), (b), (c)


def prepare_model(args, size: int, device: torch.device, seed: int, data: DeviceData, amp: bool):
    run = execution(args, device, amp)
    model, opt = make_model(args, size, device, seed, run)
    fwd = torch.compile(model, mode=args.compile_mode) if args.compile else model
    # Standardise with the first 10000 samples' targets, as the scripts do.
    head = data.targets[:10000]
    return model, make_step(fwd, opt, head.mean(dim=0), head.std(dim=0), run)


def ours_pipeline(args, data: DeviceData, device: torch.device) -> Pipeline:
    """(a): shuffled sample ids -> DeviceData.batch, all on the device."""

    def batches():
        for idx in index_stream(data.n_samples, args.batch_size, args.seed, device):
            yield data.batch(idx)

    data_only_s = timed_batches(batches(), args.steps, device)
    _, step = prepare_model(args, args.size, device, args.seed, data, args.amp)
    return Pipeline("ours: on-device warp", batches(), step, data_only_s=data_only_s)


def files_pipeline(args, data: DeviceData, device: torch.device, stack: contextlib.ExitStack) -> Pipeline:
    """(b): a random subset of samples written as .npy files, read by a DataLoader with workers.

    The temporary folder lives as long as `stack`.
    """
    cold = args.baseline_cache == "cold"
    count = min(args.baseline_samples, data.n_samples)
    if count < args.batch_size:
        raise SystemExit(f"--baseline-samples {count} is smaller than one batch ({args.batch_size})")
    sample_bytes = (3 + N_EXTRA["2d"][data.channels]) * args.size**2 * 4
    tmp_root = Path(args.tmp_dir or tempfile.gettempdir())
    stat = os.statvfs(tmp_root)
    if count * sample_bytes > 0.5 * stat.f_bavail * stat.f_frsize:
        raise SystemExit(
            f"(b) needs {count * sample_bytes / 1e9:.1f} GB in {tmp_root}, more than half "
            f"of its {stat.f_bavail * stat.f_frsize / 1e9:.1f} GB free; lower --baseline-samples"
        )
    gen = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randperm(data.n_samples, generator=gen)[:count].sort().values
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_sipakmed_", dir=tmp_root)))
    paths, targets, write_s = write_sample_files(data, ids, folder, cold)
    loader = DataLoader(
        SampleFiles(paths, targets, cold),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(args.seed),
    )

    def batches():
        while True:  # cycle over the subset as over epochs
            for x, y in loader:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    data_only_s = timed_batches(batches(), args.steps, device)
    _, step = prepare_model(args, args.size, device, args.seed, data, args.amp)
    extra = {
        "files": count,
        "file_mb": sample_bytes / 1e6,
        "write_s": write_s,
        "write_ms_per_sample": 1000 * write_s / count,
        "cache": args.baseline_cache,
        "workers": args.workers,
        "full_dataset_gb_per_arm": 80460 * sample_bytes / 1e9,
    }
    name = f"baseline: .npy files + DataLoader({args.workers} workers, {args.baseline_cache} cache)"
    return Pipeline(name, batches(), step, extra, data_only_s=data_only_s)


def run_benchmark(args, data: DeviceData, device: torch.device) -> list[dict]:
    """Time the pipelines in alternating rounds, so that a burst of load from other processes
    hits both rather than one; each pipeline's best round is its throughput."""
    with contextlib.ExitStack() as stack:
        pipes = [ours_pipeline(args, data, device)]
        if args.baseline_samples > 0:
            pipes.append(files_pipeline(args, data, device, stack))
        for pipe in pipes:
            warm_up(pipe, args.warmup, device)
        for r in range(args.rounds):
            for pipe in pipes:
                pipe.round_s.append(timed_steps(pipe, args.steps, device))
                rate = args.steps * args.batch_size / pipe.round_s[-1]
                print(f"  round {r + 1}/{args.rounds} {pipe.name}: {rate:.1f} samples/s", flush=True)
    n = args.steps * args.batch_size
    return [
        {
            "name": p.name,
            "samples_per_s": n / min(p.round_s),
            "samples_per_s_median": n / float(np.median(p.round_s)),
            "step_ms": 1000 * min(p.round_s) / args.steps,
            "data_only_samples_per_s": n / p.data_only_s,
            "first_step_s": p.first_step_s,
            "round_s": p.round_s,
            **p.extra,
        }
        for p in pipes
    ]


def train_curve(args, data: DeviceData, test: DeviceData, device: torch.device, amp: bool, seed: int) -> dict:
    """Loss per step and held-out R^2 (mean of h and k) after `amp_check_steps` steps."""
    model, step = prepare_model(args, args.amp_check_size, device, seed, data, amp)
    stream = index_stream(data.n_samples, args.amp_check_batch, seed, device)
    losses = []
    model.train()
    for _ in range(args.amp_check_steps):
        loss, _ = step(*data.batch(next(stream)))
        losses.append(loss)
    model.eval()
    preds = []
    run = execution(args, device, amp)
    with torch.no_grad(), run.autocast():
        for idx in torch.arange(test.n_samples, device=device).split(64):
            preds.append(model(run.prepare(test.batch(idx)[0])).float())
    pred = torch.cat(preds).cpu().numpy()
    truth = test.targets.cpu().numpy()
    r2 = [float(r2_score(truth[:, j], pred[:, j])) for j in range(2)]
    return {
        "amp": amp,
        "seed": seed,
        "loss": torch.stack(losses).cpu().tolist(),
        "r2_h": r2[0],
        "r2_k": r2[1],
        "r2": float(np.mean(r2)),
    }


def tail_mean(values: list[float], share: float = 0.25) -> float:
    k = max(1, int(len(values) * share))
    return float(np.mean(values[-k:]))


def amp_check(args, device: torch.device) -> dict:
    """Same seed fp32 vs AMP, and fp32 with another seed as the yardstick of run-to-run noise."""
    size = args.amp_check_size
    images, centres = synthetic_cells(args.images, size, args.seed)
    test_images, test_centres = synthetic_cells(max(8, args.images // 4), size, args.seed + 1000)
    data = device_data(images, centres, args, device, args.variants, args.seed)
    test = device_data(test_images, test_centres, args, device, 2, args.seed + 1000)
    fp32 = train_curve(args, data, test, device, amp=False, seed=args.seed)
    bf16 = train_curve(args, data, test, device, amp=True, seed=args.seed)
    other = train_curve(args, data, test, device, amp=False, seed=args.seed + 1)
    curve = lambda a, b: float(np.mean(np.abs(np.subtract(a["loss"], b["loss"]))))  # noqa: E731
    summary = {
        "steps": args.amp_check_steps,
        "size": size,
        "batch": args.amp_check_batch,
        "final_loss_fp32": tail_mean(fp32["loss"]),
        "final_loss_amp": tail_mean(bf16["loss"]),
        "final_loss_fp32_seed2": tail_mean(other["loss"]),
        "r2_fp32": fp32["r2"],
        "r2_amp": bf16["r2"],
        "r2_fp32_seed2": other["r2"],
        "loss_curve_mad_amp_vs_fp32": curve(fp32, bf16),
        "loss_curve_mad_seed_vs_seed": curve(fp32, other),
        "r2_diff_amp": bf16["r2"] - fp32["r2"],
        "r2_diff_seed": other["r2"] - fp32["r2"],
    }
    within = (
        abs(summary["r2_diff_amp"]) <= abs(summary["r2_diff_seed"])
        and summary["loss_curve_mad_amp_vs_fp32"] <= summary["loss_curve_mad_seed_vs_seed"]
    )
    summary["verdict"] = (
        "AMP differs from fp32 less than two fp32 seeds differ: within noise"
        if within
        else "AMP differs from fp32 more than two fp32 seeds differ on some measure: check"
    )
    summary["runs"] = {"fp32": fp32, "amp": bf16, "fp32_seed2": other}
    return summary


# ---------------------------------------------------------------------------------------------
# Report


def markdown(report: dict) -> str:
    env, rows = report["environment"], report["throughput"]
    lines = [
        f"# SiPaKMeD LakshyaNet training throughput ({env['device_name']})",
        "",
        f"settings: {report['settings']}",
        "",
        f"peak: {env['peak_flops'] / 1e12:.3f} TFLOP/s ({env['peak_what']}); "
        f"model: {env['flops_per_sample'] / 1e9:.3f} GFLOP per sample (forward + backward)",
        "",
        f"best of {report['settings']['rounds']} alternating rounds of {report['settings']['steps']} steps "
        "(median in brackets)",
        "",
        *markdown_table(
            ["pipeline", "train samples/s", "ms/step", "share of peak", "data only samples/s"],
            [
                [
                    r["name"],
                    f"{r['samples_per_s']:.1f} ({r['samples_per_s_median']:.1f})",
                    f"{r['step_ms']:.1f}",
                    f"{100 * r['share_of_peak']:.2f}%",
                    f"{r['data_only_samples_per_s']:.1f}",
                ]
                for r in rows
            ],
        ),
    ]
    for r in rows:
        if "files" in r:
            lines += [
                "",
                f"baseline files: {r['files']} x {r['file_mb']:.2f} MB written in {r['write_s']:.1f} s "
                f"({r['write_ms_per_sample']:.1f} ms each); the full set would be "
                f"{r['full_dataset_gb_per_arm']:.0f} GB per arm",
            ]
    if "ratio" in report:
        lines += ["", f"ours / baseline: **{report['ratio']:.2f}x** training samples/s"]
    if "amp_check" in report:
        a, seed = report["amp_check"], report["settings"]["seed"]
        lines += [
            "",
            f"## AMP (bf16) vs fp32: {a['steps']} steps, {a['size']} px, batch {a['batch']}",
            "",
            *markdown_table(
                ["run", "loss (last 25%)", "test R^2"],
                [
                    [f"fp32 seed {seed}", f"{a['final_loss_fp32']:.4f}", f"{a['r2_fp32']:.4f}"],
                    [f"bf16 seed {seed}", f"{a['final_loss_amp']:.4f}", f"{a['r2_amp']:.4f}"],
                    [f"fp32 seed {seed + 1}", f"{a['final_loss_fp32_seed2']:.4f}", f"{a['r2_fp32_seed2']:.4f}"],
                ],
            ),
            "",
            f"mean |loss difference| per step: AMP vs fp32 {a['loss_curve_mad_amp_vs_fp32']:.4f}, "
            f"seed vs seed {a['loss_curve_mad_seed_vs_seed']:.4f}; R^2 difference: AMP "
            f"{a['r2_diff_amp']:+.4f}, seed {a['r2_diff_seed']:+.4f}",
            "",
            f"verdict: {a['verdict']}",
        ]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: str) -> None:
    path = Path(out)
    json_path = path if path.suffix == ".json" else path.with_suffix(".json")
    write_text(json_path, json.dumps(report, indent=2) + "\n")
    write_text(json_path.with_suffix(".md"), markdown(report))
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}")


def environment(args, device: torch.device) -> dict:
    return hardware(device)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "tmp_dir")}
    print(f"settings: {settings}", flush=True)

    env = environment(args, device)
    env["peak_flops"], env["peak_what"] = measure_peak_flops(device, args.amp)
    env["flops_per_sample"] = model_flops_per_sample(args, args.size)
    print(
        f"device {env['device_name']}: peak {env['peak_flops'] / 1e12:.3f} TFLOP/s ({env['peak_what']}), "
        f"model {env['flops_per_sample'] / 1e9:.3f} GFLOP/sample fwd+bwd",
        flush=True,
    )

    t0 = time.perf_counter()
    images, centres = synthetic_cells(args.images, args.size, args.seed)
    data = device_data(images, centres, args, device, args.variants, args.seed)
    print(f"{args.images} synthetic images x {args.variants} variants in {time.perf_counter() - t0:.1f} s", flush=True)

    throughput = run_benchmark(args, data, device)
    for row in throughput:
        row["share_of_peak"] = row["samples_per_s"] * env["flops_per_sample"] / env["peak_flops"]
    report = {"settings": settings, "environment": env, "throughput": throughput}
    if len(throughput) == 2:
        report["ratio"] = throughput[0]["samples_per_s"] / throughput[1]["samples_per_s"]
    del data
    if args.amp_check_steps > 0:
        print("(c) AMP check: 3 short training runs ...", flush=True)
        report["amp_check"] = amp_check(args, device)

    print()
    print(markdown(report))
    if args.out:
        write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
