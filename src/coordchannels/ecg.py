"""ECG changepoint localisation data (SPEC sections 1, 3, 5): extract -> augment -> features, and the loader.

Stages, each writing into `cfg.task.processed_dir` and skipping when its outputs exist (unless
`cfg.overwrite`):

- extract:  episodes.csv + windows.npy (E, 2, L): one 20 s window around every onset of a
            dangerous rhythm in every record (read from the WFDB files in `task.data.raw_dir`).
- augment:  augmented.csv + augmented.npy (E * n_variants, 2, L): 100 random perturbations per
            episode, every drawn parameter logged; sample index = episode_row * n_variants + variant.
- features: leads.npy (N, 2, L/stride) and extra_<kind>.npy (N, k, L/stride) for every channel kind:
            the model inputs after the median filter and stride the authors' trainer applied on
            the fly. Done once here because it is a pure function of the sample.

`load_task_data` turns those files into the `TaskData` the trainer consumes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import wfdb
from numpy.lib.stride_tricks import sliding_window_view
from omegaconf import DictConfig
from scipy import signal as sps

from coordchannels.channels import KINDS, N_EXTRA, extra_channels_1d
from coordchannels.io import atomic_path, save_npy, write_csv
from coordchannels.taskdata import folds_present

log = logging.getLogger(__name__)

N_LEADS = 2
FILTER_TYPES = ("low", "high", "band")

EPISODES_CSV = "episodes.csv"
WINDOWS_NPY = "windows.npy"
AUGMENTED_CSV = "augmented.csv"
AUGMENTED_NPY = "augmented.npy"
LEADS_NPY = "leads.npy"
FOLDS_CSV = "folds.csv"


def extra_npy(kind: str) -> str:
    """File name of the preprocessed extra channels of one channel kind."""
    return f"extra_{kind}.npy"


def episode_name(record, index: int) -> str:
    """`{record}_episode{i}`: the authors' window file name without `.npy`; folds group by it."""
    return f"{record}_episode{index}"


def _outputs_exist(cfg: DictConfig, names: list[str], stage: str) -> bool:
    """True (and logged) when the stage can be skipped: every output exists and no overwrite."""
    out = Path(cfg.task.processed_dir)
    if not cfg.overwrite and all((out / n).exists() for n in names):
        log.info("%s: outputs exist in %s, skipped (overwrite=true to redo)", stage, out)
        return True
    return False


# --------------------------------------------------------------------------------------------
# Reading WFDB records, with the checks wfdb itself does not make
# --------------------------------------------------------------------------------------------

# Bits per stored sample of the WFDB formats whose .dat size follows from the header.
_BITS_PER_SAMPLE = {"8": 8, "16": 16, "24": 24, "32": 32, "61": 16, "80": 8, "160": 16, "212": 12}


@dataclass(frozen=True)
class Record:
    name: str
    fs: float
    signal: np.ndarray  # (n_samples, leads) physical units, float64
    ann_samples: np.ndarray  # annotation sample indices
    aux_notes: list[str]  # annotation aux notes ('' when absent)


def _require_file(path: Path, record: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"ECG record {record!r}: {path} not found (is {record!r} a record of the database, "
            f"and did the download stage finish?)"
        )


