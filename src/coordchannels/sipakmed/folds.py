"""The SiPaKMeD folds stage: both groupings of every valid sample in one folds.csv (SPEC sections 5, 9)."""

from __future__ import annotations

import logging

import pandas as pd
from omegaconf import DictConfig

from coordchannels.folds import SIPAKMED_GROUPINGS, sipakmed_folds, slide_of
from coordchannels.io import write_csv
from coordchannels.sipakmed.preprocess import SAMPLES_CSV
from coordchannels.stages import StageContext, require_input

log = logging.getLogger(__name__)

FOLDS_CSV = "folds.csv"


def folds_stage(cfg: DictConfig, ctx: StageContext) -> None:
    """folds.csv: sample_id, slide, fold_cell, fold_slide over the sorted valid ids (SPEC section 5).

    Both groupings go in one file so that switching task.data.group_by needs no rerun.
    """
    target = ctx.out / FOLDS_CSV
    # The folds are a function of the whole sample set; the runner reruns this stage whenever the
    # preprocess settings (and so the sample set) change, as it chains their settings into ours.
    samples = pd.read_csv(require_input(ctx.after["preprocess"] / SAMPLES_CSV, "preprocess", "sipakmed"), dtype=str)
    ids = sorted(samples["sample_id"])
    data = cfg.task.data
    table = pd.DataFrame({"sample_id": ids, "slide": [slide_of(i) for i in ids]})
    for group_by in SIPAKMED_GROUPINGS:
        folds = sipakmed_folds(ids, int(data.n_folds), int(data.fold_seed), group_by)
        table[f"fold_{group_by}"] = table["sample_id"].map(folds)
    write_csv(table, target)
    log.info(
        "folds: %d samples; per fold (by cell) %s, (by slide) %s",
        len(table),
        table["fold_cell"].value_counts().sort_index().tolist(),
        table["fold_slide"].value_counts().sort_index().tolist(),
    )
