"""Recompute the statistics of committed results from their committed per-fold logs.

`make restats` (`python -m coordchannels.restats [FOLDER ...]`): when the statistics change (a new
test, a new column), every committed result folder that holds its per-fold logs (`fold_logs/`) is
recomputed from them with the settings it was made with (`logs/stats.config.yaml`), and every
replication summary (`logs/replication_summary.config.yaml`) from its replications. The per-fold
values are the numbers; they must come out identical, or the folder is restored and the run stops
(only derived columns may change). With no FOLDER, every such folder under paths.results_dir.

The published Table 3 (`results/published_table3/`) keeps the authors' logs outside the repository:
regenerate it with `make table3 PUBLISHED_LOGS_DIR=... ARGS=stats.replace_results=true`.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from coordchannels.entry import reports_errors
from coordchannels.io import write_text
from coordchannels.pipeline import run_stages
from coordchannels.stages import git_state
from coordchannels.verify import MANIFEST, check_files, file_sums, recorded_files

log = logging.getLogger(__name__)

STATS_CONFIG = Path("logs") / "stats.config.yaml"
SUMMARY_CONFIG = Path("logs") / "replication_summary.config.yaml"


def logs_of(folder: Path) -> Path | None:
    """The committed per-fold logs a result was computed from: its own `fold_logs/`, or the folder
    its stats config names when that is committed too (inside results/); None when not here."""
    if (folder / "fold_logs").is_dir():
        return folder / "fold_logs"
    cfg = OmegaConf.load(folder / STATS_CONFIG)
    saved, results = Path(str(cfg.stats.logs_dir)), Path(str(cfg.paths.results_dir)).resolve()
    return saved if saved.is_dir() and saved.resolve().is_relative_to(results) else None


def stats_folders(results_dir: Path) -> list[Path]:
    """Committed result folders whose statistics can be recomputed here (their logs are committed)."""
    return sorted(p.parent.parent for p in results_dir.rglob(str(STATS_CONFIG)) if logs_of(p.parent.parent))


def summary_folders(results_dir: Path) -> list[Path]:
    return sorted(p.parent.parent for p in results_dir.rglob(str(SUMMARY_CONFIG)))


def restats_config(folder: Path) -> DictConfig:
    """The folder's own stats config, reading its committed logs and writing into it."""
    cfg = OmegaConf.load(folder / STATS_CONFIG)
    OmegaConf.update(cfg, "stats.logs_dir", str(logs_of(folder)), merge=False)
    OmegaConf.update(cfg, "stats.out_dir", str(folder), merge=False)
    # The saved config is resolved: the stage's folder is a literal there, not ${stats.out_dir}.
    OmegaConf.update(cfg, "stage_defs.stats.out", str(folder), merge=False)
    OmegaConf.update(cfg, "stats.replace_results", True, merge=False)
    OmegaConf.update(cfg, "stages", ["stats"], merge=False)
    OmegaConf.update(cfg, "overwrite", True, merge=False)
    return cfg


def summary_config(folder: Path) -> DictConfig:
    cfg = OmegaConf.load(folder / SUMMARY_CONFIG)
    OmegaConf.update(cfg, "replicate.out_dir", str(folder), merge=False)
    OmegaConf.update(cfg, "stage_defs.replication_summary.out", str(folder), merge=False)
    OmegaConf.update(cfg, "stages", ["replication_summary"], merge=False)
    OmegaConf.update(cfg, "overwrite", True, merge=False)
    return cfg


def same_values(before: Path, after: Path) -> bool:
    """Whether two fold_values.csv hold the same per-fold numbers (exactly)."""
    return pd.read_csv(before).equals(pd.read_csv(after))


def restat(folder: Path) -> None:
    """Recompute one folder; restore it whole when its per-fold values would change."""
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        backup = Path(tmp) / folder.name
        shutil.copytree(folder, backup)
        try:
            run_stages(restats_config(folder))
            if not same_values(backup / "fold_values.csv", folder / "fold_values.csv"):
                raise RuntimeError(f"{folder}: its per-fold values changed when recomputed; the folder is restored")
            update_manifest(folder)
        except BaseException:
            shutil.rmtree(folder)
            shutil.move(backup, folder)
            raise


def update_manifest(folder: Path) -> None:
    """The manifest's checksums of the recomputed tables, and a note of the recomputation. The
    per-fold logs it lists must be unchanged (they are the numbers the tables come from)."""
    recorded = recorded_files(folder)
    if recorded is None:
        return
    logs = folder / "fold_logs"
    damaged = check_files(folder, recorded, logs) if logs.is_dir() else []
    if damaged:
        raise RuntimeError(f"{folder}: its per-fold logs differ from its manifest ({'; '.join(damaged)})")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"] = file_sums(folder)
    manifest.setdefault("tables_recomputed", []).append(
        {"by": "make restats", "commit": git_state(".")["commit"], "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    )
    write_text(folder / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")


@reports_errors
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = sys.argv[1:] if argv is None else argv
    results = Path("results")
    folders = [Path(a) for a in args] or stats_folders(results)
    for folder in folders:
        if not (folder / STATS_CONFIG).is_file() or logs_of(folder) is None:
            raise SystemExit(f"error: {folder} holds no committed statistics with their per-fold logs (nothing to do)")
        log.info("restats: %s", folder)
        restat(folder)
    for folder in [] if args else summary_folders(results):
        log.info("restats: replication summary %s", folder)
        run_stages(summary_config(folder))


if __name__ == "__main__":
    main()
