"""Stage-by-stage comparison of the authors' ECG scripts' outputs with this project's (issue 16).

Reads the work folder of `scripts/authors_ecg/authors_scripts_ecg.py` (their episode windows, augmented
signals, fold mapping, fold datasets and patched training script) and our processed data
(data/processed/ecg), and writes `stages.md` and `stages.csv` to the output folder. Every item is
reported as `equal`, `equal within rounding` (with the largest difference) or `different` (with
its size).

Their augmentation draws from NumPy's legacy global stream, seeded 42 by our patch. The draws are
replayed here in the order their script makes them (the order SPEC section 1 lists), so every
parameter of their 24,200 variants is recovered and their signals are rebuilt with *our*
augmentation functions: a sample-by-sample check of our transforms on their parameters. The
parameter and amplitude *distributions* of the two pipelines (two different random streams) are
compared with two-sample Kolmogorov-Smirnov tests (chi-square for categorical ones).

`--export DIR` also writes their augmented data in our processed layout (episodes.csv,
augmented.csv, leads.npy, extra_*.npy, folds.csv with their fold of each episode), so that our
trainer can run on their data: `python -m coordchannels task=ecg stages=[train]
task.processed_dir=DIR external_data=true train.run_name=...` (their data have no record of
our data stages, hence `external_data`).

`--export-theirs DIR` writes the other direction: our augmented signals, targets and folds in
their fold format (`DIR/{Baseline,Study}/fold_k.pt`, built as their `Dataset_structuring.py`
builds it), so that their training script can run on our data (the second crossed run):
`scripts/authors_ecg/authors_scripts_ecg.py --our-data <our processed folder> --work W` does both steps.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import signal as sps
from scipy import stats

from coordchannels.ecg import augment as our_augment
from coordchannels.ecg import features as our_features
from coordchannels.ecg import loader as our_loader
from coordchannels.entry import reports_errors
from coordchannels.models import NimeshaNet as OurNimeshaNet
from coordchannels.tables import markdown_table
from coordchannels.train import Execution, r2_per_target, target_standardisation, train_step

FS = 250.0
L = 5000
N_VAR = 100
ROWS: list[dict] = []

# The project's default fold split lives in <processed_dir>/<this>/folds.csv (task.folds_dir).
DEFAULT_FOLDS_DIR = "folds_5_seed_42"


def folds_csv(processed: Path) -> Path:
    """folds.csv of the default split in a processed folder (older layouts kept it at the top)."""
    inside = processed / DEFAULT_FOLDS_DIR / "folds.csv"
    return inside if inside.is_file() else processed / "folds.csv"


def add(stage, item, verdict, size="", detail=""):
    ROWS.append({"stage": stage, "item": item, "verdict": verdict, "size": size, "detail": detail})
    print(f"[{stage}] {item}: {verdict} {size} {detail}", flush=True)


def verdict_close(diff: float, tol: float) -> str:
    return "equal" if diff == 0 else ("equal within rounding" if diff <= tol else "different")


# --------------------------------------------------------------------------------------------
# Their outputs
# --------------------------------------------------------------------------------------------
class Theirs:
    def __init__(self, work: Path):
        self.work = work
        self.win_dir = work / "danger_windows_refined_padded"
        self.aug_dir = work / "danger_windows_augmented"
        self.ds_dir = work / "ECG_5fold_dataset"
        self.episodes = pd.read_csv(self.win_dir / "episodes_log.csv")
        self.episodes["episode"] = self.episodes["window_file"].str.replace(".npy", "", regex=False)
        self.augmented = pd.read_csv(self.aug_dir / "augmented_windows_log.csv")
        self.augmented["episode"] = self.augmented["original_file"].str.replace(".npy", "", regex=False)
        self.fold_map = pd.read_csv(self.ds_dir / "fold_mapping.csv")
        self._signals = None

    def windows(self) -> np.ndarray:
        """(E, 2, L) float64, their saved episode windows."""
        return np.stack([np.load(self.win_dir / f).T for f in self.episodes["window_file"]])

    def signals(self) -> np.ndarray:
        """(N, 2, L) float64, their 24,200 augmented signals, in their log's order."""
        if self._signals is None:
            out = np.empty((len(self.augmented), 2, L), dtype=np.float64)
            for i, f in enumerate(self.augmented["aug_file"]):
                out[i] = np.load(self.aug_dir / f).T
            self._signals = out
        return self._signals

    def training_module(self, script="training_ecg_2.py"):
        path = self.work / "scripts" / script
        spec = importlib.util.spec_from_file_location("authors_" + path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


# --------------------------------------------------------------------------------------------
# Replay of their augmentation draws (legacy NumPy stream, seed 42), rebuilt with our functions
# --------------------------------------------------------------------------------------------
def replay(theirs: Theirs, windows: np.ndarray, seed: int = 42) -> tuple[pd.DataFrame, np.ndarray]:
    rs = np.random.RandomState(seed)
    t = np.arange(L) / FS
    rows, sigs = [], np.empty((len(theirs.episodes) * N_VAR, 2, L), dtype=np.float64)
    k = 0
    for e, ep in theirs.episodes.iterrows():
        idx0 = int(ep["relative_time_s"] * FS)  # their script re-derives the index this way
        for v in range(N_VAR):
            shift_s = rs.uniform(-5, 5)
            shift = int(shift_s * FS)
            target = int(np.clip(idx0 + shift, 0, L - 1))
            n_zero = int(rs.uniform(1, 2) * FS)
            start = rs.randint(0, L - n_zero)
            skipped = start <= target < start + n_zero
            x = our_augment.shift_windows(windows[e], np.array([shift]))
            our_augment.apply_dropout(x, np.array([start]), np.array([0 if skipped else n_zero]))
            amp = float(np.abs(x).max())
            noise_frac = rs.uniform(0.01, 0.05)
            noise = rs.normal(0, noise_frac * amp, (L, 2))
            wander_frac = rs.uniform(0.01, 0.05)
            wander_hz = rs.uniform(0.1, 0.5)
            ftype = str(rs.choice(["low", "high", "band"]))
            f_low = f_high = np.nan
            if ftype == "low":
                f_high = rs.uniform(30, 50)
            elif ftype == "high":
                f_low = rs.uniform(0.5, 2)
            else:
                f_low = rs.uniform(0.5, 2)
                f_high = rs.uniform(30, 50)
            scale = rs.uniform(0.8, 1.2)
            x = x[0] + noise.T
            x += wander_frac * amp * np.sin(2 * np.pi * wander_hz * t)[None, :]
            b, a = our_augment.butter_coefficients(ftype, f_low, f_high, FS, 3)
            x = sps.filtfilt(b, a, x, axis=-1) * scale
            sigs[k] = x
            rows.append(
                {
                    "episode": ep["episode"],
                    "variant": v,
                    "target_s": target / FS,
                    "shift_s": shift_s,
                    "dropout_start": start,
                    "dropout_len": 0 if skipped else n_zero,
                    "amp": amp,
                    "noise_std": noise_frac * amp,
                    "wander_amp": wander_frac * amp,
                    "wander_hz": wander_hz,
                    "filter_type": ftype,
                    "f_low": f_low,
                    "f_high": f_high,
                    "scale": scale,
                }
            )
            k += 1
    return pd.DataFrame(rows), sigs


def amplitude_stats(x: np.ndarray) -> pd.DataFrame:
    """Per-signal amplitude statistics of (N, 2, L) signals."""
    return pd.DataFrame(
        {
            "max_abs": np.abs(x).max(axis=(1, 2)),
            "std_lead1": x[:, 0].std(axis=1),
            "std_lead2": x[:, 1].std(axis=1),
            "mean_lead1": x[:, 0].mean(axis=1),
            "mean_lead2": x[:, 1].mean(axis=1),
            "ptp_lead1": np.ptp(x[:, 0], axis=1),
            "ptp_lead2": np.ptp(x[:, 1], axis=1),
            "frac_exact_zero": (x == 0).mean(axis=(1, 2)),
        }
    )


def ks_row(stage, item, a, b, alpha=0.01):
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    res = stats.ks_2samp(a, b)
    verdict = "same distribution (KS)" if res.pvalue >= alpha else "different distribution (KS)"
    add(
        stage,
        item,
        verdict,
        f"D={res.statistic:.4f} p={res.pvalue:.3g}",
        f"theirs mean {a.mean():.5g} sd {a.std():.5g} n={len(a)}; ours mean {b.mean():.5g} sd {b.std():.5g} n={len(b)}",
    )


# --------------------------------------------------------------------------------------------
def compare_episodes(theirs: Theirs, ours_dir: Path):
    st = "1 episodes"
    ours = pd.read_csv(ours_dir / "episodes.csv", dtype={"record": str})
    th = theirs.episodes.copy()
    th["record"] = th["record"].astype(str)
    add(st, "number of episodes", "equal" if len(th) == len(ours) else "different", f"{len(th)} vs {len(ours)}")
    same_keys = list(th["episode"]) == list(ours["episode"])
    add(st, "episode names and order", "equal" if same_keys else "different")
    m = th.merge(ours, on="episode", suffixes=("_th", "_our"))
    onset_th = np.rint(m["absolute_time_s"] * FS).astype(int)
    d_on = int(np.abs(onset_th - m["onset_sample"]).max())
    add(
        st,
        "onset sample",
        "equal" if d_on == 0 else "different",
        f"max |diff| {d_on} samples",
        "theirs logged as seconds (onset/fs), rounded back to samples",
    )
    rel_th = np.rint(m["relative_time_s_th"] * FS).astype(int)
    d_rel = int(np.abs(rel_th - m["changepoint"]).max())
    add(
        st,
        "relative time (changepoint in window)",
        "equal" if d_rel == 0 else "different",
        f"max |diff| {d_rel} samples; seconds max |diff| {np.abs(m['relative_time_s_th'] - m['relative_time_s_our']).max():.3g}",
    )
    start_th = onset_th - rel_th
    d_start = int(np.abs(start_th - m["window_start"]).max())
    add(
        st,
        "window start",
        "equal" if d_start == 0 else "different",
        f"max |diff| {d_start} samples",
        "theirs derived as onset - relative time",
    )
    trunc = m[np.array([int(r * FS) for r in m["relative_time_s_th"]]) != m["changepoint"]]
    add(
        st,
        "changepoint index their augmentation starts from, int(relative_time_s*fs), vs our integer changepoint",
        "equal" if trunc.empty else "different",
        f"{len(trunc)} episodes 1 sample lower in theirs" if not trunc.empty else "",
        ", ".join(f"{r.episode} ({r.relative_time_s_th} s)" for r in trunc.itertuples()),
    )
    w_th = theirs.windows()
    w_our = np.load(ours_dir / "windows.npy")
    d_w = float(np.abs(w_th - w_our.astype(np.float64)).max())
    rel = float(np.abs(w_th.astype(np.float32) - w_our).max())
    add(
        st,
        "episode window signals",
        verdict_close(d_w, 1e-6),
        f"max |diff| {d_w:.3g} mV",
        f"ours stored float32, theirs float64; after casting theirs to float32 max |diff| {rel:.3g}",
    )
    return w_th, trunc


def compare_folds(theirs: Theirs, ours_dir: Path):
    st = "2 folds"
    fm = theirs.fold_map.copy()
    fm["episode"] = fm["aug_file"].str.replace(r"_aug\d+\.npy$", "", regex=True)
    per_ep = fm.groupby("episode")["fold"].agg(["nunique", "first"])
    add(st, "their variants of one episode share a fold", "equal" if (per_ep["nunique"] == 1).all() else "different")
    ours = pd.read_csv(folds_csv(ours_dir), dtype={"record": str}).set_index("episode")
    j = per_ep.join(ours, how="outer")
    diff = int((j["first"] != j["fold_episode"]).sum())
    add(
        st,
        "fold of every episode (theirs vs our fold_episode)",
        "equal" if diff == 0 else "different",
        f"{diff} of {len(j)} episodes differ",
    )
    sizes = fm.groupby("fold").size().to_dict()
    add(st, "samples per fold (theirs)", "info", str(sizes))
    return per_ep["first"].to_dict()


def compare_augmentation(theirs: Theirs, ours_dir: Path, w_th: np.ndarray, out: Path):
    st = "3 augmentation"
    t0 = time.time()
    params, rebuilt = replay(theirs, w_th)
    print(f"replay in {time.time() - t0:.0f} s", flush=True)
    sig = theirs.signals()
    tgt_th = theirs.augmented["relative_time_s"].to_numpy()
    d_t = float(np.abs(params["target_s"].to_numpy() - tgt_th).max())
    add(
        st,
        "replay of their draws: targets",
        verdict_close(d_t, 1e-9),
        f"max |diff| {d_t:.3g} s",
        "legacy np.random stream seed 42 replayed in their draw order",
    )
    d_s = float(np.abs(rebuilt - sig).max())
    rel = d_s / float(np.abs(sig).max())
    add(
        st,
        "their signals rebuilt by OUR shift/dropout/wander/butter/filtfilt/scale from the replayed draws",
        verdict_close(d_s, 1e-9),
        f"max |diff| {d_s:.3g} mV (relative {rel:.2g})",
        "all 24,200 signals",
    )
    params.to_csv(theirs.work / "their_augmentation_params_replayed.csv.gz", index=False, float_format="%.9g")

    ours = pd.read_csv(ours_dir / "augmented.csv", dtype={"record": str})
    for col in ["shift_s", "dropout_start", "noise_std", "wander_amp", "wander_hz", "scale", "target_s"]:
        ks_row(st, f"parameter {col}", params[col], ours[col])
    # max|x| after shift and dropout takes few distinct values per episode (the window's extremes);
    # ours come from float32-stored windows, so compare at float32 precision, else every ECDF
    # step of one side sits just beside the other's and KS reports a spurious difference.
    ks_row(
        st,
        "parameter amp = max|x| after shift and dropout (both at float32 precision)",
        params["amp"].astype(np.float32),
        ours["amp"].astype(np.float32),
    )
    for col in ["amp", "target_s"]:
        a = params.groupby("episode")[col].mean()
        b = ours.groupby("episode")[col].mean().reindex(a.index)
        w = stats.wilcoxon(a - b)
        add(
            st,
            f"per-episode mean of {col}, paired over the 242 episodes (Wilcoxon signed-rank)",
            "same distribution" if w.pvalue >= 0.01 else "different distribution",
            f"p={w.pvalue:.3g}",
            f"mean paired diff {float((a - b).mean()):.4g}",
        )
    ks_row(
        st,
        "dropout length (applied ones)",
        params.loc[params.dropout_len > 0, "dropout_len"],
        ours.loc[ours.dropout_len > 0, "dropout_len"],
    )
    noise_frac_th, noise_frac_our = params.noise_std / params.amp, ours.noise_std / ours.amp
    ks_row(st, "noise level / max|x|", noise_frac_th, noise_frac_our)
    ks_row(st, "wander level / max|x|", params.wander_amp / params.amp, ours.wander_amp / ours.amp)
    for ft in ["low", "high", "band"]:
        for col in ["f_low", "f_high"]:
            a, b = params.loc[params.filter_type == ft, col], ours.loc[ours.filter_type == ft, col]
            if a.notna().any():
                ks_row(st, f"{ft}-pass cut-off {col}", a, b)
    tab = pd.crosstab(
        pd.concat([params.filter_type, ours.filter_type]), np.r_[np.zeros(len(params)), np.ones(len(ours))]
    )
    chi = stats.chi2_contingency(tab.to_numpy())
    add(
        st,
        "filter type shares",
        "same distribution (chi2)" if chi.pvalue >= 0.01 else "different distribution (chi2)",
        f"chi2={chi.statistic:.2f} p={chi.pvalue:.3g}",
        "theirs "
        + str((params.filter_type.value_counts() / len(params)).round(4).to_dict())
        + "; ours "
        + str((ours.filter_type.value_counts() / len(ours)).round(4).to_dict()),
    )
    sk = np.array([(params.dropout_len == 0).sum(), len(params)]), np.array([(ours.dropout_len == 0).sum(), len(ours)])
    chi = stats.chi2_contingency(np.array([[sk[0][0], sk[0][1] - sk[0][0]], [sk[1][0], sk[1][1] - sk[1][0]]]))
    add(
        st,
        "share of dropouts skipped (would cover the changepoint)",
        "same distribution (chi2)" if chi.pvalue >= 0.01 else "different distribution (chi2)",
        f"theirs {sk[0][0] / sk[0][1]:.4f} ours {sk[1][0] / sk[1][1]:.4f} p={chi.pvalue:.3g}",
    )
    # Changepoint targets, straight from their log (no replay needed).
    ks_row(st, "changepoint target (their log) vs ours", tgt_th, ours["target_s"])
    for edge, name in [(0.0, "clipped at 0"), ((L - 1) / FS, "clipped at end")]:
        a, b = np.mean(np.isclose(tgt_th, edge)), np.mean(np.isclose(ours["target_s"], edge))
        add(st, f"share of targets {name}", "info", f"theirs {a:.4f} ours {b:.4f}")
    # Per-signal amplitude statistics of the signals themselves.
    our_sig = np.load(ours_dir / "augmented.npy", mmap_mode="r")
    a_th = amplitude_stats(sig)
    a_our = amplitude_stats(np.asarray(our_sig, dtype=np.float64))
    for col in a_th.columns:
        ks_row(st, f"signal {col}", a_th[col], a_our[col])
    return params


def their_item(mod, sample):
    """Their per-sample transform (FoldwiseLazyDataset.__getitem__) applied to one stored dict."""
    ds = mod.FoldwiseLazyDataset([])
    ds.data = [sample]
    return ds[0]


def compare_inputs(theirs: Theirs, fold_of: dict, n: int):
    st = "4 model inputs"
    mod = theirs.training_module()
    log = theirs.augmented
    fold_col = log["episode"].map(fold_of)
    rows1 = np.flatnonzero(fold_col.to_numpy() == 1)[:n]  # their fold_1.pt keeps log order
    sig = theirs.signals()[rows1]
    feats = our_features.chunk_features(sig, 11, 10, 20.0)
    # As our pipeline runs: the augment stage stores float32 signals, features start from them.
    feats32 = our_features.chunk_features(sig.astype(np.float32), 11, 10, 20.0)
    for arm, folder, extra in [
        ("control", "Baseline", "extra_coords.npy"),
        ("study", "Study", "extra_intensity_weighted_coords.npy"),
    ]:
        data = torch.load(theirs.ds_dir / folder / "fold_1.pt", map_location="cpu")[:n]
        xs = torch.stack([their_item(mod, s)[0] for s in data]).numpy()
        ys = torch.cat([their_item(mod, s)[1] for s in data]).numpy()
        add(
            st,
            f"{arm}: target their dataset vs their log",
            verdict_close(float(np.abs(ys - log["relative_time_s"].to_numpy()[rows1].astype(np.float32)).max()), 1e-6),
        )
        ours = np.concatenate([feats["leads.npy"], feats[extra]], axis=1)
        add(
            st, f"{arm}: input shape", "equal" if xs.shape == ours.shape else "different", f"{xs.shape} vs {ours.shape}"
        )
        for ch, name in enumerate(["lead 1", "lead 2", "coordinate channel"]):
            d = float(np.abs(xs[:, ch] - ours[:, ch]).max())
            scale = float(np.abs(xs[:, ch]).max())
            add(
                st,
                f"{arm}: {name} after median filter + stride",
                verdict_close(d, 1e-5 * max(scale, 1)),
                f"max |diff| {d:.3g} (max |value| {scale:.3g})",
                f"first {n} samples of their fold 1",
            )
        ours32 = np.concatenate([feats32["leads.npy"], feats32[extra]], axis=1)
        d = float(np.abs(xs - ours32).max())
        add(
            st,
            f"{arm}: all channels, signals first stored as float32 (as our augment stage stores them)",
            verdict_close(d, 1e-5 * float(np.abs(xs).max())),
            f"max |diff| {d:.3g}",
        )
        del data


def compare_network(theirs: Theirs, fold_of: dict):
    st = "5 network and training"
    mod = theirs.training_module()
    torch.manual_seed(42)
    th = mod.NimeshaNet()
    torch.manual_seed(42)
    our = OurNimeshaNet(3, reduced=False, out_scale=20.0, length=500)
    p_th, p_our = list(th.named_parameters()), list(our.named_parameters())
    shapes_th, shapes_our = [tuple(p.shape) for _, p in p_th], [tuple(p.shape) for _, p in p_our]
    add(
        st,
        "parameter shapes in creation order",
        "equal" if shapes_th == shapes_our else "different",
        "; ".join(str(s) for s in shapes_th),
    )
    n_th, n_our = sum(p.numel() for _, p in p_th), sum(p.numel() for _, p in p_our)
    add(st, "parameter count", "equal" if n_th == n_our else "different", f"{n_th} vs {n_our}")
    d = max(float((a - b).detach().abs().max()) for (_, a), (_, b) in zip(p_th, p_our))
    add(st, "initial weights after torch.manual_seed(42)", verdict_close(d, 0), f"max |diff| {d:.3g}")
    b_th = [(k, v) for k, v in th.state_dict().items() if "running" in k or "num_batches" in k]
    b_our = [(k, v) for k, v in our.state_dict().items() if "running" in k or "num_batches" in k]
    add(
        st,
        "batch-norm buffers",
        "equal" if all(torch.equal(a, b) for (_, a), (_, b) in zip(b_th, b_our)) else "different",
    )
    bn = [(m.momentum, m.eps) for m in th.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    bn2 = [(m.momentum, m.eps) for m in our.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    add(st, "batch-norm momentum/eps", "equal" if bn == bn2 else "different", str(bn[0]))

    # Same batches through both: forward (train and eval mode), loss, Adam steps.
    data = torch.load(theirs.ds_dir / "Baseline" / "fold_2.pt", map_location="cpu")[:320]
    items = [their_item(mod, s) for s in data]
    x = torch.stack([i[0] for i in items])
    y = torch.stack([i[1] for i in items])
    targets = torch.cat([i[1] for i in items])
    mean, std = targets.mean(), targets.std()
    crit = mod.StandardizedMSELoss(mean, std)
    opt_th = torch.optim.Adam(th.parameters(), lr=1e-3)
    opt_our = torch.optim.Adam(our.parameters(), lr=1e-3)
    with torch.no_grad():
        th.eval(), our.eval()
        d = float((th(x) - our(x)).abs().max())
    add(st, "forward, eval mode, same weights and inputs", verdict_close(d, 1e-5), f"max |diff| {d:.3g} s")
    th.train(), our.train()
    losses = []
    for k in range(10):
        xb, yb = x[32 * k : 32 * (k + 1)], y[32 * k : 32 * (k + 1)]
        opt_th.zero_grad()
        pred_th = th(xb)
        loss_th = crit(pred_th, yb)
        loss_th.backward()
        opt_th.step()
        loss_our, pred_our = train_step(our, opt_our, xb, yb, mean, std, Execution())
        losses.append((float(loss_th), float(loss_our), float((pred_th.detach() - pred_our).abs().max())))
    dl = max(abs(a - b) for a, b, _ in losses)
    dp = max(c for _, _, c in losses)
    dw = max(
        float((a - b).detach().abs().max()) for (_, a), (_, b) in zip(th.named_parameters(), our.named_parameters())
    )
    add(
        st,
        "10 Adam steps on the same batches: loss (their StandardizedMSELoss vs our train_step)",
        verdict_close(dl, 1e-4),
        f"max |diff| {dl:.3g}",
    )
    add(st, "10 Adam steps: predictions during training", verdict_close(dp, 1e-4), f"max |diff| {dp:.3g} s")
    add(st, "10 Adam steps: weights after", verdict_close(dw, 1e-4), f"max |diff| {dw:.3g}")

    # Target standardisation over a full training set (their fold 1 held out).
    tr = []
    for k in range(2, 6):
        tr += [
            s["output"].reshape(-1) for s in torch.load(theirs.ds_dir / "Baseline" / f"fold_{k}.pt", map_location="cpu")
        ]
    tt = torch.cat(tr).float()
    m_th, s_th = tt.mean(), tt.std()
    data_obj = our_loader.EcgTaskData(x=torch.empty(len(tt), 0), y=tt[:, None], sample_fold=np.zeros(len(tt), int))
    m_our, s_our = target_standardisation(data_obj, torch.arange(len(tt)))
    d = max(abs(float(m_th) - float(m_our[0])), abs(float(s_th) - float(s_our[0])))
    add(
        st,
        "target mean/std (unbiased) of the training targets, fold 1 held out",
        verdict_close(d, 1e-6),
        f"theirs {float(m_th):.6f}/{float(s_th):.6f}, ours {float(m_our[0]):.6f}/{float(s_our[0]):.6f}",
    )

    # R^2: theirs r2_score on float32 arrays; ours in float64.
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    yt = tt.numpy()
    yp = (yt + rng.normal(0, 2, len(yt))).astype(np.float32)
    d = abs(r2_score(yt, yp) - r2_per_target(yt[:, None], yp[:, None])[0])
    add(st, "R^2 computation (sklearn r2_score, float32 vs our float64)", verdict_close(d, 1e-6), f"|diff| {d:.3g}")

    # Batch order mechanics.
    n = 64
    ds = torch.utils.data.TensorDataset(torch.arange(n))
    orders = {}
    for workers in (0, 2):
        g = torch.Generator()
        g.manual_seed(42)
        tr_l = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, num_workers=workers, generator=g)
        te_l = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False, num_workers=workers, generator=g)
        seq = []
        for _ in range(3):
            seq.append(torch.cat([b[0] for b in tr_l]).tolist())
            list(te_l)
        orders[workers] = seq
    add(
        st,
        "their batch order: num_workers=0 (our patch) vs 2 (DataLoader shuffle, generator shared with test loader)",
        "equal" if orders[0] == orders[2] else "different",
        "3 epochs of a 64-sample toy set",
    )
    add(
        st,
        "batch order source",
        "different (by design)",
        "",
        "theirs: one torch.Generator seeded 42 per job, shared by the train and test loaders, drawn on across epochs; "
        "ours: a fresh generator per (seed, fold, epoch). Both uniform random permutations; the orders differ.",
    )


def compare_replay(pairs):
    st = "6 whole training job"
    for pair in pairs:
        ours, theirs = pair.split("=", 1)
        o, t = pd.read_csv(ours), pd.read_csv(theirs)
        same_len = len(o) == len(t)
        d = max(float(np.abs(o[c] - t[c]).max()) for c in ("train_r2", "test_r2")) if same_len else float("nan")
        add(
            st,
            f"our trainer fed their DataLoader batch order, on their data: {Path(ours).stem} vs their script's log",
            verdict_close(d, 1e-6) if same_len else "different",
            f"max |diff| of train/test R2 over {len(t)} epochs {d:.3g}",
            "our model, loss, Adam step, evaluation and R2 (scripts/authors_ecg/replay_authors_batches_ecg.py); "
            "their r2_score runs on float32 arrays, ours on float64",
        )


# --------------------------------------------------------------------------------------------
def export_processed(theirs: Theirs, fold_of: dict, out: Path):
    """Their augmented data in our processed layout, for our trainer."""
    out.mkdir(parents=True, exist_ok=True)
    ep = theirs.episodes
    ep_out = pd.DataFrame(
        {
            "record": ep["record"],
            "episode_index": ep["episode_index"],
            "episode": ep["episode"],
            "relative_time_s": ep["relative_time_s"],
            "fs": FS,
        }
    )
    ep_out.to_csv(out / "episodes.csv", index=False)
    log = theirs.augmented
    aug = pd.DataFrame(
        {
            "sample": np.arange(len(log)),
            "episode": log["episode"],
            "record": log["episode"].str.split("_").str[0],
            "variant": log["aug_index"] - 1,
            "target_s": log["relative_time_s"],
        }
    )
    aug.to_csv(out / "augmented.csv", index=False)
    folds = pd.DataFrame({"episode": ep["episode"], "record": ep["record"], "fold_episode": ep["episode"].map(fold_of)})
    # Where the project's folds stage keeps the default split (task.folds_dir: n_folds 5, fold_seed 42).
    (out / DEFAULT_FOLDS_DIR).mkdir(parents=True, exist_ok=True)
    folds.to_csv(out / DEFAULT_FOLDS_DIR / "folds.csv", index=False)
    sig = theirs.signals()
    names = ["leads.npy", "extra_coords.npy", "extra_intensity_weighted_coords.npy"]
    arrays = {
        k: np.lib.format.open_memmap(
            out / k, mode="w+", dtype=np.float32, shape=(len(sig), 2 if k == "leads.npy" else 1, 500)
        )
        for k in names
    }
    for lo in range(0, len(sig), 1000):
        f = our_features.chunk_features(sig[lo : lo + 1000], 11, 10, 20.0)
        for k in names:
            arrays[k][lo : lo + 1000] = f[k]
    for a in arrays.values():
        a.flush()
    print(f"exported their data in our layout to {out}", flush=True)


def export_theirs(ours: Path, out: Path, n_folds: int = 5):
    """Our augmented data in their fold format: per arm and fold, a list of
    {'input': (5000, 3) float32, 'output': target seconds}, as their structuring script writes it.

    Their coordinate channels are computed as their script does (float64 from the stored signal,
    cast to float32 at the end); the sample order inside a fold is our sample order (episode,
    then variant), as theirs is their log order.
    """
    aug = pd.read_csv(ours / "augmented.csv")
    fold_of = pd.read_csv(folds_csv(ours)).set_index("episode")["fold_episode"]
    fold = aug["episode"].map(fold_of).to_numpy()
    if np.isnan(fold.astype(float)).any():
        raise SystemExit(f"{folds_csv(ours)}: some augmented episodes have no fold")
    sig = np.load(ours / "augmented.npy", mmap_mode="r")  # (n, 2 leads, L) float32
    ramp = np.linspace(0, 20, L)[:, None]
    for k in range(1, n_folds + 1):
        study, base = [], []
        for i in np.flatnonzero(fold == k):
            seg = np.asarray(sig[i], dtype=np.float64).T  # (L, 2), float64 like their np.load of a float64 file
            target = torch.tensor(float(aug["target_s"].iat[i]), dtype=torch.float32)
            study.append(
                {
                    "input": torch.tensor(
                        np.concatenate([seg, seg.mean(1, keepdims=True) * ramp], 1), dtype=torch.float32
                    ),
                    "output": target,
                }
            )
            base.append({"input": torch.tensor(np.concatenate([seg, ramp], 1), dtype=torch.float32), "output": target})
        for name, items in (("Study", study), ("Baseline", base)):
            (out / name).mkdir(parents=True, exist_ok=True)
            tmp = out / name / f".fold_{k}.pt.part"
            torch.save(items, tmp)
            tmp.rename(out / name / f"fold_{k}.pt")
        print(f"fold {k}: {len(study)} samples", flush=True)
    pd.DataFrame({"aug_file": aug["episode"] + "_v" + aug["variant"].astype(str), "fold": fold}).to_csv(
        out / "fold_mapping.csv", index=False
    )
    (out / "structure.done").write_text("ours\n")
    print(f"exported our data in their fold format to {out}", flush=True)


def write_report(out: Path):
    df = pd.DataFrame(ROWS)
    df.to_csv(out / "stages.csv", index=False)
    df = df.map(lambda v: str(v).replace("|", "\\|") if isinstance(v, str) else v)
    lines = [
        "# Stage-by-stage comparison: the authors' ECG scripts vs this project",
        "",
        "Written by `scripts/authors_ecg/compare_authors_ecg.py`. Verdicts: equal / equal within rounding / different; "
        "distributions (two random streams) by two-sample KS or chi-square, alpha 0.01, treating the 24,200 "
        "variants as independent (they are not: 100 per episode, so p-values are optimistic about differences).",
        "",
    ]
    for st, g in df.groupby("stage", sort=False):
        rows = [[r.item, r.verdict, r.size, r.detail] for r in g.itertuples()]
        table = markdown_table(["item", "verdict", "size", "detail"], rows)
        lines += [f"## {st}", "", *(line.replace("\n", " ") for line in table), ""]
    (out / "stages.md").write_text("\n".join(lines))


@reports_errors
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="scratch/authors_ecg", help="work folder of authors_scripts_ecg.py")
    p.add_argument("--ours", default="data/processed/ecg", help="our processed ECG data")
    p.add_argument("--out", default="results/authors_scripts_ecg")
    p.add_argument("--n-inputs", type=int, default=500, help="samples of their fold 1 for the model-input check")
    p.add_argument("--export", default=None, help="write their data in our processed layout here")
    p.add_argument("--only-export", action="store_true")
    p.add_argument("--export-theirs", default=None, help="write our data in their fold format (.pt) here, then stop")
    p.add_argument(
        "--replay",
        nargs="*",
        default=[],
        metavar="OURS=THEIRS",
        help="per-fold logs of scripts/authors_ecg/replay_authors_batches_ecg.py = their script's log of the same job",
    )
    p.add_argument(
        "--replay-only",
        action="store_true",
        help="keep the rows of an existing stages.csv and (re)compute only the replay rows",
    )
    a = p.parse_args(argv)
    if a.replay_only:
        ROWS.extend(
            r
            for r in pd.read_csv(Path(a.out) / "stages.csv", keep_default_na=False).to_dict("records")
            if not str(r["stage"]).startswith("6 ")
        )
        compare_replay(a.replay)
        write_report(Path(a.out))
        return
    if a.export_theirs:
        return export_theirs(Path(a.ours), Path(a.export_theirs))
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    theirs = Theirs(Path(a.work))
    ours = Path(a.ours)
    fold_of = (
        theirs.fold_map.assign(episode=theirs.fold_map["aug_file"].str.replace(r"_aug\d+\.npy$", "", regex=True))
        .groupby("episode")["fold"]
        .first()
        .to_dict()
    )
    if a.export:
        export_processed(theirs, fold_of, Path(a.export))
    if a.only_export:
        return
    w_th, _ = compare_episodes(theirs, ours)
    compare_folds(theirs, ours)
    write_report(out)
    compare_augmentation(theirs, ours, w_th, out)
    write_report(out)
    compare_inputs(theirs, fold_of, a.n_inputs)
    write_report(out)
    compare_network(theirs, fold_of)
    compare_replay(a.replay)
    write_report(out)


if __name__ == "__main__":
    sys.exit(main())
