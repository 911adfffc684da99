"""Per-fold training logs in the published layout (SPEC section 6): naming, discovery, validation.

`<logs_dir>/<Model>/<arm>_set_fold_<k>_log.csv`; a run over several seeds names the seed too:
`<arm>_set_seed_<s>_fold_<k>_log.csv`. The pairing unit of a comparison is (seed, fold), with
seed None for the single-seed names. Columns: 1-D `epoch,train_r2,test_r2`; 2-D one train and
one test column per coordinate, `epoch,train_r2_h,train_r2_k,test_r2_h,test_r2_k`.

`load_logs` reads and checks a whole folder before anything downstream runs, so that a bad
folder fails with one clear `LogError` (naming the file and the problem) and no output is
written from half of it. Given the `Expected` (seed, fold) units of a complete run, it also
refuses a folder that lacks any of them (say fold 5 in both arms), naming the missing files;
with `allow_incomplete` it instead keeps the units present in every compared arm and reports
what is missing (`Loaded.missing`), for the tables to flag.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from coordchannels.components import arm_order, model_order, ordered

# A spline of degree 3 (UnivariateSpline's default) needs at least 4 points.
MIN_EPOCHS = 4

_NAME = re.compile(r"^(?P<arm>.+?)_set_(?:seed_(?P<seed>\d+)_)?fold_(?P<fold>\d+)_log\.csv$")


class LogError(ValueError):
    """A per-fold log or a log folder is unusable; the message names the file and the problem."""


def log_path(logs_dir: str | Path, model: str, arm: str, fold: int, seed: int | None = None) -> Path:
    """Where the log of one job lives; `model` is the log folder name, e.g. 'NimeshaNet'."""
    name = f"{arm}_set_fold_{fold}_log.csv" if seed is None else f"{arm}_set_seed_{seed}_fold_{fold}_log.csv"
    return Path(logs_dir) / model / name


def log_columns(target_names: tuple[str, ...]) -> list[str]:
    """Columns of a log: 1-D ('',) -> epoch,train_r2,test_r2; 2-D ('h','k') -> per coordinate."""
    suffixes = [f"_{t}" if t else "" for t in target_names]
    return ["epoch"] + [f"train_r2{s}" for s in suffixes] + [f"test_r2{s}" for s in suffixes]


# The layouts a log may have, by number of target coordinates.
KNOWN_COLUMNS = {1: log_columns(("",)), 2: log_columns(("h", "k"))}


@dataclass(frozen=True)
class FoldLog:
    """One validated per-fold log: who produced it and its per-epoch R^2 curves."""

    model: str
    arm: str
    seed: int | None
    fold: int
    path: Path
    epochs: np.ndarray  # epoch numbers as logged (strictly increasing integers)
    train: np.ndarray  # train R^2 per epoch; 2-D logs: mean of the coordinates (SPEC section 7)
    test: np.ndarray  # test R^2 per epoch, likewise
    dims: int  # 1 or 2 target coordinates

    @property
    def unit(self) -> tuple[int | None, int]:
        """The pairing unit: logs of two arms with the same (seed, fold) are compared."""
        return (self.seed, self.fold)


def unit_key(unit: tuple[int | None, int]) -> tuple[int, int]:
    """Sort key of a (seed, fold) unit: single-seed logs (seed None) first, then by seed and fold."""
    seed, fold = unit
    return (-1 if seed is None else seed, fold)


def parse_log_name(name: str) -> tuple[str, int | None, int] | None:
    """(arm, seed, fold) from a log file name, or None when the name is not a per-fold log."""
    match = _NAME.match(name)
    if match is None:
        return None
    seed = match["seed"]
    return match["arm"], (int(seed) if seed is not None else None), int(match["fold"])


def order_models(names: Sequence[str]) -> list[str]:
    """Models in the rank their config files give (the paper's Table 3 order), others alphabetically."""
    return ordered(names, model_order())


def order_arms(names: Sequence[str]) -> list[str]:
    """Arms in the rank their config files give (baseline first), others alphabetically. All-pairs
    comparisons take later minus earlier in this order, so (control, study) is study - control."""
    return ordered(names, arm_order())


def read_log(path: str | Path, model: str = "", arm: str = "", seed: int | None = None, fold: int = 0) -> FoldLog:
    """Read one per-fold log and check its columns, values and epochs; raise LogError if bad."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise LogError(f"{path}: not a readable CSV log ({exc})") from exc
    columns = [str(c).strip() for c in frame.columns]
    dims = next((d for d, cols in KNOWN_COLUMNS.items() if columns == cols), None)
    if dims is None:
        expected = " or ".join(",".join(cols) for cols in KNOWN_COLUMNS.values())
        raise LogError(f"{path}: columns {','.join(columns)!s} are not a per-fold log layout; expected {expected}")
    frame.columns = columns
    if len(frame) < MIN_EPOCHS:
        raise LogError(f"{path}: {len(frame)} epoch rows; the instability spline needs at least {MIN_EPOCHS}")
    values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise LogError(
            f"{path}: {int(bad.sum())} missing, NaN or non-numeric value(s), first in column "
            f"{columns[col]!r} at data row {row + 1}"
        )
    r2 = values[:, 1:]
    above = r2 > 1  # R^2 = 1 - SS_res/SS_tot can be any negative number, but never above 1
    if above.any():
        row, col = np.argwhere(above)[0]
        raise LogError(
            f"{path}: {int(above.sum())} R² value(s) above 1 (impossible: R² <= 1), first "
            f"{float(r2[row, col])!r} in column {columns[col + 1]!r} at data row {row + 1}"
        )
    epochs = values[:, 0]
    if np.any(epochs != np.round(epochs)) or np.any(np.diff(epochs) <= 0):
        raise LogError(f"{path}: the epoch column must hold strictly increasing integers")
    train = values[:, 1 : 1 + dims].mean(axis=1)
    test = values[:, 1 + dims :].mean(axis=1)
    return FoldLog(model, arm, seed, fold, path, epochs.astype(int), train, test, dims)


def discover(logs_dir: str | Path) -> dict[str, dict[str, dict[tuple[int | None, int], Path]]]:
    """Per model folder, per arm, per (seed, fold): the log file; models in Table 3 order.

    A model is a sub-folder holding at least one `*_log.csv`; other folders and files are
    ignored. A `*_log.csv` whose name does not follow the layout is an error, since it most
    likely is a log the user expects to be counted.
    """
    logs_dir = Path(logs_dir)
    if not logs_dir.is_dir():
        raise FileNotFoundError(f"log folder {logs_dir} does not exist (stats.logs_dir)")
    found: dict[str, dict[str, dict[tuple[int | None, int], Path]]] = {}
    for folder in sorted(p for p in logs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(folder.glob("*_log.csv")):
            parsed = parse_log_name(path.name)
            if parsed is None:
                raise LogError(
                    f"{path}: file name does not follow <arm>_set_fold_<k>_log.csv "
                    "or <arm>_set_seed_<s>_fold_<k>_log.csv"
                )
            arm, seed, fold = parsed
            found.setdefault(folder.name, {}).setdefault(arm, {})[(seed, fold)] = path
    if not found:
        raise LogError(
            f"{logs_dir}: no per-fold logs found; expected <Model>/<arm>_set_fold_<k>_log.csv "
            "(e.g. NimeshaNet/control_set_fold_1_log.csv)"
        )
    return {model: found[model] for model in order_models(list(found))}


def expected_units(units: set[tuple[int | None, int]]) -> set[tuple[int | None, int]]:
    """Every (seed, fold) a complete run has: per seed, the folds from the lowest to the highest seen.

    This makes a gap (folds 1, 2, 4, 5) visible as a missing fold 3 even when no arm has it.
    """
    folds = {fold for _, fold in units}
    full = range(min(folds), max(folds) + 1)
    return {(seed, fold) for seed in {s for s, _ in units} for fold in full}


@dataclass(frozen=True)
class Expected:
    """The (seed, fold) units of a complete run: every seed times every fold.

    `seeds` holds None for single-seed runs, whose log names carry no seed; `seeds=None` means
    "the seeds found in the logs" (a bare folder of logs does not say how many seeds its run had).
    """

    folds: tuple[int, ...]
    seeds: tuple[int | None, ...] | None = (None,)
    source: str = ""  # where the expectation comes from, for messages (e.g. 'task.data.n_folds')

    def units(self, found: set[tuple[int | None, int]]) -> set[tuple[int | None, int]]:
        seeds = self.seeds if self.seeds is not None else {s for s, _ in found}
        return {(seed, fold) for seed in seeds for fold in self.folds}

    def describe(self) -> str:
        folds = describe_folds(self.folds)
        if self.seeds is None:
            seeds = "each seed present"
        elif self.seeds == (None,):
            seeds = "one seed"
        else:
            seeds = f"seeds {', '.join(str(s) for s in self.seeds)}"
        return f"folds {folds} x {seeds}" + (f" ({self.source})" if self.source else "")


def describe_folds(folds: Sequence[int]) -> str:
    """'1-5' for a run of consecutive folds, else '1, 2, 4'."""
    folds = sorted(folds)
    if len(folds) > 2 and folds == list(range(folds[0], folds[-1] + 1)):
        return f"{folds[0]}-{folds[-1]}"
    return ", ".join(str(f) for f in folds)


def describe_unit(unit: tuple[int | None, int]) -> str:
    seed, fold = unit
    return f"fold {fold}" if seed is None else f"seed {seed} fold {fold}"


def _list_paths(paths: Sequence[Path], limit: int = 10) -> str:
    shown = "\n  ".join(str(p) for p in paths[:limit])
    more = f"\n  ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return f"\n  {shown}{more}"


def check_complete(
    logs_dir: Path,
    model: str,
    arms: dict[str, dict],
    wanted: Sequence[str],
    expected: Expected | None = None,
    allow_incomplete: bool = False,
) -> tuple[set, list[Path]]:
    """Every wanted arm is present and has a log for every (seed, fold) of the model.

    Without `expected`, a complete set is every fold from the lowest to the highest seen, per
    seed seen. Returns (the units to compare, the missing log files): with `allow_incomplete`
    the units present in every wanted arm, else all of them (a missing file raises LogError).
    """
    missing_arms = [a for a in wanted if a not in arms]
    if missing_arms:
        present = ", ".join(order_arms(list(arms))) or "none"
        raise LogError(
            f"{logs_dir / model}: no logs of arm(s) {', '.join(missing_arms)} to compare with "
            f"(arms present: {present}); expected files like {log_path(logs_dir, model, missing_arms[0], 1).name}"
        )
    found = set().union(*(set(arms[a]) for a in wanted))
    if expected is None:
        units = expected_units(found)
    else:
        units = expected.units(found)
        extra = sorted(found - units, key=unit_key)
        if extra:
            arm = next(a for a in order_arms(wanted) if extra[0] in arms[a])
            raise LogError(
                f"{log_path(logs_dir, model, arm, extra[0][1], extra[0][0])}: {describe_unit(extra[0])} is not "
                f"one of the expected units, {expected.describe()}; {len(extra)} such unit(s). Set "
                "stats.expected_folds (and stats.expected_seeds) to the run's folds and seeds"
            )
    lacking = {arm: sorted(units - set(arms[arm]), key=unit_key) for arm in order_arms(wanted)}
    missing = [log_path(logs_dir, model, arm, fold, seed) for arm, gone in lacking.items() for seed, fold in gone]
    if not missing:
        return units, []
    if not allow_incomplete:
        arm = next(a for a, gone in lacking.items() if gone)
        expectation = (
            f"a complete run has {expected.describe()}" if expected else "every arm needs the same (seed, fold) logs"
        )
        raise LogError(
            f"missing per-fold log {missing[0]} ({len(lacking[arm])} missing for arm {arm!r}, {len(missing)} in all; "
            f"{expectation}). Missing:{_list_paths(missing)}"
            + (
                "\nTo compare the units present in every arm anyway, flagged as incomplete in the tables, "
                "set stats.allow_incomplete=true"
                if expected is not None
                else ""
            )
        )
    present = set.intersection(*(set(arms[a]) for a in wanted)) & units
    return present, missing


def check_consistent(model_dir: Path, logs: list[FoldLog]) -> None:
    """All logs of one model share the layout (1-D/2-D) and the epochs, so folds can be paired."""
    first = logs[0]
    for log in logs[1:]:
        if log.dims != first.dims:
            raise LogError(
                f"{log.path}: {log.dims}-D columns but {first.path.name} in {model_dir} has {first.dims}-D columns"
            )
        if len(log.epochs) != len(first.epochs) or np.any(log.epochs != first.epochs):
            raise LogError(
                f"{log.path}: {len(log.epochs)} epochs ({log.epochs[0]}..{log.epochs[-1]}) but "
                f"{first.path.name} has {len(first.epochs)} ({first.epochs[0]}..{first.epochs[-1]}); "
                f"all folds of {model_dir.name} must log the same epochs"
            )


def resolve_arms(compare, present: set[str]) -> list[str]:
    """The arms to load: the two of a [a, b] comparison, or every arm present for 'all'."""
    if isinstance(compare, str):
        if compare != "all":
            raise ValueError(f"stats.compare={compare!r}: expected [arm_a, arm_b] or 'all'")
        return order_arms(list(present))
    arms = [str(a) for a in compare]
    if len(arms) != 2 or arms[0] == arms[1]:
        raise ValueError(f"stats.compare={arms}: expected two different arms [arm_a, arm_b] (diff = a - b) or 'all'")
    return arms


class Loaded(dict):
    """{model: {arm: [FoldLog by (seed, fold)]}}, with `missing`: {model: [missing log files]}
    (empty unless loaded with allow_incomplete) and the `expected` units it was checked against."""

    def __init__(self, *args, missing: dict[str, list[Path]] | None = None, expected: Expected | None = None):
        super().__init__(*args)
        self.missing = missing or {}
        self.expected = expected


def load_logs(
    logs_dir: str | Path, compare=("study", "control"), expected: Expected | None = None, allow_incomplete: bool = False
) -> Loaded:
    """Read and validate every log the comparison needs: {model: {arm: [FoldLog by (seed, fold)]}}.

    `compare` is [a, b] (those two arms must be present in every model) or 'all' (every arm
    present in a model; at least two). `expected`: the (seed, fold) units of a complete run;
    without it, the folds from the lowest to the highest present. Raises LogError before
    returning anything if any file is missing, misnamed, malformed or inconsistent with the
    others. With `allow_incomplete`, missing files are listed in the result's `missing` instead,
    and only the units present in every compared arm are loaded.
    """
    logs_dir = Path(logs_dir)
    found = discover(logs_dir)
    wanted_arms = {model: resolve_arms(compare, set(arms)) for model, arms in found.items()}
    if expected is not None and expected.seeds is None:
        # A folder does not say how many seeds its run had: expect every seed found in any of its
        # compared logs, so that a seed missing for one model or arm is still caught.
        seeds = {
            seed for model, arms in found.items() for arm in wanted_arms[model] if arm in arms for seed, _ in arms[arm]
        }
        expected = replace(
            expected,
            seeds=tuple(sorted(seeds, key=lambda s: unit_key((s, 0)))),
            source=f"{expected.source}; seeds as found in the logs".lstrip("; "),
        )
    loaded = Loaded(expected=expected)
    for model, arms in found.items():
        wanted = wanted_arms[model]
        if len(wanted) < 2:
            raise LogError(f"{logs_dir / model}: only arm {wanted[0]!r} has logs; a comparison needs two arms")
        units, missing = check_complete(logs_dir, model, arms, wanted, expected, allow_incomplete)
        if not units:
            raise LogError(
                f"{logs_dir / model}: no (seed, fold) unit has logs of every arm compared, "
                f"{', '.join(order_arms(wanted))}"
            )
        per_arm = {
            arm: [read_log(arms[arm][unit], model, arm, *unit) for unit in sorted(units, key=unit_key)]
            for arm in order_arms(wanted)
        }
        check_consistent(logs_dir / model, [log for logs in per_arm.values() for log in logs])
        loaded[model] = per_arm
        if missing:
            loaded.missing[model] = missing
    return loaded
