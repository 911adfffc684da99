"""Which coordinate mechanism helps? The replicated study of every arm (`make mechanisms`).

NimeshaNet with the arms of `mechanisms.arms` (none, control, study, intensity, coordconv_norm,
coordgate, softargmax), 5 folds, replications 1..n under each grouping. Replication r has training
seed and fold seed `base_seed + r - 1` (coordchannels.replicate.replication_config), so its
control and study jobs are the jobs of replication r of `results/ecg_replications/`: their
committed logs are reused (coordchannels.reuse) instead of trained again where their job
fingerprint matches; every other job, and every one whose fingerprint differs, is trained.

Each replication runs the task's stages into its own run folder (`train.run_name=
mechanisms_<grouping>_<r>`, resumable: the runner skips finished stages and jobs) and results
folder `<mechanisms.out_dir>/<grouping>/replication_<r>/`, then the `mechanisms_summary` stage
writes the pre-stated analysis (coordchannels.mechanisms_analysis) from their per-fold logs alone.
`<out_dir>/reused_logs.csv` lists every committed log considered: reused (with the CPU that
trained it) or refused (and why). `dry_run=true` prints each replication's plan and the total.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from coordchannels.io import write_csv
from coordchannels.mechanisms_analysis import check_analysis
from coordchannels.pipeline import preflight, run_stages
from coordchannels.replicate import replication_config, replication_seed
from coordchannels.reuse import REUSE_COLUMNS, reuse_committed_logs
from coordchannels.settings import SettingError
from coordchannels.train.progress import duration, make_plan

log = logging.getLogger(__name__)


def mechanisms_config(cfg: DictConfig, grouping: str, r: int) -> DictConfig:
    """Replication r under `grouping`: the replication's seeds, this study's run and results folders."""
    rep = replication_config(cfg, grouping, r)
    OmegaConf.update(rep, "train.run_name", f"mechanisms_{grouping}_{r}", merge=False)
    return rep


def source_folder(cfg: DictConfig, grouping: str, r: int) -> Path:
    """The committed replication whose control and study logs replication r may reuse."""
    return Path(str(cfg.mechanisms.reuse_from)) / grouping / f"replication_{r}"


def replications(cfg: DictConfig) -> list[tuple[str, int, DictConfig]]:
    m = cfg.mechanisms
    n, first = int(m.n), int(m.get("first", 1))
    if n < 2:
        raise SettingError(f"mechanisms.n={n}: the analysis pools replications; give at least 2")
    if not 1 <= first <= n:
        raise SettingError(f"mechanisms.first={first}: give a replication between 1 and mechanisms.n={n}")
    unknown = [a for a in m.arms if a not in cfg.arms]
    if unknown:
        raise SettingError(f"mechanisms.arms: unknown arm(s) {unknown}; the arms are {sorted(cfg.arms)}")
    check_analysis(cfg)  # the pre-stated analysis must be usable before hours of training
    return [(g, r, mechanisms_config(cfg, g, r)) for g in m.groupings for r in range(first, n + 1)]


def run_mechanisms(cfg: DictConfig) -> None:
    from coordchannels.components import complete_arms

    complete_arms(cfg)
    runs = replications(cfg)
    if cfg.get("dry_run"):
        print_plan(cfg, runs)
        return
    for _, _, rep in runs:
        preflight(rep)  # refuse bad settings before hours of training
    considered = []
    for grouping, r, rep in runs:
        log.info(
            "mechanisms: replication %d, %s grouping (seed and fold seed %d)", r, grouping, replication_seed(cfg, r)
        )
        data = copy.deepcopy(rep)
        OmegaConf.update(data, "stages", list(rep.task.data_stages), merge=False)
        run_stages(data)  # the data the job fingerprints name, before any log is reused
        considered += reuse_committed_logs(
            rep, source_folder(cfg, grouping, r), list(cfg.mechanisms.reuse_arms), grouping, r
        )
        write_reuse_table(cfg, considered)
        run_stages(rep)
    summary = copy.deepcopy(cfg)
    OmegaConf.update(summary, "stages", ["mechanisms_summary"], merge=False)
    run_stages(summary)


def write_reuse_table(cfg: DictConfig, rows: list[dict]) -> None:
    """Every committed log considered so far, merged with what earlier runs recorded."""
    path = Path(str(cfg.mechanisms.out_dir)) / "reused_logs.csv"
    table = pd.DataFrame(rows, columns=REUSE_COLUMNS)
    if path.exists():
        old = pd.read_csv(path, dtype=str, keep_default_na=False)
        keys = ["grouping", "replication", "arm", "fold"]
        new_keys = set(map(tuple, table[keys].astype(str).to_numpy()))
        old = old[[tuple(k) not in new_keys for k in old[keys].astype(str).to_numpy()]]
        table = pd.concat([old, table.astype(str)], ignore_index=True)
    table = table.astype(str).sort_values(["grouping", "replication", "arm", "fold"], kind="stable")
    write_csv(table, path)


def print_plan(cfg: DictConfig, runs: list[tuple[str, int, DictConfig]]) -> None:
    """Each replication's plan and the study's total: jobs, reusable committed logs, estimate."""
    total = to_train = reusable = 0
    seconds = 0.0
    known = True
    for grouping, r, rep in runs:
        plan = make_plan(rep)
        checks = reuse_committed_logs(
            rep, source_folder(cfg, grouping, r), list(cfg.mechanisms.reuse_arms), grouping, r, dry_run=True
        )
        n_reuse = sum(c["status"] == "reusable" for c in checks)
        left = len(plan.jobs) - plan.finished - n_reuse
        total, to_train, reusable = total + len(plan.jobs), to_train + max(0, left), reusable + n_reuse
        if plan.epoch_s is None:
            known = False
        else:
            # jobs side by side in waves, as the plan of one run estimates it
            waves = -(-max(0, left) // plan.side_by_side)
            seconds += waves * plan.epochs * plan.epoch_s
        refused = [f"{c['arm']} fold {c['fold']}: {c['reason']}" for c in checks if c["status"] == "refused"]
        print(
            f"mechanisms: {grouping} replication {r} (seed {replication_seed(cfg, r)}): {len(plan.jobs)} jobs, "
            f"{plan.finished} finished, {n_reuse} committed logs reusable, {max(0, left)} to train"
            + (
                f"; refused for reuse: {'; '.join(refused[:3])}" + (" ..." if len(refused) > 3 else "")
                if refused
                else ""
            ),
            flush=True,
        )
    estimate = f"estimated {duration(seconds)} of training" if known else "no time estimate (no measured cost)"
    raw_dir = Path(str(cfg.task.data.raw_dir))
    if reusable and not raw_dir.is_dir():
        print(
            f"mechanisms: no raw data in {raw_dir} yet: the reusable logs' raw-data checksums are compared "
            "with it once the data stages have run (a mismatch means they are trained instead)",
            flush=True,
        )
    print(
        f"mechanisms: {len(runs)} replications, {total} jobs: {reusable} reused from committed logs, "
        f"{to_train} to train; {estimate}; results in {cfg.mechanisms.out_dir}",
        flush=True,
    )


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_mechanisms(cfg)


if __name__ == "__main__":
    main()