def _check_dat_sizes(header, folder: Path, record: str) -> None:
    """Each .dat must hold exactly the samples the header announces.

    wfdb reads a header that claims fewer samples than the .dat holds without complaint, and a
    truncated .dat fails deep inside numpy; this check names the file and the mismatch instead.
    """
    per_file: dict[str, list[int]] = {}
    for i, fname in enumerate(header.file_name):
        per_file.setdefault(fname, []).append(i)
    for fname, sigs in per_file.items():
        dat = folder / fname
        _require_file(dat, record)
        fmt = str(header.fmt[sigs[0]])
        if fmt not in _BITS_PER_SAMPLE:
            continue  # packed formats (310, 311, ...): the length check after reading still applies
        spf = header.samps_per_frame or [1] * header.n_sig
        values = header.sig_len * sum(int(spf[i] or 1) for i in sigs)
        offset = int((header.byte_offset or [0] * header.n_sig)[sigs[0]] or 0)
        expected = offset + math.ceil(values * _BITS_PER_SAMPLE[fmt] / 8)
        actual = dat.stat().st_size
        if actual != expected:
            hint = "truncated?" if actual < expected else "the header does not match this file"
            raise ValueError(
                f"ECG record {record!r}: {dat} has {actual} bytes, but its header "
                f"{folder / (record + '.hea')} announces {header.sig_len} samples x {len(sigs)} "
                f"signals in format {fmt} = {expected} bytes ({hint})"
            )


def read_record(raw_dir: str | Path, record) -> Record:
    """Read one record (`NNN.hea/.dat/.atr`) in physical units, checking the files first."""
    name = str(record)
    folder = Path(raw_dir)
    base = folder / name
    hea, atr = folder / f"{name}.hea", folder / f"{name}.atr"
    _require_file(hea, name)
    _require_file(atr, name)
    try:
        header = wfdb.rdheader(str(base))
    except Exception as exc:  # wfdb raises assorted types for a malformed header
        raise ValueError(f"ECG record {name!r}: cannot parse header {hea}: {exc}") from exc
    if header.n_sig != N_LEADS:
        raise ValueError(f"ECG record {name!r}: {hea} has {header.n_sig} signals, expected {N_LEADS}")
    _check_dat_sizes(header, folder, name)
    try:
        rec = wfdb.rdrecord(str(base), physical=True)
    except Exception as exc:
        raise ValueError(f"ECG record {name!r}: cannot read the signal files of {hea}: {exc}") from exc
    if rec.p_signal is None or rec.p_signal.shape != (header.sig_len, N_LEADS):
        got = None if rec.p_signal is None else rec.p_signal.shape
        raise ValueError(
            f"ECG record {name!r}: read signal of shape {got} but {hea} announces "
            f"({header.sig_len}, {N_LEADS})"
        )
    try:
        ann = wfdb.rdann(str(base), "atr")
    except Exception as exc:
        raise ValueError(f"ECG record {name!r}: cannot read annotations {atr}: {exc}") from exc
    notes = [note or "" for note in (ann.aux_note or [""] * len(ann.sample))]
    return Record(name, float(rec.fs), rec.p_signal, np.asarray(ann.sample, dtype=np.int64), notes)


# --------------------------------------------------------------------------------------------
# Stage 1: episode extraction
# --------------------------------------------------------------------------------------------


def clean_label(note: str) -> str:
    """`(VFL\\x00` -> `VFL`: the rhythm label without its opening bracket and trailing NUL."""
    return note.replace("\x00", "").strip().lstrip("(").strip()


def is_danger(note: str, labels, label_match: str) -> bool:
    """Whether an aux note marks the onset of a dangerous rhythm.

    substring (the scripts): any label occurring inside the note, which also takes `(SVTA`
    (supraventricular, not ventricular) because it contains "VT". exact: the cleaned label is one
    of `labels`.
    """
    if label_match == "substring":
        return any(label in note for label in labels)
    if label_match == "exact":
        return clean_label(note) in set(labels)
    raise ValueError(f"task.data.label_match must be 'substring' or 'exact', got {label_match!r}")


def episode_windows(onsets: np.ndarray, n_samples: int, pre: int, post: int) -> list[tuple[int, int, int]]:
    """(start, end, changepoint offset) of the window of each sorted onset (SPEC section 1).

    An onset less than `pre` samples after the previous one would have the previous onset inside
    its pre-onset context; the scripts then start the window at the previous onset instead.
    """
    windows = []
    for i, onset in enumerate(int(s) for s in onsets):
        if i > 0 and onset - int(onsets[i - 1]) < pre:
            start = int(onsets[i - 1])
            end = min(start + pre + post, n_samples)
            offset = onset - start
        else:
            start = max(0, onset - pre)
            end = min(onset + post, n_samples)
            offset = min(pre, onset - start)
        windows.append((start, end, offset))
    return windows


