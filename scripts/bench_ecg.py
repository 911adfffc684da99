"""ECG input pipeline benchmark: cached features (ours) vs a median filter per sample per epoch
(the authors' scripts), timed on the same samples, the same model and the same machine.

    python scripts/bench_ecg.py [--samples 2000] [--epochs 2] [--threads 1]

(a) ours: `ecg.chunk_features` once (median filter + stride for every channel of every sample),
    then epochs of `train.train_one_epoch` over the cached (N, 3, 500) tensor;
(b) scripts' way: a Dataset whose __getitem__ builds the study channel and runs
    scipy.signal.medfilt on every channel of that sample, then keeps every 10th sample, inside
    a DataLoader, so the filter is recomputed for every sample in every epoch.
Both train NimeshaNet on the study arm with Adam, batch 32. Uses the real augmented signals in
data/processed/ecg/augmented.npy when present, else random signals of the same shape. Prints the
per-epoch times, the ratio, and the projection to the full ECG arm (20 jobs x 15 epochs over
24,200 samples: 19,360 trained and 4,840 evaluated per epoch).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import scipy.signal
import torch

from coordchannels.channels import extra_channels_1d
from coordchannels.ecg.features import chunk_features
from coordchannels.ecg.loader import EcgTaskData
from coordchannels.models import NimeshaNet
from coordchannels.train import predict, train_one_epoch
from coordchannels.train.device import tune_malloc

FULL_SAMPLES, FULL_TRAIN, JOBS, EPOCHS = 24_200, 19_360, 20, 15


def load_signals(path: Path, n: int, seed: int) -> tuple[np.ndarray, str]:
    if path.is_file():
        data = np.load(path, mmap_mode="r")
        idx = np.sort(np.random.default_rng(seed).choice(len(data), size=min(n, len(data)), replace=False))
        return np.asarray(data[idx], dtype=np.float32), f"real VFDB variants from {path}"
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2, 5000)).astype(np.float32), "random signals (no processed VFDB found)"


class PerSampleFilter(torch.utils.data.Dataset):
    """The scripts' input pipeline: channel, median filter and stride redone at every access."""

    def __init__(self, signals: np.ndarray, targets: np.ndarray):
        self.signals, self.targets = signals, targets

    def __len__(self) -> int:
        return len(self.signals)

    def __getitem__(self, i: int):
        leads = self.signals[i].astype(np.float64)
        study = extra_channels_1d(torch.from_numpy(leads[None]), "intensity_weighted_coords")[0].numpy()
        channels = np.concatenate([leads, study]).astype(np.float32)
        filtered = np.stack([scipy.signal.medfilt(c, 11)[::10] for c in channels])
        return torch.from_numpy(filtered), torch.tensor([self.targets[i]], dtype=torch.float32)


def model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = NimeshaNet(in_channels=3)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def epoch_scripts_way(dataset: PerSampleFilter, seed: int, mean: float, std: float) -> float:
    model, optimizer = model_and_optimizer(seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    start = time.perf_counter()
    model.train()
    for x, y in loader:
        loss = torch.nn.functional.mse_loss((model(x) - mean) / std, (y - mean) / std)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def epoch_ours(data: EcgTaskData, seed: int, mean: torch.Tensor, std: torch.Tensor) -> float:
    model, optimizer = model_and_optimizer(seed)
    idx = torch.arange(len(data.x))
    start = time.perf_counter()
    train_one_epoch(model, optimizer, data, idx, mean, std, 32, torch.Generator().manual_seed(seed))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per pipeline (median reported)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augmented", default="data/processed/ecg/augmented.npy")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_malloc()  # as the trainer does; applies to both pipelines (same process)

    signals, source = load_signals(Path(args.augmented), args.samples, args.seed)
    targets = np.random.default_rng(args.seed).uniform(0, 20, len(signals)).astype(np.float32)
    n = len(signals)
    print(f"{n} samples: {source}; torch threads {args.threads}")

    start = time.perf_counter()
    feats = chunk_features(signals, 11, 10, 20.0)
    features_s = time.perf_counter() - start
    x = torch.from_numpy(np.concatenate([feats["leads.npy"], feats["extra_intensity_weighted_coords.npy"]], axis=1))
    data = EcgTaskData(x=x, y=torch.from_numpy(targets[:, None]), sample_fold=np.ones(n, dtype=np.int64))
    mean, std = data.y.mean(0), data.y.std(0)

    # Sanity: both pipelines feed the model the same numbers.
    reference = PerSampleFilter(signals, targets)[0][0]
    assert torch.allclose(reference, x[0], atol=1e-5), "cached features differ from the per-sample pipeline"

    ours = sorted(epoch_ours(data, args.seed, mean, std) for _ in range(args.epochs))[args.epochs // 2]
    start = time.perf_counter()
    predict(NimeshaNet(in_channels=3), data, torch.arange(n), 256)
    eval_s = time.perf_counter() - start
    theirs = sorted(
        epoch_scripts_way(reference_ds := PerSampleFilter(signals, targets), args.seed, float(mean), float(std))
        for _ in range(args.epochs)
    )[args.epochs // 2]
    del reference_ds

    per = 1.0 / n
    full_ours = features_s * FULL_SAMPLES * per + JOBS * EPOCHS * (
        ours * FULL_TRAIN * per + eval_s * (FULL_SAMPLES - FULL_TRAIN) * per
    )
    full_theirs = JOBS * EPOCHS * (theirs * FULL_TRAIN * per + eval_s * (FULL_SAMPLES - FULL_TRAIN) * per)
    # The scripts also filter the evaluated samples every epoch; counting only training keeps
    # the baseline conservative.
    print()
    print(f"{'':38s}{'ours (cached)':>16s}{'scripts (per sample)':>22s}{'ratio':>8s}")
    print(f"{'features, once (s)':38s}{features_s:16.2f}{'-':>22s}")
    print(f"{f'training epoch over {n} samples (s)':38s}{ours:16.2f}{theirs:22.2f}{theirs / ours:8.1f}x")
    print(
        f"{'full ECG arm, one core, projected (min)':38s}{full_ours / 60:16.1f}{full_theirs / 60:22.1f}"
        f"{full_theirs / full_ours:8.1f}x"
    )
    print(f"{'full ECG arm, 2 jobs on 2 cores (min)':38s}{full_ours / 120:16.1f}{full_theirs / 120:22.1f}")


if __name__ == "__main__":
    main()
