"""Tiny synthetic WFDB records in the VFDB layout, whose episodes are known by construction.

Each record is `NNN.hea` + `NNN.dat` (format 212, 2 leads, 250 Hz) + `NNN.atr` (rhythm
annotations whose aux notes end in a NUL byte, as in the VFDB). The digital signal encodes the
sample index (lead 0: i % 2000 - 1000, lead 1: 700 - i % 1500) with gain 200, so a window's
content tells where it was cut from, independently of the code under test.

`EXPECTED[label_match]` lists the episodes extraction must find, worked out by hand from SPEC
section 1: (record, episode_index, label, onset_sample, window_start, relative_time_s).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import wfdb

from coordchannels import download
from coordchannels.download import file_sha256

FS = 250
GAIN = 200.0

# record name -> (length in samples, [(sample, aux note)])
RECORDS: dict[str, tuple[int, list[tuple[int, str]]]] = {
    "900": (
        15000,  # 60 s
        [
            (0, "(N\x00"),
            (1000, "(VT\x00"),  # onset in the first 10 s: window starts at 0, relative 4 s
            (3000, "(N\x00"),
            (6000, "(VF\x00"),  # ordinary window: 3500..8500, relative 10 s
            (7500, "(VFL\x00"),  # 6 s after the previous onset: window starts there, relative 6 s
            (11000, "(SVTA\x00"),  # substring match only ("VT" in "SVTA")
            (14000, "(ASYS\x00"),  # window 11500..15000 runs past the end: 1500 zero samples
        ],
    ),
    "901": (
        40000,  # 160 s
        [
            (10, "(N\x00"),
            (20000, "(SVTA\x00"),  # substring only
            (21000, "(VT\x00"),  # close to the SVTA (4 s) under substring, not under exact
            (25000, "(NOISE\x00"),
            (30000, "(VFIB\x00"),
            (31000, "(HGEA\x00"),  # close to the VFIB: window 30000..35000, relative 4 s
            (36000, "(B\x00"),
        ],
    ),
}

_W = 5000  # 20 s at 250 Hz
EXPECTED = {
    "substring": [
        ("900", 0, "VT", 1000, 0, 4.0),
        ("900", 1, "VF", 6000, 3500, 10.0),
        ("900", 2, "VFL", 7500, 6000, 6.0),
        ("900", 3, "SVTA", 11000, 8500, 10.0),
        ("900", 4, "ASYS", 14000, 11500, 10.0),
        ("901", 0, "SVTA", 20000, 17500, 10.0),
        ("901", 1, "VT", 21000, 20000, 4.0),
        ("901", 2, "VFIB", 30000, 27500, 10.0),
        ("901", 3, "HGEA", 31000, 30000, 4.0),
    ],
    "exact": [
        ("900", 0, "VT", 1000, 0, 4.0),
        ("900", 1, "VF", 6000, 3500, 10.0),
        ("900", 2, "VFL", 7500, 6000, 6.0),
        ("900", 3, "ASYS", 14000, 11500, 10.0),
        ("901", 0, "VT", 21000, 18500, 10.0),
        ("901", 1, "VFIB", 30000, 27500, 10.0),
        ("901", 2, "HGEA", 31000, 30000, 4.0),
    ],
}


def digital_signal(n_samples: int) -> np.ndarray:
    """The (n_samples, 2) digital values of every fixture record: each encodes its sample index."""
    i = np.arange(n_samples)
    return np.stack([i % 2000 - 1000, 700 - i % 1500], axis=1).astype(np.int64)


def physical_window(start: int, end: int, length: int = _W) -> np.ndarray:
    """The expected (2, length) window: physical values of samples start..end, zero-padded."""
    out = np.zeros((2, length))
    out[:, : end - start] = digital_signal(end)[start:end].T / GAIN
    return out


def write_record(folder: Path, name: str, n_samples: int, annotations: list[tuple[int, str]]) -> Path:
    """Write `name`.hea/.dat/.atr into `folder`; return the record path without extension."""
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        name,
        fs=FS,
        units=["mV", "mV"],
        sig_name=["ECG1", "ECG2"],
        d_signal=digital_signal(n_samples),
        fmt=["212", "212"],
        adc_gain=[GAIN, GAIN],
        baseline=[0, 0],
        write_dir=str(folder),
    )
    samples = np.array([s for s, _ in annotations], dtype=np.int64)
    wfdb.wrann(
        name,
        "atr",
        samples,
        symbol=["+"] * len(samples),
        aux_note=[a for _, a in annotations],
        write_dir=str(folder),
    )
    return folder / name


def write_fixture_records(folder: Path) -> list[str]:
    """Write every record of RECORDS into `folder`; return their names."""
    for name, (n, marks) in RECORDS.items():
        write_record(folder, name, n, marks)
    return list(RECORDS)


def truncate_dat(folder: Path, name: str, n_bytes: int = 300) -> None:
    """Cut the last `n_bytes` off a record's .dat, as an interrupted download would."""
    dat = folder / f"{name}.dat"
    data = dat.read_bytes()
    dat.write_bytes(data[:-n_bytes])


def set_header_length(folder: Path, name: str, sig_len: int) -> None:
    """Rewrite the signal length in a record's header so that it no longer matches its .dat."""
    hea = folder / f"{name}.hea"
    lines = hea.read_text().splitlines()
    fields = lines[0].split()
    fields[3] = str(sig_len)
    lines[0] = " ".join(fields)
    hea.write_text("\n".join(lines) + "\n")


def fixture_cfg(root: Path, raw: Path, *overrides: str):
    """The real config of the ECG task with every path under `root`, reading records from `raw`."""
    from tests.conftest import compose_config

    return compose_config(
        [
            f"paths.root_dir={root}",
            "task=ecg",
            f"task.data.raw_dir={raw}",
            f"task.data.records=[{','.join(RECORDS)}]",
            "task.data.n_folds=2",
            *overrides,
        ]
    )


@contextlib.contextmanager
def registered(mirror):
    """The fixture records' checksums in the VFDB registry, as the real records' are."""
    sums = {p.name: file_sha256(p) for p in Path(mirror).iterdir()}
    real = download.registry
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(download, "registry", lambda which: sums if which == "vfdb" else real(which))
        yield
