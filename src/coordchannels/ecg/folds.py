"""The ECG folds stage: both groupings of every episode in one folds.csv (SPEC sections 5, 9)."""

from __future__ import annotations

import logging

import pandas as pd
from omegaconf import DictConfig

from coordchannels.ecg.records import EPISODES_CSV
from coordchannels.folds import ECG_GROUPINGS, ecg_folds
from coordchannels.io import write_csv
from coordchannels.stages import StageContext

log = logging.getLogger(__name__)

FOLDS_CSV = "folds.csv"


def folds_stage(cfg: DictConfig, ctx: StageContext) -> None:
    """Write `ctx.out`/folds.csv (episode, record, fold_episode, fold_record) from the episodes.csv of
    the extract stage (`ctx.out` is task.folds_dir: one folder per fold split).

    Both groupings go in one file so that switching task.data.group_by needs no rerun; the loader
    reads column fold_<group_by>.
    """
    source = ctx.after["extract"] / EPISODES_CSV
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: run the extract stage first (`make data TASK=ecg`)")
    episodes = pd.read_csv(source, dtype={"record": str})
    data = cfg.task.data
    table = pd.DataFrame({"episode": episodes["episode"], "record": episodes["record"]})
    for group_by in ECG_GROUPINGS:
        folds = ecg_folds(table["episode"], table["record"], int(data.n_folds), int(data.fold_seed), group_by)
        table[f"fold_{group_by}"] = table["episode"].map(folds)
    write_csv(table, ctx.out / FOLDS_CSV)
    log.info(
        "folds: %d episodes, episodes per fold (by episode) %s",
        len(table),
        table["fold_episode"].value_counts().sort_index().tolist(),
    )
