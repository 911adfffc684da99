"""Fold assignment (SPEC section 5): the scripts' splits, the grouped alternatives, the ECG stage."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from sklearn.model_selection import KFold

from coordchannels.ecg.folds import FOLDS_CSV
from coordchannels.ecg.records import EPISODES_CSV
from coordchannels.folds import ecg_folds, sipakmed_folds, slide_of
from tests.conftest import call_stage, compose_config

# 7 records with 1..7 episodes: 28 episodes, some with two-digit indices (episode10 < episode2)
RECORDS = {"418": 3, "419": 12, "420": 1, "426": 5, "602": 2, "611": 4, "615": 1}
NAMES = [f"{r}_episode{i}" for r, n in RECORDS.items() for i in range(n)]
RECS = [name.split("_")[0] for name in NAMES]


def test_episode_folds_are_kfold_over_the_string_sorted_names():
    folds = ecg_folds(NAMES, RECS)
    assert sorted(folds) == sorted(NAMES) and set(folds.values()) == {1, 2, 3, 4, 5}
    ordered = sorted(NAMES)
    assert ordered.index("419_episode10") < ordered.index("419_episode2")
    kfold = KFold(5, shuffle=True, random_state=42)
    for fold, (_, test) in enumerate(kfold.split(ordered), start=1):
        assert {n for n, f in folds.items() if f == fold} == {ordered[i] for i in test}
    # the order matters: KFold over the names as listed gives another assignment
    listed = {NAMES[i]: f for f, (_, t) in enumerate(kfold.split(NAMES), start=1) for i in t}
    assert listed != folds


def test_episode_folds_are_balanced_and_seeded():
    folds = ecg_folds(NAMES, RECS)
    sizes = Counter(folds.values())
    assert max(sizes.values()) - min(sizes.values()) <= 1 and sum(sizes.values()) == len(NAMES)
    assert ecg_folds(list(reversed(NAMES)), list(reversed(RECS))) == folds  # input order irrelevant
    assert ecg_folds(NAMES, RECS, seed=1) != folds


def test_record_folds_keep_each_record_together():
    folds = ecg_folds(NAMES, RECS, group_by="record")
    per_record = {}
    for name, rec in zip(NAMES, RECS):
        per_record.setdefault(rec, set()).add(folds[name])
    assert all(len(f) == 1 for f in per_record.values())
    records = sorted(RECORDS)
    kfold = KFold(5, shuffle=True, random_state=42)
    for fold, (_, test) in enumerate(kfold.split(records), start=1):
        assert {records[i] for i in test} == {r for r, f in per_record.items() if f == {fold}}


def test_bad_fold_arguments():
    with pytest.raises(ValueError, match="group_by"):
        ecg_folds(NAMES, RECS, group_by="patient")
    with pytest.raises(ValueError, match="cannot make 5 folds from 2 groups"):
        ecg_folds(["a_episode0", "b_episode0"], ["a", "b"], group_by="record")
    with pytest.raises(ValueError, match="not unique"):
        ecg_folds(["a_episode0", "a_episode0"], ["a", "a"])


IDS = ["1_001_01", "1_001_02", "1_002_01", "2_095_10", "2_095_11", "3_010_01", "4_003_02", "5_200_07"]


def test_sipakmed_cell_folds_exact():
    # sorted, random.seed(42); random.shuffle -> 2_095_10, 2_095_11, 4_003_02, 5_200_07, 1_002_01,
    # 3_010_01, 1_001_01, 1_001_02; fold i + 1 = ids[i::5]
    assert sipakmed_folds(list(reversed(IDS))) == {
        "2_095_10": 1,
        "3_010_01": 1,
        "2_095_11": 2,
        "1_001_01": 2,
        "4_003_02": 3,
        "1_001_02": 3,
        "5_200_07": 4,
        "1_002_01": 5,
    }


def test_sipakmed_cell_folds_are_the_scripts_split():
    ids = [f"{c}_{s:03d}_{m:02d}" for c in range(1, 6) for s in range(1, 9) for m in range(1, 4)]
    valid = sorted(ids)
    random.seed(42)
    random.shuffle(valid)
    scripts = {name: i + 1 for i in range(5) for name in valid[i::5]}
    state = random.getstate()
    assert sipakmed_folds(ids) == scripts
    assert random.getstate() == state  # the global random state is left alone


def test_sipakmed_slide_folds_keep_slides_together():
    assert slide_of("2_095_10") == "2_095"
    folds = sipakmed_folds(IDS, group_by="slide")
    slides = sorted({slide_of(i) for i in IDS})
    random.seed(42)
    random.shuffle(slides)
    expected = {s: i % 5 + 1 for i, s in enumerate(slides)}
    assert folds == {i: expected[slide_of(i)] for i in IDS}
    assert folds["1_001_01"] == folds["1_001_02"] and folds["2_095_10"] == folds["2_095_11"]
    with pytest.raises(ValueError, match="group_by"):
        sipakmed_folds(IDS, group_by="patient")


def test_folds_stage_writes_both_groupings(tmp_path):
    cfg = compose_config([f"paths.root_dir={tmp_path}", "task=ecg"])
    out = tmp_path / "data" / "processed" / "ecg"
    out.mkdir(parents=True)
    pd.DataFrame({"record": RECS, "episode": NAMES}).to_csv(out / EPISODES_CSV, index=False)
    call_stage(cfg, "folds")
    table = pd.read_csv(Path(cfg.task.folds_dir) / FOLDS_CSV, dtype={"record": str})
    assert list(table.columns) == ["episode", "record", "fold_episode", "fold_record"]
    assert list(table["episode"]) == NAMES
    assert dict(zip(table["episode"], table["fold_episode"])) == ecg_folds(NAMES, RECS)
    assert dict(zip(table["episode"], table["fold_record"])) == ecg_folds(NAMES, RECS, group_by="record")


def test_folds_stage_needs_episodes(tmp_path):
    cfg = compose_config([f"paths.root_dir={tmp_path}", "task=ecg"])
    with pytest.raises(FileNotFoundError, match=r"episodes\.csv not found"):
        call_stage(cfg, "folds")