def _window_samples(data: DictConfig, fs: float) -> tuple[int, int]:
    """(pre, post) window sizes in samples; the window is pre + post long."""
    if not math.isclose(float(data.window_s), float(data.pre_s) + float(data.post_s)):
        raise ValueError(
            f"task.data.window_s ({data.window_s}) must equal pre_s + post_s ({data.pre_s} + {data.post_s})"
        )
    return int(float(data.pre_s) * fs), int(float(data.post_s) * fs)


def record_episodes(rec: Record, data: DictConfig) -> tuple[list[dict], np.ndarray]:
    """Episode rows and their zero-padded (n, leads, pre + post) windows for one record."""
    pre, post = _window_samples(data, rec.fs)
    keep = [i for i, note in enumerate(rec.aux_notes) if is_danger(note, data.danger_labels, data.label_match)]
    order = np.argsort(rec.ann_samples[keep], kind="stable")
    onsets = rec.ann_samples[keep][order]
    labels = [clean_label(rec.aux_notes[keep[j]]) for j in order]
    windows = np.zeros((len(onsets), N_LEADS, pre + post), dtype=np.float32)
    rows = []
    for i, (start, end, offset) in enumerate(episode_windows(onsets, len(rec.signal), pre, post)):
        windows[i, :, : end - start] = rec.signal[start:end].T  # the rest stays zero (padding)
        rows.append(
            {"record": rec.name, "episode_index": i, "label": labels[i], "onset_sample": int(onsets[i]),
             "window_start": start, "relative_time_s": offset / rec.fs,
             "episode": episode_name(rec.name, i), "changepoint": offset, "fs": rec.fs}
        )
    return rows, windows


