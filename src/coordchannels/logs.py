"""Per-fold training logs in the published layout (SPEC section 6).

`<logs_dir>/<Model>/<arm>_set_fold_<k>_log.csv`; a run over several seeds names the seed too:
`<arm>_set_seed_<s>_fold_<k>_log.csv`.
"""

from __future__ import annotations

from pathlib import Path


def log_path(logs_dir: str | Path, model: str, arm: str, fold: int, seed: int | None = None) -> Path:
    """Where the log of one job lives; `model` is the log folder name, e.g. 'NimeshaNet'."""
    name = f"{arm}_set_fold_{fold}_log.csv" if seed is None else f"{arm}_set_seed_{seed}_fold_{fold}_log.csv"
    return Path(logs_dir) / model / name


def log_columns(target_names: tuple[str, ...]) -> list[str]:
    """Columns of a log: 1-D ('',) -> epoch,train_r2,test_r2; 2-D ('h','k') -> per coordinate."""
    suffixes = [f"_{t}" if t else "" for t in target_names]
    return ["epoch"] + [f"train_r2{s}" for s in suffixes] + [f"test_r2{s}" for s in suffixes]
