"""The stage contract: what a stage declares, what it made, and how that is recorded.

A stage is declared in the config (`stage_defs` in conf/config.yaml for the stages every task
shares, `task.stage_defs` for a task's own); see `coordchannels.pipeline` for the keys and for the
runner that decides what is done. This module holds what stages, readers and reports may use
without the runner: a stage's declaration (`stage_spec`), the context it runs with
(`StageContext`, `stage_context`), its record of settings and inputs (`stage_record`,
`read_record`), what it produced (`produced`, `upstream_run_ids`), digests of files and folders,
wall times, and the commit a run started from.

A stage is a function `fn(cfg, ctx)`: `cfg` is the run's config (the settings it declared are
there), `ctx` a `StageContext` that the runner builds from the declaration:

- `ctx.name`: the stage's name;
- `ctx.out`: its folder (declared `out`), where it writes its outputs;
- `ctx.inputs`: {config key: path} of its declared `inputs` (`stats.logs_dir:*/*_log.csv` gives
  `ctx.inputs["stats.logs_dir"]`, the folder whose matching files are digested);
- `ctx.after`: {stage name: folder} of the stages it reads (declared `after`), whose outputs the
  runner has checked before calling it;
- `ctx.log`: the logger `coordchannels.stages.<name>`; while the stage runs, its records go to the
  stage's log file (`<out>/logs/<name>.log`) as every record does.

Code that calls a stage's function without the runner (a test, a recomputation into another
folder) builds the same context with `stage_context(cfg, name)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from coordchannels.io import file_sha256
from coordchannels.settings import canonical, plain

log = logging.getLogger(__name__)


ON_CHANGE = ("refuse", "rerun")


# Record keys that say which content was read (digests, upstream run ids), not a setting.
DIGEST_KEYS = ("sha256(", "listing(", "run(")


STAGE_KEYS = {"fn", "out", "outputs", "settings", "after", "inputs", "watch", "on_change", "check", "plan"}


class StageError(RuntimeError):
    """A stage cannot run (unknown name, stale or missing inputs); the message says why."""


@dataclass(frozen=True)
class Stage:
    """One declared stage (see the module docstring)."""

    name: str
    fn: str
    out: Path
    outputs: tuple[str, ...] | str = ()
    settings: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    watch: tuple[str, ...] = ()
    on_change: str = "refuse"
    check: str | None = None
    plan: str | None = None

    @property
    def record_path(self) -> Path:
        return self.out / "logs" / f"{self.name}.inputs.json"

    @property
    def sizes_path(self) -> Path:
        return self.out / "logs" / f"{self.name}.outputs.json"

    @property
    def timing_path(self) -> Path:
        return self.out / "logs" / f"{self.name}.time.json"


@dataclass(frozen=True)
class StageContext:
    """What a stage's function is given beside the config (see the module docstring)."""

    name: str
    out: Path
    inputs: dict[str, Path] = field(default_factory=dict)
    after: dict[str, Path] = field(default_factory=dict)

    @property
    def log(self) -> logging.Logger:
        """The stage's logger; the runner's handler puts its records in `out/logs/<name>.log`."""
        return logging.getLogger(f"{__name__}.{self.name}")


# --------------------------------------------------------------------------------------------
# Declarations
# --------------------------------------------------------------------------------------------
def stage_names(cfg: DictConfig) -> list[str]:
    """Every stage declared for the task: its own first, then the common ones."""
    return list(dict.fromkeys([*(cfg.task.get("stage_defs") or {}), *(cfg.get("stage_defs") or {})]))


def stage_spec(cfg: DictConfig, name: str) -> Stage:
    """The declaration of stage `name`: task-specific definitions win over common ones."""
    for defs in (cfg.task.get("stage_defs"), cfg.get("stage_defs")):
        if defs is not None and name in defs:
            return _stage(name, defs[name])
    raise StageError(f"unknown stage {name!r} for task {cfg.task.name!r}; known stages: {sorted(stage_names(cfg))}")


def _stage(name: str, node: DictConfig) -> Stage:
    spec = plain(node)
    unknown = set(spec) - STAGE_KEYS
    if unknown:
        raise StageError(f"stage {name!r}: unknown key(s) {sorted(unknown)}; a stage declares {sorted(STAGE_KEYS)}")
    for key in ("fn", "out"):
        if not spec.get(key):
            raise StageError(f"stage {name!r}: `{key}` is required")
    on_change = spec.get("on_change", "refuse")
    if on_change not in ON_CHANGE:
        raise StageError(f"stage {name!r}: on_change must be one of {list(ON_CHANGE)}, got {on_change!r}")
    outputs = spec.get("outputs") or ()
    return Stage(
        name=name,
        fn=str(spec["fn"]),
        out=Path(spec["out"]),
        outputs=outputs if isinstance(outputs, str) else tuple(outputs),
        settings=tuple(spec.get("settings") or ()),
        after=tuple(spec.get("after") or ()),
        inputs=tuple(spec.get("inputs") or ()),
        watch=tuple(spec.get("watch") or ()),
        on_change=on_change,
        check=spec.get("check"),
        plan=spec.get("plan"),
    )


