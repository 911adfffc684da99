"""Run an ordered list of stages; each writes to its own folder, with its log and config beside it.

A stage is a function `fn(cfg) -> None` named in the config (`stage_defs` or `task.stage_defs`)
together with its output folder `out`. The pipeline knows nothing about what stages do: adding a
stage is adding a function and one config entry.
"""

from __future__ import annotations

import json
import logging
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
    for name in cfg.stages:
        spec = stage_spec(cfg, name)
        if spec.fn is None:
            log.warning("stage %r of task %r is not implemented yet: skipped", name, cfg.task.name)
            missing.append(name)
            continue
        run_stage(cfg, name, get_method(spec.fn), Path(spec.out))
    if missing:
        log.warning("not run (not implemented yet) for task %r: %s", cfg.task.name, ", ".join(missing))
    return missing


def run_stage(cfg: DictConfig, name: str, fn, out: Path) -> None:
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
        record_timing(out, name, seconds)
    finally:
        root.removeHandler(handler)
        handler.close()



def timing_path(out: str | Path, name: str) -> Path:
    return Path(out) / "logs" / f"{name}.time.json"


def record_timing(out: str | Path, name: str, seconds: float) -> None:
    """Remember, beside its outputs, the wall time of the latest successful run of a stage."""
    record = {"seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_text(timing_path(out, name), json.dumps(record) + "\n")


def stage_timings(cfg: DictConfig) -> dict:
    """Latest recorded wall time of every stage of the task (absent: never finished)."""
    times = {}
    for name in cfg.task.stages:
        path = timing_path(stage_spec(cfg, name).out, name)
        if path.exists():
            times[name] = json.loads(path.read_text())
    return times
