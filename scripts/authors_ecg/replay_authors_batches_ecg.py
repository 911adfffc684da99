"""Our training step, fed the authors' exact batch order, on their data (issue 16).

The authors' training script shuffles with a DataLoader whose torch.Generator (seeded 42 once per
job) is shared by the train and test loaders and drawn on across epochs. This script rebuilds
that index stream with the same torch DataLoader machinery over index-only datasets (the sampler
never looks at the data), and feeds the batches to *our* model, loss, Adam step, evaluation and
R^2 (coordchannels.models / coordchannels.train), on their augmented data in our processed layout
(`scripts/authors_ecg/compare_authors_ecg.py --export`). If our trainer is their trainer, the per-epoch log
equals the log their script wrote for the same job.

  .venv/bin/python scripts/authors_ecg/replay_authors_batches_ecg.py --data scratch/authors_processed/ecg \
      --arm control --fold 1 --out scratch/replay/control_fold_1.csv \
      --theirs scratch/authors_ecg/train_logs/model_2/Baseline_fold_1_log.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from coordchannels.ecg.loader import EcgTaskData
from coordchannels.models import NimeshaNet
from coordchannels.train import Execution, predict, r2_per_target, target_standardisation, train_step

EXTRA = {"control": "extra_coords.npy", "study": "extra_intensity_weighted_coords.npy"}


def their_index_stream(n_train: int, n_test: int, epochs: int, batch_size: int = 32, seed: int = 42):
    """Per epoch, the train batches (indices into their train dataset) their loaders produce."""
    g = torch.Generator()
    g.manual_seed(seed)
    train = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.arange(n_train)),
        batch_size=batch_size,
        shuffle=True,
        num_workers=0,
        generator=g,
    )
    test = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.arange(n_test)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=0,
        generator=g,
    )
    for _ in range(epochs):
        batches = [b[0] for b in train]
        for _ in test:  # the test loader's iterator draws from the shared generator too
            pass
        yield batches


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--arm", choices=list(EXTRA), required=True)
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--out", required=True)
    p.add_argument("--theirs", default=None, help="their log of the same job, to compare with")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    d = Path(a.data)
    samples = pd.read_csv(d / "augmented.csv")
    folds_csv = d / "folds_5_seed_42" / "folds.csv"  # task.folds_dir of the default split
    folds = pd.read_csv(folds_csv if folds_csv.is_file() else d / "folds.csv").set_index("episode")["fold_episode"]
    fold = samples["episode"].map(folds).to_numpy()
    # Their train dataset: the other folds in increasing order, each in their log's row order.
    train_rows = np.concatenate([np.flatnonzero(fold == k) for k in range(1, 6) if k != a.fold])
    test_rows = np.flatnonzero(fold == a.fold)
    x = torch.from_numpy(np.concatenate([np.load(d / "leads.npy"), np.load(d / EXTRA[a.arm])], axis=1))
    y = torch.from_numpy(samples["target_s"].to_numpy(np.float32)[:, None])
    data = EcgTaskData(x=x, y=y, sample_fold=fold)
    train_idx = torch.as_tensor(train_rows)
    test_idx = torch.as_tensor(test_rows)
    mean, std = target_standardisation(data, train_idx)
    torch.manual_seed(42)
    model = NimeshaNet(3, reduced=False, out_scale=20.0, length=500)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    run = Execution()
    rows = []
    for epoch, batches in enumerate(their_index_stream(len(train_rows), len(test_rows), a.epochs), 1):
        t0 = time.time()
        model.train()
        preds, trues = [], []
        for b in batches:
            idx = train_idx[b]
            yb = data.targets(idx)
            preds.append(train_step(model, opt, data.inputs(idx), yb, mean, std, run)[1])
            trues.append(yb)
        tp, tt = torch.cat(preds).numpy(), torch.cat(trues).numpy()
        ep, et = predict(model, data, test_idx, 32, run)
        rows.append([epoch, r2_per_target(tt, tp)[0], r2_per_target(et, ep)[0]])
        print(
            f"epoch {epoch}: train_r2 {rows[-1][1]:.6f} test_r2 {rows[-1][2]:.6f} ({time.time() - t0:.0f} s)",
            flush=True,
        )
    out = pd.DataFrame(rows, columns=["epoch", "train_r2", "test_r2"])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(a.out, index=False)
    if a.theirs:
        th = pd.read_csv(a.theirs)
        n = min(len(th), len(out))
        for col in ("train_r2", "test_r2"):
            diff = np.abs(th[col].to_numpy()[:n] - out[col].to_numpy()[:n])
            print(
                f"{col}: max |ours - theirs| over {n} epochs = {diff.max():.3g} (epoch of max {int(diff.argmax()) + 1})"
            )


if __name__ == "__main__":
    main()