def stage_function(stage: Stage) -> Callable:
    try:
        return get_method(stage.fn)
    except Exception as exc:  # hydra wraps import errors in its own types
        raise StageError(f"stage {stage.name!r}: cannot import its function {stage.fn!r} ({exc})") from exc


def stage_context(cfg: DictConfig, stage: Stage | str) -> StageContext:
    """The context the runner calls `stage` (a declaration or a stage's name) with."""
    stage = stage if isinstance(stage, Stage) else stage_spec(cfg, stage)
    return StageContext(
        name=stage.name,
        out=stage.out,
        inputs={key: path for key, path, _ in (declared_input(cfg, entry) for entry in stage.inputs)},
        after={name: stage_spec(cfg, name).out for name in stage.after},
    )


def declared_input(cfg: DictConfig, entry: str) -> tuple[str, Path, str]:
    """An `inputs` entry `key[:glob]` as (config key, the path it names, the glob of the files read)."""
    key, _, pattern = entry.partition(":")
    return key, Path(str(OmegaConf.select(cfg, key))), pattern or "**/*"


def output_paths(cfg: DictConfig, stage: Stage) -> list[Path]:
    """The stage's declared outputs as paths (relative names are under its folder)."""
    names = get_method(stage.outputs)(cfg) if isinstance(stage.outputs, str) else stage.outputs
    return [stage.out / n for n in names]


# --------------------------------------------------------------------------------------------
# Records: what a stage's outputs were made from
# --------------------------------------------------------------------------------------------
def stage_record(cfg: DictConfig, stage: Stage, _chain: tuple[str, ...] = ()) -> dict:
    """The chained settings of `stage` (its own and its upstream stages') and its input digests."""
    if stage.name in _chain:
        raise StageError(f"stages {' -> '.join([*_chain, stage.name])} form a cycle through `after`")
    record = {}
    for name in stage.after:
        up = stage_spec(cfg, name)
        record.update(stage_record(cfg, up, (*_chain, stage.name)))
        # Which run of the upstream stage made the outputs read: a rebuilt input is a changed input.
        record[f"run({name})"] = produced(up).get("run_id")
    for key in stage.settings:
        record[key] = plain(OmegaConf.select(cfg, key, throw_on_missing=True))
    for entry in stage.inputs:
        _, path, pattern = declared_input(cfg, entry)
        record[f"sha256({entry})"] = path_digest(path, pattern)
    for key in stage.watch:
        value = OmegaConf.select(cfg, key)
        record[f"listing({key})"] = None if value in (None, "") else listing_digest(Path(str(value)))
    return json.loads(canonical(record))


def read_record(stage: Stage) -> dict | None:
    if not stage.record_path.exists():
        return None
    try:
        return json.loads(stage.record_path.read_text())
    except (OSError, ValueError) as exc:
        raise StageError(
            f"{stage.record_path}: unreadable stage record ({exc}); delete it or set overwrite=true"
        ) from exc


def differing(stored: dict, wanted: dict, settings_only: bool = False) -> list[str]:
    """The record keys whose values differ, sorted; with `settings_only`, not the content digests."""
    keys = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    return [k for k in keys if not k.startswith(DIGEST_KEYS)] if settings_only else keys


def changes(stored: dict, wanted: dict, keys: list[str] | None = None) -> str:
    """'key: stored -> wanted' for `keys` (default: every key that differs)."""
    keys = differing(stored, wanted) if keys is None else keys
    return ", ".join(f"{k}: {stored.get(k, '<absent>')!r} -> {wanted.get(k, '<absent>')!r}" for k in keys)


def path_digest(path: Path, pattern: str = "**/*") -> str | None:
    """SHA-256 of a file, or `tree_sha256` of a folder's files matching `pattern`; None when the
    path does not exist."""
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return None
    return tree_sha256(path, pattern)


