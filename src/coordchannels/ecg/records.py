"""VFDB records and the extract stage (SPEC section 1): one 20 s window around every onset of a
dangerous rhythm.

Outputs in the task's processed folder: episodes.csv (one row per episode) and windows.npy
(E, 2, L) float32, zero-padded at the end where a window runs past the record.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb
from omegaconf import DictConfig

from coordchannels.io import save_npy, write_csv
from coordchannels.settings import SettingError
from coordchannels.stages import StageContext

log = logging.getLogger(__name__)

N_LEADS = 2
LABEL_MATCHES = ("substring", "exact")
EPISODES_CSV = "episodes.csv"
WINDOWS_NPY = "windows.npy"


def episode_name(record, index: int) -> str:
    """`{record}_episode{i}`: the authors' window file name without `.npy`; folds group by it."""
    return f"{record}_episode{index}"


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
            f"ECG record {name!r}: read signal of shape {got} but {hea} announces ({header.sig_len}, {N_LEADS})"
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
    raise SettingError(f"task.data.label_match must be one of {list(LABEL_MATCHES)}, got {label_match!r}")


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
            {
                "record": rec.name,
                "episode_index": i,
                "label": labels[i],
                "onset_sample": int(onsets[i]),
                "window_start": start,
                "relative_time_s": offset / rec.fs,
                "episode": episode_name(rec.name, i),
                "changepoint": offset,
                "fs": rec.fs,
            }
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


def extract_stage(cfg: DictConfig, ctx: StageContext) -> None:
    """Write episodes.csv and windows.npy (float32, zero-padded at the end) from the raw records."""
    episodes, windows = extract_episodes(cfg.task.data)
    save_npy(ctx.out / WINDOWS_NPY, windows)
    write_csv(episodes, ctx.out / EPISODES_CSV)
    log.info(
        "extract: %d episodes (label_match=%s) from %d records",
        len(episodes),
        cfg.task.data.label_match,
        len(cfg.task.data.records),
    )


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
