"""The augment stage (SPEC section 1): 100 random perturbations of every episode.

Outputs: augmented.npy (E * n_variants, 2, L) float32 and augmented.csv, one row per sample with
every drawn parameter; sample index = episode_row * n_variants + variant.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from scipy import signal as sps

from coordchannels.ecg.records import read_episodes
from coordchannels.io import atomic_path, write_csv
from coordchannels.stages import StageContext

log = logging.getLogger(__name__)

FILTER_TYPES = ("low", "high", "band")
AUGMENTED_CSV = "augmented.csv"
AUGMENTED_NPY = "augmented.npy"


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
            n_variants=int(data.n_variants),
            shift_s=float(data.shift_s),
            dropout_s=pair("dropout_s"),
            noise_frac=pair("noise_frac"),
            wander_frac=pair("wander_frac"),
            wander_hz=pair("wander_hz"),
            lowpass_hz=pair("lowpass_hz"),
            highpass_hz=pair("highpass_hz"),
            filter_order=int(data.filter_order),
            scale=pair("scale"),
        )


def episode_rng(seed: int, name: str) -> np.random.Generator:
    """A generator of its own per episode, so an episode's variants do not depend on which
    episodes came before it. crc32 of the name, not hash(): Python salts str hashes per process."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def draw_parameters(
    rng: np.random.Generator, n: int, length: int, changepoint: int, fs: float, aug: AugmentSettings
) -> dict[str, np.ndarray]:
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
    return {
        "shift_s": shift_s,
        "shift": shift,
        "target": target,
        "dropout_start": dropout_start,
        "dropout_len": dropout_len,
        "noise_frac": noise_frac,
        "wander_frac": wander_frac,
        "wander_hz": wander_hz,
        "filter_type": filter_type,
        "f_low": f_low,
        "f_high": f_high,
        "scale": scale,
    }


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


def augment_episode(
    window: np.ndarray, changepoint: int, fs: float, rng: np.random.Generator, aug: AugmentSettings
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
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
        b, a = butter_coefficients(
            FILTER_TYPES[p["filter_type"][v]], p["f_low"][v], p["f_high"][v], fs, aug.filter_order
        )
        x[v] = sps.filtfilt(b, a, x[v], axis=-1)
    x *= p["scale"][:, None, None]
    return x, p


_PARAM_COLUMNS = [
    "shift_s",
    "dropout_start",
    "dropout_len",
    "amp",
    "noise_std",
    "wander_amp",
    "wander_hz",
    "filter_type",
    "f_low",
    "f_high",
    "scale",
]


def _variant_rows(episode: pd.Series, row: int, p: dict[str, np.ndarray], n: int) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "sample": row * n + np.arange(n),
            "episode": episode["episode"],
            "record": episode["record"],
            "variant": np.arange(n),
            "target_s": p["target"] / float(episode["fs"]),
        }
    )
    for col in _PARAM_COLUMNS:
        table[col] = p[col]
    table["filter_type"] = np.asarray(FILTER_TYPES)[p["filter_type"]]
    return table


CHANGEPOINT_RULES = ("exact", "scripts")


def episode_changepoint(episode: pd.Series, rule: str = "exact") -> int:
    """The changepoint sample the augmentation starts from (task.data.changepoint).

    exact: the onset's own sample offset in the window. scripts: int(relative_time_s * fs), as the
    authors' augmentation re-derived it from the logged seconds; floating point puts 3 of the 242
    VFDB episodes one sample (4 ms) low (4.076 * 250 = 1018.99...).

    >>> ep = pd.Series({"changepoint": 1019, "relative_time_s": 1019 / 250, "fs": 250.0})
    >>> episode_changepoint(ep, "exact"), episode_changepoint(ep, "scripts")
    (1019, 1018)
    """
    if rule == "exact":
        return int(episode["changepoint"])
    if rule == "scripts":
        return int(float(episode["relative_time_s"]) * float(episode["fs"]))
    raise ValueError(f"task.data.changepoint must be one of {list(CHANGEPOINT_RULES)}, got {rule!r}")


def augment_stage(cfg: DictConfig, ctx: StageContext) -> None:
    """Write augmented.npy (E * n, leads, L) float32 and augmented.csv (one row per sample)."""
    episodes, windows = read_episodes(ctx.after["extract"])
    aug = AugmentSettings.from_cfg(cfg.task.data)
    n = aug.n_variants
    tables = []
    with atomic_path(ctx.out / AUGMENTED_NPY) as tmp:
        # Written straight into a memory-mapped .npy: the full array is ~1 GB for the VFDB.
        dest = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float32, shape=(len(episodes) * n, *windows.shape[1:])
        )
        rule = str(cfg.task.data.get("changepoint", "exact"))
        for row, episode in episodes.iterrows():
            rng = episode_rng(cfg.seed, episode["episode"])
            x, p = augment_episode(
                np.asarray(windows[row]), episode_changepoint(episode, rule), float(episode["fs"]), rng, aug
            )
            dest[row * n : (row + 1) * n] = x
            tables.append(_variant_rows(episode, row, p, n))
        dest.flush()
        del dest
    write_csv(pd.concat(tables, ignore_index=True), ctx.out / AUGMENTED_CSV)
    log.info("augment: %d episodes x %d variants = %d samples", len(episodes), n, len(episodes) * n)