def extract_episodes(data: DictConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """All episodes of `data.records` in `data.raw_dir`: the table and the (E, leads, L) windows.

    Besides the log columns of the scripts the table keeps `episode` (the name folds group by),
    `changepoint` (onset - window start, in samples) and `fs`.
    """
    is_danger("", data.danger_labels, data.label_match)  # a bad label_match fails before any reading
    rows, windows, rates = [], [], set()
    for record in data.records:
        rec = read_record(data.raw_dir, record)
        rates.add(rec.fs)
        rec_rows, rec_windows = record_episodes(rec, data)
        log.info("record %s: %d episodes", rec.name, len(rec_rows))
        rows += rec_rows
        windows.append(rec_windows)
    if len(rates) > 1:
        raise ValueError(f"records in {data.raw_dir} have different sampling rates {sorted(rates)}")
    if not rows:
        raise ValueError(f"no episode with a label of {list(data.danger_labels)} in the records of {data.raw_dir}")
    return pd.DataFrame(rows), np.concatenate(windows)


def extract_stage(cfg: DictConfig) -> None:
    """Write episodes.csv and windows.npy (float32, zero-padded at the end) from the raw records."""
    if _outputs_exist(cfg, [EPISODES_CSV, WINDOWS_NPY], "extract"):
        return
    out = Path(cfg.task.processed_dir)
    episodes, windows = extract_episodes(cfg.task.data)
    save_npy(out / WINDOWS_NPY, windows)
    write_csv(episodes, out / EPISODES_CSV)
    log.info("extract: %d episodes (label_match=%s) from %d records", len(episodes),
             cfg.task.data.label_match, len(cfg.task.data.records))


# --------------------------------------------------------------------------------------------
# Stage 2: augmentation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentSettings:
    """The ranges of SPEC section 1's augmentation, from `task.data`."""

    n_variants: int = 100
    shift_s: float = 5.0
    dropout_s: tuple[float, float] = (1.0, 2.0)
    noise_frac: tuple[float, float] = (0.01, 0.05)
    wander_frac: tuple[float, float] = (0.01, 0.05)
    wander_hz: tuple[float, float] = (0.1, 0.5)
    lowpass_hz: tuple[float, float] = (30.0, 50.0)
    highpass_hz: tuple[float, float] = (0.5, 2.0)
    filter_order: int = 3
    scale: tuple[float, float] = (0.8, 1.2)

    @classmethod
    def from_cfg(cls, data: DictConfig) -> AugmentSettings:
        pair = lambda key: (float(data[key][0]), float(data[key][1]))  # noqa: E731
        return cls(
            n_variants=int(data.n_variants), shift_s=float(data.shift_s), dropout_s=pair("dropout_s"),
            noise_frac=pair("noise_frac"), wander_frac=pair("wander_frac"), wander_hz=pair("wander_hz"),
            lowpass_hz=pair("lowpass_hz"), highpass_hz=pair("highpass_hz"),
            filter_order=int(data.filter_order), scale=pair("scale"),
        )


def episode_rng(seed: int, name: str) -> np.random.Generator:
    """A generator of its own per episode, so an episode's variants do not depend on which
    episodes came before it. crc32 of the name, not hash(): Python salts str hashes per process."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def draw_parameters(rng: np.random.Generator, n: int, length: int, changepoint: int, fs: float,
                    aug: AugmentSettings) -> dict[str, np.ndarray]:
    """Every random parameter of `n` variants, drawn in a fixed order (vectorised over variants).

    f_low is the high-pass cut-off (also the band-pass lower edge), f_high the low-pass cut-off;
    the one a filter type does not use is NaN. dropout_len is 0 when the drawn patch would cover
    the (shifted) changepoint, i.e. the dropout was skipped.
    """
    shift_s = rng.uniform(-aug.shift_s, aug.shift_s, n)
    shift = (shift_s * fs).astype(np.int64)  # int() semantics: truncation towards zero
    target = np.clip(changepoint + shift, 0, length - 1)
    dropout_len = (rng.uniform(*aug.dropout_s, n) * fs).astype(np.int64)
    dropout_start = rng.integers(0, length - dropout_len)  # start in [0, length - len)
    covers = (target >= dropout_start) & (target < dropout_start + dropout_len)
    dropout_len[covers] = 0
    noise_frac = rng.uniform(*aug.noise_frac, n)
    wander_frac = rng.uniform(*aug.wander_frac, n)
    wander_hz = rng.uniform(*aug.wander_hz, n)
    filter_type = rng.integers(0, len(FILTER_TYPES), n)
    f_low = rng.uniform(*aug.highpass_hz, n)
    f_high = rng.uniform(*aug.lowpass_hz, n)
    scale = rng.uniform(*aug.scale, n)
    f_low[filter_type == FILTER_TYPES.index("low")] = np.nan
    f_high[filter_type == FILTER_TYPES.index("high")] = np.nan
    return {"shift_s": shift_s, "shift": shift, "target": target, "dropout_start": dropout_start,
            "dropout_len": dropout_len, "noise_frac": noise_frac, "wander_frac": wander_frac,
            "wander_hz": wander_hz, "filter_type": filter_type, "f_low": f_low, "f_high": f_high,
            "scale": scale}


def shift_windows(window: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """(n, leads, L) copies of `window` (leads, L) moved right by `shift` samples, zero-filled."""
    length = window.shape[-1]
    src = np.arange(length)[None, :] - shift[:, None]  # (n, L) source index of each output sample
    valid = (src >= 0) & (src < length)
    out = window[:, np.clip(src, 0, length - 1)].transpose(1, 0, 2)  # (n, leads, L)
    return out * valid[:, None, :]


def apply_dropout(x: np.ndarray, start: np.ndarray, length: np.ndarray) -> None:
    """Zero samples [start, start + length) of every variant in place (length 0: untouched)."""
    t = np.arange(x.shape[-1])[None, :]
    patch = (t >= start[:, None]) & (t < (start + length)[:, None])
    x[np.broadcast_to(patch[:, None, :], x.shape)] = 0.0


def butter_coefficients(kind: str, f_low: float, f_high: float, fs: float, order: int):
    """(b, a) of the order-`order` Butterworth low-pass (f_high), high-pass (f_low) or band-pass."""
    if kind == "low":
        return sps.butter(order, f_high, btype="lowpass", fs=fs)
    if kind == "high":
        return sps.butter(order, f_low, btype="highpass", fs=fs)
    return sps.butter(order, [f_low, f_high], btype="bandpass", fs=fs)


def augment_episode(window: np.ndarray, changepoint: int, fs: float, rng: np.random.Generator,
                    aug: AugmentSettings) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """All variants of one episode window (leads, L): the (n, leads, L) float64 signals and params.

    The steps run in the scripts' order: shift, dropout, Gaussian noise, baseline wander, one
    zero-phase Butterworth filter, amplitude scale. Noise and wander are relative to max|x| after
    dropout, taken over both leads together.
    """
    n, length = aug.n_variants, window.shape[-1]
    p = draw_parameters(rng, n, length, changepoint, fs, aug)
    x = shift_windows(window.astype(np.float64), p["shift"])
    apply_dropout(x, p["dropout_start"], p["dropout_len"])
    p["amp"] = np.abs(x).max(axis=(1, 2))
    p["noise_std"] = p["noise_frac"] * p["amp"]
    p["wander_amp"] = p["wander_frac"] * p["amp"]
    x += rng.standard_normal(x.shape) * p["noise_std"][:, None, None]
    t = np.arange(length) / fs
    x += (p["wander_amp"][:, None] * np.sin(2 * np.pi * p["wander_hz"][:, None] * t[None, :]))[:, None, :]
    for v in range(n):  # each variant has its own filter: filtfilt cannot batch them
        b, a = butter_coefficients(FILTER_TYPES[p["filter_type"][v]], p["f_low"][v], p["f_high"][v],
                                   fs, aug.filter_order)
        x[v] = sps.filtfilt(b, a, x[v], axis=-1)
    x *= p["scale"][:, None, None]
    return x, p


_PARAM_COLUMNS = ["shift_s", "dropout_start", "dropout_len", "amp", "noise_std", "wander_amp", "wander_hz",
                  "filter_type", "f_low", "f_high", "scale"]


def _variant_rows(episode: pd.Series, row: int, p: dict[str, np.ndarray], n: int) -> pd.DataFrame:
    table = pd.DataFrame({"sample": row * n + np.arange(n), "episode": episode["episode"],
                          "record": episode["record"], "variant": np.arange(n),
                          "target_s": p["target"] / float(episode["fs"])})
    for col in _PARAM_COLUMNS:
        table[col] = p[col]
    table["filter_type"] = np.asarray(FILTER_TYPES)[p["filter_type"]]
    return table


def read_episodes(out: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """episodes.csv and windows.npy of the extract stage, checked against each other."""
    csv, npy = out / EPISODES_CSV, out / WINDOWS_NPY
    for path in (csv, npy):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run the extract stage first (`make data TASK=ecg`)")
    episodes = pd.read_csv(csv, dtype={"record": str})
    windows = np.load(npy, mmap_mode="r")
    if windows.ndim != 3 or len(windows) != len(episodes):
        raise ValueError(f"{npy} has shape {windows.shape} but {csv} lists {len(episodes)} episodes")
    return episodes, windows


def augment_stage(cfg: DictConfig) -> None:
    """Write augmented.npy (E * n, leads, L) float32 and augmented.csv (one row per sample)."""
    if _outputs_exist(cfg, [AUGMENTED_CSV, AUGMENTED_NPY], "augment"):
        return
    out = Path(cfg.task.processed_dir)
    episodes, windows = read_episodes(out)
    aug = AugmentSettings.from_cfg(cfg.task.data)
    n = aug.n_variants
    tables = []
    with atomic_path(out / AUGMENTED_NPY) as tmp:
        # Written straight into a memory-mapped .npy: the full array is ~1 GB for the VFDB.
        dest = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                         shape=(len(episodes) * n, *windows.shape[1:]))
        for row, episode in episodes.iterrows():
            # The integer changepoint, not int(relative_time_s * fs) as the scripts re-derived it:
            # that truncates 3 of the 242 VFDB episodes one sample low (4.076 * 250 = 1018.99...).
            rng = episode_rng(cfg.seed, episode["episode"])
            x, p = augment_episode(np.asarray(windows[row]), int(episode["changepoint"]),
                                   float(episode["fs"]), rng, aug)
            dest[row * n:(row + 1) * n] = x
            tables.append(_variant_rows(episode, row, p, n))
        dest.flush()
        del dest
    write_csv(pd.concat(tables, ignore_index=True), out / AUGMENTED_CSV)
    log.info("augment: %d episodes x %d variants = %d samples", len(episodes), n, len(episodes) * n)


# --------------------------------------------------------------------------------------------
# Stage 3: model-input features (median filter + stride)
# --------------------------------------------------------------------------------------------


def median_stride(x: np.ndarray, width: int = 11, stride: int = 10) -> np.ndarray:
    """Median filter of odd `width` along the last axis, then every `stride`-th sample.

    Same numbers as the authors' trainer, `scipy.signal.medfilt(channel, width)[::stride]`:
    medfilt zero-pads the edges (scipy.ndimage.median_filter would reflect them), so the signal
    is zero-padded here too. Only the kept positions are computed, from a strided window view,
    which is ~10x less work than filtering every sample and ~40x faster than ndimage.
    """
    if width < 1 or width % 2 == 0:
        raise ValueError(f"median filter width must be odd and positive, got {width}")
    half = width // 2
    pad = [(0, 0)] * (x.ndim - 1) + [(half, half)]
    windows = sliding_window_view(np.pad(x, pad), width, axis=-1)[..., ::stride, :]
    return np.partition(windows, half, axis=-1)[..., half]


def feature_files() -> dict[str, int]:
    """Output file -> channel count: leads.npy, then one extra_<kind>.npy per kind with channels."""
    files = {LEADS_NPY: N_LEADS}
    files.update({extra_npy(kind): N_EXTRA["1d"][kind] for kind in KINDS if N_EXTRA["1d"][kind] > 0})
    return files


def chunk_features(x: np.ndarray, width: int, stride: int, duration_s: float) -> dict[str, np.ndarray]:
    """Features of a chunk of augmented signals (n, leads, L): file name -> (n, k, L // stride)."""
    feats = {LEADS_NPY: median_stride(np.ascontiguousarray(x, dtype=np.float32), width, stride)}
    # Extra channels at full resolution, computed in float64 and cast to float32 before the
    # filter, as the scripts built them in numpy float64 and filtered the float32 tensor. (Our
    # augmented signals are stored as float32, so the float64 here starts from float32 values.)
    signal64 = torch.from_numpy(np.asarray(x, dtype=np.float64))
    for kind in KINDS:
        if N_EXTRA["1d"][kind] > 0:
            extra = extra_channels_1d(signal64, kind, duration_s=duration_s).numpy().astype(np.float32)
            feats[extra_npy(kind)] = median_stride(extra, width, stride)
    return feats


def features_stage(cfg: DictConfig, chunk: int = 1000) -> None:
    """Write leads.npy and extra_<kind>.npy (float32, (N, k, L // stride)) from augmented.npy."""
    files = feature_files()
    if _outputs_exist(cfg, list(files), "features"):
        return
    data, out = cfg.task.data, Path(cfg.task.processed_dir)
    src = out / AUGMENTED_NPY
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found: run the augment stage first (`make data TASK=ecg`)")
    aug = np.load(src, mmap_mode="r")
    width, stride = int(data.median_width), int(data.stride)
    n, length = len(aug), aug.shape[-1]
    out_len = len(range(0, length, stride))
    with contextlib.ExitStack() as stack:
        dests = {}
        for name, k in files.items():
            tmp = stack.enter_context(atomic_path(out / name))
            dests[name] = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, k, out_len))
        for lo in range(0, n, chunk):
            for name, values in chunk_features(aug[lo:lo + chunk], width, stride, float(data.window_s)).items():
                dests[name][lo:lo + chunk] = values
        for name in dests:
            dests[name].flush()
        dests.clear()  # release the memory maps before the temp files are renamed
    log.info("features: %d samples -> %s", n, ", ".join(files))


