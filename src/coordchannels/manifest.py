"""The run manifest: what a reader needs to trust and redo a committed result.

`manifest_stage` writes `<stats.out_dir>/manifest.json` (config, commit, package versions, data
checksums, hardware, seed, wall time per stage, the launcher, host and device of every training
job, and the SHA-256 of every result file beside it: coordchannels.verify) and copies the per-fold logs the statistics were computed from into `<stats.out_dir>/fold_logs/` (`logs/` holds the stages' own logs), so that a results folder stands on its own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from coordchannels.download import file_sha256
from coordchannels.environment import hardware, package_versions
from coordchannels.io import atomic_dir, write_text
from coordchannels.stages import StageContext, git_state, read_record, stage_spec, stage_timings, tree_sha256
from coordchannels.stats.comparison import SCALE_MARK
from coordchannels.train.grid import job_grid
from coordchannels.train.record import job_record_path
from coordchannels.verify import MANIFEST, file_sums


def data_checksums(raw_dir: Path) -> dict:
    """SHA-256 of the task's input data in its raw data folder.

    Files directly in the folder: their own SHA-256, except those pinned in a lock file there,
    whose recorded sums are used (the SiPaKMeD archives, 5 GB, possibly read from a mirror and
    not in the folder at all). A subfolder (SiPaKMeD's `cropped/` cells) gets one digest of its
    sorted (relative path, SHA-256) list, `tree_sha256`.
    """
    if not raw_dir.is_dir():
        return {}
    sums = {}
    for lock in sorted(raw_dir.glob("*.lock.json")):
        sums.update({name: entry["sha256"] for name, entry in json.loads(lock.read_text()).items()})
    for p in sorted(raw_dir.iterdir()):
        if p.name.startswith(".") or p.name.endswith(".part"):
            continue
        if p.is_file():
            sums[p.name] = sums.get(p.name) or file_sha256(p)
        elif p.is_dir() and p.name != "logs":  # logs/: the stages' own logs, not data
            sums[f"{p.name}/"] = tree_sha256(p)
    return sums


def training_jobs(cfg: DictConfig) -> dict | None:
    """Which launcher ran the training jobs and where each ran (host, pid, device), from the per-job
    records (coordchannels.train.record); None for a task that trains no models."""
    if not cfg.task.get("models"):
        return None
    jobs = []
    for job in job_grid(cfg):
        path = job_record_path(cfg, job)
        try:
            record = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            record = {}
        where = {key: record.get(key) for key in ("launcher", "host", "pid", "device")}
        # a log reused from a committed run (coordchannels.reuse): which, and the CPU that trained it
        where |= {key: record[key] for key in ("reused_from", "cpu") if key in record}
        jobs.append({"job": str(job), **where})
    return {"launchers": sorted({j["launcher"] for j in jobs if j["launcher"]}), "jobs": jobs}


def copy_logs(src: Path, dest: Path) -> int:
    """Copy the per-fold CSV logs (not checkpoints) into the results folder, with the trainer's
    reduced-scale mark beside them; return how many logs."""
    if not src.is_dir() or src.resolve() == dest.resolve():
        return 0
    files = sorted(src.rglob("*_log.csv"))
    with atomic_dir(dest) as tmp:
        for f in [*files, *sorted(src.rglob(SCALE_MARK))]:
            target = tmp / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
    return len(files)


def manifest_stage(cfg: DictConfig, ctx: StageContext) -> None:
    root = Path(cfg.paths.root_dir)
    n_logs = copy_logs(Path(cfg.stats.logs_dir), ctx.out / "fold_logs")
    raw_dir = Path(cfg.task.data.raw_dir) if "raw_dir" in cfg.task.get("data", {}) else None
    manifest = {
        "task": cfg.task.name,
        "seed": cfg.seed,
        "train_seeds": list(cfg.train.seeds),
        "git": git_state(root),
        "packages": package_versions(),
        "hardware": hardware(),
        "stage_wall_time": stage_timings(cfg),
        "training_jobs": training_jobs(cfg),
        "data_sha256": data_checksums(raw_dir) if raw_dir else {},
        # Every data setting the trained models read, as the runner checked it before training.
        "data_settings": read_record(stage_spec(cfg, "train")) if cfg.task.get("models") else None,
        "logs_copied": n_logs,
        "config": OmegaConf.to_container(cfg, resolve=True),
        # SHA-256 of every result file beside it, checked by `make verify` and before logs are read
        "files": file_sums(ctx.out),
    }
    write_text(ctx.out / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")
