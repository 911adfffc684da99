"""The runner: it owns the stage contract, so that stages only do their work.

A stage is declared in the config (`stage_defs` in conf/config.yaml for the stages every task
shares, `task.stage_defs` for a task's own) with:

- `fn`: the function `fn(cfg, ctx)` that does the work; `ctx` (a `coordchannels.stages.StageContext`
  built here) gives its folder `ctx.out`, its declared inputs (`ctx.inputs`: config key -> path;
  `ctx.after`: upstream stage -> folder) and its logger `ctx.log`, whose records go to its log file;
- `out`: that folder;
- `outputs`: what a finished stage leaves in `out`: a list of names, or the dotted name of a
  function `cfg -> [names or paths]` when they depend on the config (one file per record, per job);
- `settings`: the dotted config keys its outputs are made from;
- `after`: the stages whose outputs it reads (their settings are chained into this stage's);
- `inputs`: config keys naming files or folders read as inputs whose content, not a setting, can
  change (a folder of per-fold logs), optionally with a glob (`stats.logs_dir:**/*_log.csv`):
  their SHA-256 is part of the record;
- `on_change`: `refuse` (data stages: outputs made with other settings are an error until
  `overwrite=true`) or `rerun` (cheap derived outputs such as tables: redo them; the train stage,
  whose jobs keep what was made with their settings and whose `check` refuses the rest);
- `watch`: config keys naming a user's folder (a local mirror) whose listing (paths, sizes,
  modification times) is part of the record, so that a changed mirror is noticed;
- `check`: optional dotted name of a function `check(cfg)` that validates the stage's settings;
  the runner calls it for every stage asked for before any stage runs;
- `plan`: optional dotted name of a function `plan(cfg)` yielding lines that say what the stage
  would do (the train stage: jobs, device, estimated time), printed by the dry run.

The contract itself (the declaration, records, digests) lives in `coordchannels.stages`, which
stages and reports use; only the entry points import this module.

The runner, for each stage asked for: checks that every upstream stage's outputs were made with
the settings asked for now (so training never reads data built with other settings); skips the
stage, writing nothing, when its declared outputs exist and its record matches; otherwise runs it
with its log (`logs/<stage>.log`) beside its outputs, and when it succeeds writes its resolved
config, wall time, record (`logs/<stage>.inputs.json`: the chained settings and input digests) and
the sizes and SHA-256 of its outputs with its run id, a digest of both (`logs/<stage>.outputs.json`),
so that a damaged output (a truncated array, bytes changed in place) is noticed instead of read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from coordchannels.components import complete_arms
from coordchannels.entry import refusal
from coordchannels.io import write_text
from coordchannels.settings import canonical, validate_choices
from coordchannels.stages import (
    Stage,
    StageError,
    changes,
    check_upstream,
    damaged_outputs,
    differing,
    git_state,
    output_paths,
    output_sizes,
    output_sums,
    read_record,
    read_timings,
    stage_context,
    stage_function,
    stage_record,
    stage_spec,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------
def run_stages(cfg: DictConfig) -> list[str]:
    """Run `cfg.stages` in order; return the names of the stages that ran (the rest were done).

    With `dry_run=true` print what would run and the training plan instead, writing nothing: here,
    so that every entry point (the app, replications, launchers) honours it."""
    if cfg.get("dry_run"):
        for line in dry_run_lines(cfg):  # a refusal is raised after the lines before it
            print(line, flush=True)
        return []
    stages = preflight(cfg)
    # The code a run used is the commit it started from, whatever is committed while it runs.
    commit = git_state(cfg.paths.root_dir)["commit"]
    ran = []
    for stage in stages:
        check_upstream(cfg, stage)
        record = stage_record(cfg, stage)
        if not needs_run(cfg, stage, record):
            log.info("stage %s: done in %s (same settings), skipped", stage.name, stage.out)
            continue
        run_stage(cfg, stage, commit)
        write_text(stage.sizes_path, json.dumps(production(cfg, stage, record), indent=1) + "\n")
        write_text(stage.record_path, json.dumps(record, indent=1) + "\n")
        ran.append(stage.name)
    return ran


def preflight(cfg: DictConfig) -> list[Stage]:
    """Every setting and every stage's `check` of one run, before anything is written; returns its
    stages. A runner of several runs (the replications) calls it on all of them first, so a refusal
    comes before hours of training, not after."""
    complete_arms(cfg)  # every conf/arm/ file is an arm, listed in config.yaml or not
    validate_choices(cfg)  # every setting checked before anything is written
    stages = [stage_spec(cfg, name) for name in cfg.stages]
    for stage in stages:
        if stage.check:
            get_method(stage.check)(cfg)
    return stages


def production(cfg: DictConfig, stage: Stage, record: dict) -> dict:
    """What a finished run of `stage` wrote: the sizes and SHA-256 of its outputs, and its run id.

    The run id is a digest of the record and the outputs' content: training records the ids of
    the data it read, so logs are never taken for logs of other data, and a byte-identical rebuild
    (same settings, same outputs) keeps the id, so the runs trained on it are still found."""
    sums = output_sums(cfg, stage)
    run_id = hashlib.sha256(canonical({"record": record, "sha256": sums}).encode()).hexdigest()[:32]
    return {"run_id": run_id, "sizes": output_sizes(cfg, stage), "sha256": sums}


def needs_run(cfg: DictConfig, stage: Stage, record: dict) -> bool:
    """False when the stage is done: declared outputs exist, made with the same record."""
    if cfg.overwrite:
        return True
    stored = read_record(stage)
    outputs = output_paths(cfg, stage)
    exist = all(p.exists() for p in outputs)
    if stored == record and exist:
        damaged = damaged_outputs(cfg, stage)
        if not damaged:
            return False
        log.warning(
            "stage %s: outputs changed since they were written (%s): redoing it", stage.name, "; ".join(damaged)
        )
        return True
    changed = differing(stored or {}, record)
    # Settings that differ are refused (a typo must not silently replace hours of work); inputs whose
    # content changed (a fixed file in a mirror, new logs) are simply taken again.
    settings_changed = differing(stored or {}, record, settings_only=True)
    if stored is not None and not settings_changed and changed:
        log.info(
            "stage %s: its inputs changed since its outputs were made (%s): redoing it",
            stage.name,
            ", ".join(changed),
        )
    if stored is not None and settings_changed and stage.on_change == "refuse" and any(p.exists() for p in outputs):
        raise StageError(
            f"stage {stage.name!r}: the outputs in {stage.out} were made with other settings "
            f"({changes(stored, record, settings_changed)}); "
            "rerun with overwrite=true, or point paths.data_dir "
            "(or train.run_name) elsewhere"
        )
    return True


def run_stage(cfg: DictConfig, stage: Stage, commit: str | None = None) -> None:
    """Run one stage with its log file in `out/logs/`; on success, its resolved config and wall time.
    A refused stage (a setting or input it will not use) leaves its folder and log as they were."""
    fn, ctx = stage_function(stage), stage_context(cfg, stage)
    logs = stage.out / "logs"
    log_file = logs / f"{stage.name}.log"
    made = [d for d in (stage.out, logs) if not d.exists()]
    before = log_file.stat().st_size if log_file.exists() else None
    logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    start = time.perf_counter()
    log.info("stage %s (task %s) -> %s", stage.name, cfg.task.name, stage.out)
    try:
        fn(cfg, ctx)
        seconds = time.perf_counter() - start
        log.info("stage %s finished in %.1f s", stage.name, seconds)
        # The config beside the outputs describes the run that made them: written on success only.
        write_text(logs / f"{stage.name}.config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        record_timing(stage, seconds, commit)
    except BaseException as exc:
        if refusal(exc):
            root.removeHandler(handler)
            handler.close()
            restore_log(log_file, before, made)
        else:
            log.error(
                "stage %s failed after %.1f s: %s", stage.name, time.perf_counter() - start, exc or type(exc).__name__
            )
        raise
    finally:
        root.removeHandler(handler)
        handler.close()


def restore_log(log_file: Path, size: int | None, made: list[Path]) -> None:
    """Undo what a refused stage wrote to its log: cut the log back to `size` bytes (remove it when
    it did not exist) and remove the folders `made` for it when they are still empty. The refusal
    itself reaches the console; a committed log must not change because a run was refused."""
    if size is None:
        log_file.unlink(missing_ok=True)
    else:
        with open(log_file, "r+b") as fh:
            fh.truncate(size)
    for folder in reversed(made):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


# --------------------------------------------------------------------------------------------
# Wall times and the code version
# --------------------------------------------------------------------------------------------
def record_timing(stage: Stage, seconds: float, commit: str | None = None) -> None:
    """Append the wall time of a run of a stage beside its outputs (a skipped stage writes none).
    Locked: processes of a Hydra multirun may finish the same stage in one folder at once."""
    with FileLock(stage.timing_path.with_name(f".{stage.timing_path.name}.lock")):
        runs = read_timings(stage.timing_path)
        runs.append({"seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": commit})
        write_text(stage.timing_path, json.dumps(runs, indent=1) + "\n")


def dry_run_lines(cfg: DictConfig) -> Iterator[str]:
    """What `cfg` would do, stage by stage, with each stage's own `plan` (the train stage's: jobs,
    device, estimated time); reads, never writes (dry_run=true).

    The stages are judged by the runner's own functions (`needs_run`, `check_upstream`), so the
    plan says what the run will do: a stage the run would refuse ends the plan with its reason and
    the same error as the run (after the lines before it)."""
    stages = preflight(cfg)  # every setting and every stage's check, as the run makes them first
    yield f"dry run (task {cfg.task.name}): nothing is written"
    will_run: set[str] = set()
    for stage in stages:
        try:
            if not will_run & set(stage.after):  # rebuilt first by this run: checked after that
                check_upstream(cfg, stage)
            done = not needs_run(cfg, stage, stage_record(cfg, stage))
        except Exception as exc:
            yield f"stage {stage.name}: the run would stop here: {exc}"
            raise
        will_run |= set() if done else {stage.name}
        yield f"stage {stage.name}: {'done, would be skipped' if done else 'would run'} -> {stage.out}"
        if stage.plan and not done:
            yield from get_method(stage.plan)(cfg)
