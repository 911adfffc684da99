"""Reusing committed per-fold logs where they are the very jobs a new run would train.

A committed results folder (e.g. `results/ecg_replications/episode/replication_1/`) holds its
per-fold logs (`fold_logs/`) and `manifest.json` (the run's resolved config, the SHA-256 of its
raw data, the CPU), but not its run folder with the job records. A committed log stands in for a
job of this run only when

- its *portable fingerprint* is this job's: everything `job_fingerprint` covers (data settings,
  model, arm, training hyper-parameters, seed), computed from the committed config and from this
  one, except the ids of the data stages' runs, which name one machine's builds; in their place
- the raw-data checksums of its manifest equal those of the raw data here (the processed arrays
  are a function of the raw data and the data settings, which the fingerprint holds), and
- it has exactly `train.epochs` epochs (no checkpoint comes with it to continue from).

A reused log is copied into this run's logs folder beside a job record with this run's
fingerprint, so the trainer skips the job, and with where it came from (the committed log and
its SHA-256, the CPU, host and device that trained it). A log failing any check is refused, with
the reason, and its job is trained.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from functools import cache
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from coordchannels.download import file_sha256
from coordchannels.io import atomic_path, write_text
from coordchannels.logs import log_path
from coordchannels.manifest import data_checksums
from coordchannels.train.grid import Job, job_grid
from coordchannels.train.paths import job_log_path
from coordchannels.train.record import _differences, job_fingerprint, job_record_path, read_job_record

log = logging.getLogger(__name__)

REUSE_COLUMNS = [
    "grouping",
    "replication",
    "arm",
    "fold",
    "status",
    "source",
    "sha256",
    "cpu",
    "host",
    "device",
    "reason",
]


def portable_fingerprint(cfg: DictConfig, job: Job, declared: DictConfig | None = None) -> dict:
    """`job_fingerprint` without the data stages' run ids (machine-specific).

    With `declared` (this run's config), the settings fingerprinted are the ones this code declares
    (its stages' `settings`), read from `cfg` (a committed run's config): a committed config carries
    the stage declarations of the code that made it, and an older one lists fewer training
    settings, although their values are in it. A setting the committed config lacks reads as None,
    so it differs from any value set here and the log is refused."""
    c = copy.deepcopy(cfg)
    if declared is not None:
        for key in ("stage_defs", "task.stage_defs"):
            node = OmegaConf.select(declared, key)
            if node is not None:
                OmegaConf.update(c, key, OmegaConf.to_container(node, resolve=False), merge=False)
    OmegaConf.update(c, "external_data", True, merge=False)
    fingerprint = job_fingerprint(c, job)
    fingerprint["task"].pop("data_runs", None)
    return fingerprint


@cache
def _raw_checksums(raw_dir: str) -> str:
    return json.dumps(data_checksums(Path(raw_dir)), sort_keys=True)


def read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
        OmegaConf.create(manifest["config"])
        return manifest
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable run manifest ({exc})") from exc


def committed_log(folder: Path, cfg: DictConfig, committed: DictConfig, job: Job) -> Path:
    """Where the committed run wrote this job's log (its seed in the name only with several seeds)."""
    seed = job.seed if len(committed.train.seeds) > 1 else None
    return log_path(folder / "fold_logs", cfg.task.models[job.model].log_name, job.arm, job.fold, seed)


def check(cfg: DictConfig, job: Job, folder: Path, manifest: dict | None, dry_run: bool) -> tuple[str, Path | None]:
    """'' when the committed log of `job` in `folder` may stand in for it, else why not."""
    if manifest is None:
        return f"no committed run in {folder}", None
    committed = OmegaConf.create(manifest["config"])
    source = committed_log(folder, cfg, committed, job)
    if not source.is_file():
        return f"no committed log {source}", None
    try:
        theirs = portable_fingerprint(committed, job, declared=cfg)
    except Exception as exc:  # a committed config without this model or arm
        return f"its job fingerprint cannot be computed from {folder / 'manifest.json'} ({exc})", source
    ours = portable_fingerprint(cfg, job)
    if theirs != ours:
        return f"job fingerprint differs ({_differences(theirs, ours)})", source
    epochs = len(pd.read_csv(source))
    if epochs != int(cfg.train.epochs):
        return f"{epochs} epochs in the log, train.epochs={cfg.train.epochs}", source
    raw_dir = Path(str(cfg.task.data.raw_dir))
    if not raw_dir.is_dir():
        return ("" if dry_run else f"no raw data in {raw_dir} to compare checksums with"), source
    if json.loads(_raw_checksums(str(raw_dir))) != manifest.get("data_sha256"):
        return f"raw data checksums differ from those in {folder / 'manifest.json'}", source
    return "", source


def where_trained(manifest: dict, job: Job) -> dict:
    jobs = (manifest.get("training_jobs") or {}).get("jobs") or []
    entry = next((j for j in jobs if j.get("job") == str(job)), {})
    return {
        "cpu": (manifest.get("hardware") or {}).get("cpu", ""),
        "host": entry.get("host") or "",
        "device": entry.get("device") or (manifest.get("hardware") or {}).get("device", ""),
    }


def reuse_committed_logs(
    cfg: DictConfig, folder: Path, arms: list[str], grouping: str, replication: int, dry_run: bool = False
) -> list[dict]:
    """Install the committed logs of `arms` from results folder `folder` into the run of `cfg`
    where they may stand in for its jobs (see the module); return one row per job considered.
    With `dry_run`, only check (status `reusable` or `refused`) and write nothing."""
    manifest = read_manifest(folder) if (folder / "manifest.json").is_file() else None
    rows = []
    for job in (j for j in job_grid(cfg) if j.arm in arms):
        row = dict.fromkeys(REUSE_COLUMNS, "") | {
            "grouping": grouping,
            "replication": replication,
            "arm": job.arm,
            "fold": job.fold,
        }
        target, record_path = job_log_path(cfg, job), job_record_path(cfg, job)
        record = _record(record_path)
        if target.exists() and record is not None:
            # Reused or trained before: the trainer decides whether it is finished.
            row |= {
                "status": "reused" if record.get("reused_from") else "trained here",
                "source": record.get("reused_from", ""),
            }
            row |= {k: record.get(k, "") for k in ("sha256", "cpu", "host", "device")}
            rows.append(row)
            continue
        reason, source = check(cfg, job, folder, manifest, dry_run)
        row["source"] = str(source or "")
        if reason:
            log.warning("%s: committed log not reused, the job is trained: %s", job, reason)
            rows.append(row | {"status": "refused", "reason": reason})
            continue
        where = where_trained(manifest, job)
        row |= {"status": "reusable" if dry_run else "reused", "sha256": file_sha256(source), **where}
        if not dry_run and not target.exists():
            install(cfg, job, source, row)
            log.info("%s: reusing the committed log %s (trained on %s)", job, source, where["cpu"])
        rows.append(row)
    return rows


def _record(path: Path) -> dict | None:
    if read_job_record(path) is None:
        return None
    return json.loads(path.read_text())


def install(cfg: DictConfig, job: Job, source: Path, row: dict) -> None:
    """Copy the committed log in as this job's log, with a record of this run's fingerprint and
    where the log came from (the record last: a log without it is never taken for finished)."""
    target = job_log_path(cfg, job)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    record = {
        "fingerprint": job_fingerprint(cfg, job),
        "epochs": int(cfg.train.epochs),
        "launcher": "reused",
        "reused_from": str(source),
        **{k: row[k] for k in ("sha256", "cpu", "host", "device")},
    }
    write_text(job_record_path(cfg, job), json.dumps(record, indent=1, sort_keys=True) + "\n")
