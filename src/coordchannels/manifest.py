"""The run manifest: what a reader needs to trust and redo a committed result.

`manifest_stage` writes `<stats.out_dir>/manifest.json` (config, commit, package versions, data
checksums, hardware, seed, wall time per stage) and copies the per-fold logs the statistics were
computed from into `<stats.out_dir>/fold_logs/` (`logs/` holds the stages' own logs), so that a results folder stands on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from coordchannels.download import file_sha256
from coordchannels.io import atomic_dir, write_text
from coordchannels.pipeline import git_state, stage_timings

PACKAGES = ("torch", "numpy", "scipy", "pandas", "scikit-learn", "wfdb", "pillow", "hydra-core",
            "omegaconf", "matplotlib", "py7zr", "requests", "tqdm", "coordchannels")


def package_versions() -> dict:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


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


def tree_sha256(folder: Path) -> str:
    """One SHA-256 for a folder: of the lines `<relative path> <file SHA-256>`, sorted by path."""
    lines = sorted(f"{p.relative_to(folder).as_posix()} {file_sha256(p)}\n"
                   for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def copy_logs(src: Path, dest: Path) -> int:
    """Copy the per-fold CSV logs (not checkpoints) into the results folder; return how many."""
    if not src.is_dir() or src.resolve() == dest.resolve():
        return 0
    files = sorted(src.rglob("*_log.csv"))
    with atomic_dir(dest) as tmp:
        for f in files:
            target = tmp / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
    return len(files)


def manifest_stage(cfg: DictConfig, out: Path) -> None:
    root = Path(cfg.paths.root_dir)
    n_logs = copy_logs(Path(cfg.stats.logs_dir), out / "fold_logs")
    raw_dir = Path(cfg.task.data.raw_dir) if "raw_dir" in cfg.task.get("data", {}) else None
    manifest = {
        "task": cfg.task.name,
        "seed": cfg.seed,
        "train_seeds": list(cfg.train.seeds),
        "git": git_state(root),
        "packages": package_versions(),
        "hardware": hardware(),
        "stage_wall_time": stage_timings(cfg),
        "data_sha256": data_checksums(raw_dir) if raw_dir else {},
        "logs_copied": n_logs,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_text(out / "manifest.json", json.dumps(manifest, indent=2, default=str) + "\n")
