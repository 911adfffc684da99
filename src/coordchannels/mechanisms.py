"""Which coordinate mechanism helps? The replicated study of every arm (`make mechanisms`).

NimeshaNet with the arms of `mechanisms.arms` (none, control, study, intensity, coordconv_norm,
coordgate, softargmax), 5 folds, replications 1..n under each grouping. Replication r has training
seed and fold seed `base_seed + r - 1` (conf/study/replications.yaml), so its control and study
jobs are the jobs of replication r of `results/ecg_replications/`: their committed logs are reused
(coordchannels.reuse) instead of trained again where their job fingerprint matches; every other
job, and every one whose fingerprint differs, is trained.

Replication r of a grouping is an ordinary run of the app (`experiment=ecg_mechanisms
replicate.grouping=<g> replicate.index=<r>`) into its own run folder (`train.run_name=
mechanisms_<grouping>_<r>`, resumable: the runner skips finished stages and jobs) and results
folder `<mechanisms.out_dir>/<grouping>/replication_<r>/`; its `reuse_logs` stage (this module),
after the data stages and before `train`, installs the committed logs. `make mechanisms` runs
every replication as one Hydra sweep, then the `mechanisms_summary` stage writes the pre-stated
analysis (coordchannels.mechanisms_analysis) from their per-fold logs alone (coordchannels.sweep).
`<out_dir>/reused_logs.csv` lists every committed log considered: reused (with the CPU that
trained it) or refused (and why). `dry_run=true` prints each replication's plan and the total.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from coordchannels.io import write_csv
from coordchannels.mechanisms_analysis import check_analysis
from coordchannels.reuse import REUSE_COLUMNS, reuse_committed_logs
from coordchannels.settings import SettingError
from coordchannels.stages import StageContext
from coordchannels.train.progress import duration, make_plan

log = logging.getLogger(__name__)


def check_study(cfg: DictConfig) -> None:
    """The `check` of the study's stages (reuse_logs, mechanisms_summary): its replications, its
    arms and its pre-stated analysis, usable before hours of training."""
    from coordchannels.components import complete_arms

    complete_arms(cfg)
    m = cfg.mechanisms
    n, first = int(m.n), int(m.get("first", 1))
    if n < 2:
        raise SettingError(f"mechanisms.n={n}: the analysis pools replications; give at least 2")
    if not 1 <= first <= n + 1:
        raise SettingError(
            f"mechanisms.first={first}: give a replication between 1 and mechanisms.n={n} (or {n + 1}: only the summary)"
        )
    unknown = [a for a in m.arms if a not in cfg.arms]
    if unknown:
        raise SettingError(f"mechanisms.arms: unknown arm(s) {unknown}; the arms are {sorted(cfg.arms)}")
    check_analysis(cfg)  # the pre-stated analysis must be usable before hours of training


def source_folder(cfg: DictConfig) -> Path:
    """The committed replication whose control and study logs this replication may reuse."""
    return Path(str(cfg.mechanisms.reuse_source))


def considered_logs(cfg: DictConfig, dry_run: bool = False) -> list[dict]:
    """Every committed log of `mechanisms.reuse_arms` considered for this replication's jobs."""
    r = cfg.replicate
    return reuse_committed_logs(
        cfg, source_folder(cfg), list(cfg.mechanisms.reuse_arms), str(r.grouping), int(r.index), dry_run=dry_run
    )


REUSE_TABLE = "reused_logs.csv"


def reuse_stage(cfg: DictConfig, ctx: StageContext) -> None:
    """The `reuse_logs` stage: install the committed logs that may stand in for this replication's
    jobs; list every log considered in `<ctx.out>/reused_logs.csv` (this replication's) and merged into
    `<mechanisms.out_dir>/reused_logs.csv` (the study's)."""
    rows = considered_logs(cfg)
    write_csv(pd.DataFrame(rows, columns=REUSE_COLUMNS).astype(str), ctx.out / REUSE_TABLE)
    write_reuse_table(cfg, rows)