# --------------------------------------------------------------------------------------------
# Loader: the trainer's view of the ECG task
# --------------------------------------------------------------------------------------------


@dataclass
class EcgTaskData:
    """Preprocessed inputs (N, 2 + k, L') and targets (N, 1) on one device, plus the fold of
    each sample (folds group all variants of an episode, or of a record)."""

    x: torch.Tensor
    y: torch.Tensor
    sample_fold: np.ndarray
    target_names: tuple[str, ...] = ("",)
    target_stats_samples: int | None = None

    @property
    def n_channels(self) -> int:
        return int(self.x.shape[1])

    def split(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        folds_present(self.sample_fold, fold)
        return np.flatnonzero(self.sample_fold != fold), np.flatnonzero(self.sample_fold == fold)

    def targets(self, idx: torch.Tensor) -> torch.Tensor:
        return self.y[idx.to(self.y.device)]

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        return self.x[idx.to(self.x.device)]


def _require_processed(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `make data TASK=ecg` first")
    return path


def _sample_folds(out: Path, samples: pd.DataFrame, group_by: str) -> np.ndarray:
    """The fold of every sample, through its episode name, from folds.csv column fold_<group_by>."""
    folds_csv = _require_processed(out / FOLDS_CSV)
    folds = pd.read_csv(folds_csv, dtype={"record": str})
    column = f"fold_{group_by}"
    if column not in folds.columns:
        raise ValueError(f"{folds_csv} has no column {column!r} (task.data.group_by={group_by!r})")
    mapping = dict(zip(folds["episode"], folds[column]))
    missing = sorted(set(samples["episode"]) - set(mapping))
    if missing:
        raise ValueError(f"{folds_csv} lacks episodes {missing[:5]}...: rerun the folds stage (overwrite=true)")
    return samples["episode"].map(mapping).to_numpy(dtype=np.int64)


def load_task_data(cfg: DictConfig, arm: DictConfig, device) -> EcgTaskData:
    """leads.npy (+ extra_<arm.channels>.npy) as one float32 tensor on `device`, with targets and folds."""
    out = Path(cfg.task.processed_dir)
    samples = pd.read_csv(_require_processed(out / AUGMENTED_CSV), dtype={"record": str})
    arrays = [np.load(_require_processed(out / LEADS_NPY), mmap_mode="r")]
    if arm.channels != "none":
        if arm.channels not in KINDS:
            raise ValueError(f"arm {arm.name!r}: unknown channel kind {arm.channels!r}; expected one of {KINDS}")
        arrays.append(np.load(_require_processed(out / extra_npy(arm.channels)), mmap_mode="r"))
    for arr in arrays:
        if len(arr) != len(samples):
            raise ValueError(f"{out}: {len(arr)} preprocessed samples but {AUGMENTED_CSV} lists {len(samples)}: "
                             "rerun `make data TASK=ecg ARGS=overwrite=true`")
    x = torch.from_numpy(np.concatenate(arrays, axis=1).astype(np.float32, copy=False)).to(device)
    y = torch.from_numpy(samples["target_s"].to_numpy(np.float32)[:, None]).to(device)
    return EcgTaskData(x=x, y=y, sample_fold=_sample_folds(out, samples, cfg.task.data.group_by))
