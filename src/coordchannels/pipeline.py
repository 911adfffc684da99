"""Run an ordered list of stages; each writes to its own folder, with its log and config beside it.

A stage is a function `fn(cfg) -> None` named in the config (`stage_defs` or `task.stage_defs`)
together with its output folder `out`. The pipeline knows nothing about what stages do: adding a
stage is adding a function and one config entry.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from coordchannels.io import write_text


log = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A stage cannot run (unknown name, bad input); the message says why."""


def stage_spec(cfg: DictConfig, name: str) -> DictConfig:
    """The definition of stage `name`: task-specific definitions win over common ones."""
    for defs in (cfg.task.get("stage_defs"), cfg.get("stage_defs")):
        if defs is not None and name in defs:
            return defs[name]
    known = sorted(set(cfg.task.get("stage_defs", {})) | set(cfg.get("stage_defs", {})))
    raise StageError(f"unknown stage {name!r} for task {cfg.task.name!r}; known stages: {known}")


def run_stages(cfg: DictConfig) -> list[str]:
    """Run `cfg.stages` in order; return the names of the stages that were not available."""
    missing = []
    # The code a run used is the commit it started from, whatever is committed while it runs.
    commit = git_state(cfg.paths.root_dir)["commit"]
    for name in cfg.stages:
        spec = stage_spec(cfg, name)
        if spec.fn is None:
            log.warning("stage %r of task %r is not implemented yet: skipped", name, cfg.task.name)
            missing.append(name)
            continue
        check_inputs(cfg, name, spec)
        run_stage(cfg, name, get_method(spec.fn), Path(spec.out), commit)
        record_inputs(cfg, name, spec)
    if missing:
        log.warning("not run (not implemented yet) for task %r: %s", cfg.task.name, ", ".join(missing))
    return missing


def run_stage(cfg: DictConfig, name: str, fn, out: Path, commit: str | None = None) -> None:
    """Run one stage with a log file and the resolved config saved in `out/logs/`."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    write_text(logs / f"{name}.config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    handler = logging.FileHandler(logs / f"{name}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    start = time.perf_counter()
    log.info("stage %s (task %s) -> %s", name, cfg.task.name, out)
    try:
        fn(cfg)
        seconds = time.perf_counter() - start
        log.info("stage %s finished in %.1f s", name, seconds)
        record_timing(out, name, seconds, commit)
    finally:
        root.removeHandler(handler)
        handler.close()



def inputs_path(out: str | Path, name: str) -> Path:
    return Path(out) / "logs" / f"{name}.inputs.json"


def stage_inputs(cfg: DictConfig, spec: DictConfig) -> dict:
    """The values of the settings a stage declares in `depends_on` (dotted config keys)."""
    keys = spec.get("depends_on") or []
    return {key: OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(cfg, key)}), resolve=True)["v"]
            for key in keys}


def check_inputs(cfg: DictConfig, name: str, spec: DictConfig) -> None:
    """Refuse to reuse outputs made with other settings than the ones asked for now.

    Stages skip work whose outputs exist; without this check, changing e.g.
    task.data.label_match would silently reuse the episodes of the old setting.
    """
    path = inputs_path(spec.out, name)
    if cfg.overwrite or not path.exists():
        return
    recorded, wanted = json.loads(path.read_text()), stage_inputs(cfg, spec)
    changed = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
    if changed:
        raise StageError(
            f"stage {name!r}: the outputs in {spec.out} were made with other settings "
            f"({', '.join(f'{k}: {recorded.get(k)!r} -> {wanted.get(k)!r}' for k in changed)}); "
            "rerun with overwrite=true, or point paths.processed_dir (or the task's folders) elsewhere")


def record_inputs(cfg: DictConfig, name: str, spec: DictConfig) -> None:
    if spec.get("depends_on"):
        write_text(inputs_path(spec.out, name), json.dumps(stage_inputs(cfg, spec), indent=1) + "\n")


def timing_path(out: str | Path, name: str) -> Path:
    return Path(out) / "logs" / f"{name}.time.json"


def record_timing(out: str | Path, name: str, seconds: float, commit: str | None = None) -> None:
    """Append, beside its outputs, the wall time of a successful run of a stage (a rerun that
    found its outputs done appears as a short run after the one that did the work)."""
    path = timing_path(out, name)
    runs = read_timings(path)
    runs.append({"seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "commit": commit})
    write_text(path, json.dumps(runs, indent=1) + "\n")


def read_timings(path: Path) -> list[dict]:
    """The recorded runs of a stage; a single record (the first format) counts as one run."""
    if not path.exists():
        return []
    runs = json.loads(path.read_text())
    return [runs] if isinstance(runs, dict) else runs


def git_state(root: str | Path) -> dict:
    """Commit and whether tracked files had uncommitted changes (None outside a checkout)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  check=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def stage_timings(cfg: DictConfig) -> dict:
    """Every recorded run (wall time, end, commit) of every stage of the task."""
    times = {}
    for name in cfg.task.stages:
        path = timing_path(stage_spec(cfg, name).out, name)
        if path.exists():
            times[name] = read_timings(path)
    return times