def write_reuse_table(cfg: DictConfig, rows: list[dict]) -> None:
    """Every committed log considered so far, merged with what earlier runs recorded."""
    path = Path(str(cfg.mechanisms.out_dir)) / REUSE_TABLE
    table = pd.DataFrame(rows, columns=REUSE_COLUMNS)
    if path.exists():
        old = pd.read_csv(path, dtype=str, keep_default_na=False)
        keys = ["grouping", "replication", "arm", "fold"]
        new_keys = set(map(tuple, table[keys].astype(str).to_numpy()))
        old = old[[tuple(k) not in new_keys for k in old[keys].astype(str).to_numpy()]]
        table = pd.concat([old, table.astype(str)], ignore_index=True)
    table = table.astype(str).sort_values(["grouping", "replication", "arm", "fold"], kind="stable")
    write_csv(table, path)


def replication_plan(cfg: DictConfig) -> dict:
    """This replication's jobs: how many, finished, reusable from committed logs, to train, the
    training time they need (None: no measured cost), and the logs refused for reuse."""
    cfg = copy.deepcopy(cfg)
    OmegaConf.resolve(cfg)  # read once per job below: resolved once here
    plan = make_plan(cfg)
    checks = considered_logs(cfg, dry_run=True)
    reusable = sum(c["status"] == "reusable" for c in checks)
    left = max(0, len(plan.jobs) - plan.finished - reusable)
    # jobs side by side in waves, as the plan of one run estimates it
    seconds = None if plan.epoch_s is None else -(-left // plan.side_by_side) * plan.epochs * plan.epoch_s
    refused = [f"{c['arm']} fold {c['fold']}: {c['reason']}" for c in checks if c["status"] == "refused"]
    return {
        "jobs": len(plan.jobs),
        "finished": plan.finished,
        "reusable": reusable,
        "to_train": left,
        "seconds": seconds,
        "refused": refused,
    }


def reuse_plan(cfg: DictConfig) -> Iterator[str]:
    """The `reuse_logs` stage's `plan` (dry_run=true): this replication's jobs and reusable logs."""
    p, r = replication_plan(cfg), cfg.replicate
    refused = p["refused"]
    yield (
        f"mechanisms: {r.grouping} replication {r.index} (seed {r.seed}): {p['jobs']} jobs, "
        f"{p['finished']} finished, {p['reusable']} committed logs reusable, {p['to_train']} to train"
        + (f"; refused for reuse: {'; '.join(refused[:3])}" + (" ..." if len(refused) > 3 else "") if refused else "")
    )


def total_plan(cfg: DictConfig, runs: list[DictConfig]) -> Iterator[str]:
    """The study's total for the dry run of its sweep (`replicate.total_plan`; `cfg` the sweep's,
    `runs` its replications'): jobs, reused committed logs, jobs to train and the estimated time."""
    plans = [replication_plan(cfg) for cfg in runs]
    total, reusable = sum(p["jobs"] for p in plans), sum(p["reusable"] for p in plans)
    to_train = sum(p["to_train"] for p in plans)
    known = all(p["seconds"] is not None for p in plans)
    estimate = (
        f"estimated {duration(sum(p['seconds'] for p in plans))} of training"
        if known
        else "no time estimate (no measured cost)"
    )
    raw_dir = Path(str(cfg.task.data.raw_dir))
    if reusable and not raw_dir.is_dir():
        yield (
            f"mechanisms: no raw data in {raw_dir} yet: the reusable logs' raw-data checksums are compared "
            "with it once the data stages have run (a mismatch means they are trained instead)"
        )
    yield (
        f"mechanisms: {len(runs)} replications, {total} jobs: {reusable} reused from committed logs, "
        f"{to_train} to train; {estimate}; results in {cfg.mechanisms.out_dir}"
    )


if __name__ == "__main__":  # the command of the removed study loop: say what replaced it
    raise SystemExit(
        "error: the mechanisms study is a sweep of the app now: `python -m coordchannels -m "
        "experiment=ecg_mechanisms [overrides]` (`make mechanisms`; docs/mechanisms.md)"
    )