def listing_digest(path: Path) -> str | None:
    """SHA-256 of a file's or folder's listing: relative paths, sizes and modification times (cheap
    for gigabytes of archives; it notices a replaced, edited or added file, not a bit flipped in place)."""
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    lines = [
        f"{p.relative_to(path).as_posix() if p != path else p.name} {p.stat().st_size} {p.stat().st_mtime_ns}\n"
        for p in files
    ]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def tree_sha256(folder: Path, pattern: str = "**/*") -> str:
    """One SHA-256 for a folder: of the lines `<relative path> <file SHA-256>` of its files that
    match `pattern`, sorted by path; hidden (temporary) files are left out."""
    lines = sorted(
        f"{p.relative_to(folder).as_posix()} {file_sha256(p)}\n"
        for p in folder.glob(pattern)
        if p.is_file() and not p.name.startswith(".")
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def output_files(cfg: DictConfig, stage: Stage) -> dict[str, Path]:
    """{name: path} of the stage's declared outputs that are files (folders are not summed)."""
    return {
        str(p.relative_to(stage.out) if p.is_relative_to(stage.out) else p): p
        for p in output_paths(cfg, stage)
        if p.is_file()
    }


def output_sizes(cfg: DictConfig, stage: Stage) -> dict[str, int]:
    """{output: bytes} of the stage's declared outputs that are files."""
    return {name: path.stat().st_size for name, path in output_files(cfg, stage).items()}


def output_sums(cfg: DictConfig, stage: Stage) -> dict[str, str]:
    """{output: SHA-256} of the stage's declared outputs that are files."""
    return {name: content_sha256(path) for name, path in output_files(cfg, stage).items()}


def content_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _SUMS:
        _SUMS[key] = file_sha256(path)
    return _SUMS[key]


def produced(stage: Stage) -> dict:
    """What the stage's last run wrote: {"run_id", "sizes": {output: bytes}, "sha256": {output:
    digest}} ({} if unknown; records of older versions have no "sha256")."""
    return json.loads(stage.sizes_path.read_text()) if stage.sizes_path.exists() else {}


def upstream_run_ids(cfg: DictConfig, name: str) -> dict[str, str | None]:
    """{upstream stage: id of its last run} for the stages `name` reads (see run_stages)."""
    return {up: produced(stage_spec(cfg, up)).get("run_id") for up in stage_spec(cfg, name).after}


def damaged_outputs(cfg: DictConfig, stage: Stage) -> list[str]:
    """Outputs whose size or content is not the one written (truncated, replaced, bytes changed in
    place), as 'name: what differs'."""
    if not stage.sizes_path.exists():
        return []
    written = produced(stage)
    now = output_files(cfg, stage)
    damaged = []
    for name, size in written.get("sizes", {}).items():
        path = now.get(name)
        if path is None or path.stat().st_size != size:
            damaged.append(f"{stage.out / name}: {path.stat().st_size if path else 'missing'} bytes, {size} written")
        elif name in written.get("sha256", {}) and content_sha256(path) != written["sha256"][name]:
            damaged.append(f"{stage.out / name}: content changed since written (SHA-256 differs)")
    return damaged


def require_input(path: Path, stage: str, task: str) -> Path:
    """`path`, or a clear error naming the stage that makes it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found: run the {stage} stage first (`make data TASK={task}`)")
    return Path(path)


def read_timings(path: Path) -> list[dict]:
    """The recorded runs of a stage; a single record (the first format) counts as one run."""
    if not path.exists():
        return []
    runs = json.loads(path.read_text())
    return [runs] if isinstance(runs, dict) else runs


def stage_timings(cfg: DictConfig) -> dict:
    """Every recorded run (wall time, end, commit) of every stage of the task."""
    times = {}
    for name in cfg.task.stages:
        path = stage_spec(cfg, name).timing_path
        if path.exists():
            times[name] = read_timings(path)
    return times


def git_state(root: str | Path) -> dict:
    """Commit and whether tracked files had uncommitted changes (None outside a checkout)."""

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


# SHA-256 of files already summed in this process, by (path, inode, size, mtime): a run checks an
# output when it decides to skip its stage and again when a later stage reads it.
_SUMS: dict[tuple, str] = {}


def check_upstream(cfg: DictConfig, stage: Stage) -> None:
    """Every stage `stage` reads from must have finished with the settings asked for now."""
    if stage.after and cfg.get("external_data"):
        log.warning("external_data=true: stage %s reads data made outside the pipeline, unchecked", stage.name)
        return
    for name in stage.after:
        up = stage_spec(cfg, name)
        stored, wanted = read_record(up), stage_record(cfg, up)
        if stored is None or not all(p.exists() for p in output_paths(cfg, up)):
            raise StageError(
                f"stage {stage.name!r} reads the outputs of stage {name!r} in {up.out}, which "
                f"has not finished there: run it first (`make data TASK={cfg.task.name}`)"
            )
        if differing(stored, wanted, settings_only=True):
            raise StageError(
                f"stage {stage.name!r}: the outputs of stage {name!r} in {up.out} were made with other "
                f"settings ({changes(stored, wanted)}); rebuild them (`make data TASK={cfg.task.name} "
                f"ARGS='... overwrite=true'`) or point paths.data_dir elsewhere"
            )
        if stored != wanted:
            raise StageError(
                f"stage {stage.name!r}: the inputs of stage {name!r} changed since it ran "
                f"({changes(stored, wanted)}): run it again first (`make data TASK={cfg.task.name}`)"
            )
        damaged = damaged_outputs(cfg, up)
        if damaged:
            raise StageError(
                f"stage {stage.name!r}: outputs of stage {name!r} changed since they were written "
                f"({'; '.join(damaged)}); rebuild them (`make data TASK={cfg.task.name}`)"
            )
