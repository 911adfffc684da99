"""Cross-validation folds (SPEC section 5): pure assignment functions shared by the tasks' folds stages.

All variants of one base sample always share a fold; what counts as "one base sample" is the
`group_by` option (SPEC section 9). The defaults reproduce the authors' scripts:
- ECG: KFold(5, shuffle=True, random_state=42) over the episode names sorted as strings (the order
  pandas groupby gave them); `record` instead keeps all episodes of one patient together.
- SiPaKMeD: the sorted valid ids shuffled by Python's `random` seeded 42, fold i = ids[i::5];
  `slide` instead keeps all cells cut from one slide image together.
Folds are 1-based, as in the published logs (`fold_1` .. `fold_5`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from sklearn.model_selection import KFold

from coordchannels.settings import choice

log = logging.getLogger(__name__)

ECG_GROUPINGS = ("episode", "record")
SIPAKMED_GROUPINGS = ("cell", "slide")


def kfold_groups(keys: Sequence[str], n_folds: int = 5, seed: int = 42) -> dict[str, int]:
    """key -> 1-based fold: sklearn KFold(shuffle=True, random_state=seed) over `keys` in the given order.

    >>> kfold_groups(list("abcde"), n_folds=5, seed=42)
    {'b': 1, 'e': 2, 'c': 3, 'a': 4, 'd': 5}
    """
    if len(keys) < n_folds:
        raise ValueError(f"cannot make {n_folds} folds from {len(keys)} groups")
    kfold = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = {}
    for fold, (_, test) in enumerate(kfold.split(list(keys)), start=1):
        for i in test:
            folds[keys[i]] = fold
    return folds


def ecg_folds(
    episode_names: Sequence[str], records: Sequence, n_folds: int = 5, seed: int = 42, group_by: str = "episode"
) -> dict[str, int]:
    """Episode name -> 1-based fold; `records[i]` is the record of `episode_names[i]`.

    episode: KFold over the names sorted as strings (episode10 before episode2, as the scripts).
    record: the same KFold over the sorted unique records; each episode takes its record's fold.
    """
    choice(group_by, ECG_GROUPINGS, "task.data.group_by")
    names = [str(n) for n in episode_names]
    recs = [str(r) for r in records]
    if len(names) != len(recs):
        raise ValueError(f"{len(names)} episode names but {len(recs)} records")
    if len(set(names)) != len(names):
        raise ValueError("episode names are not unique")
    if group_by == "episode":
        return kfold_groups(sorted(names), n_folds, seed)
    record_fold = kfold_groups(sorted(set(recs)), n_folds, seed)
    return {name: record_fold[rec] for name, rec in zip(names, recs)}


def slide_of(sample_id: str) -> str:
    """`2_095_10` -> `2_095`: class prefix + slide image number, without the `_MM` cell number.

    >>> slide_of("2_095_10")
    '2_095'
    """
    return str(sample_id).rsplit("_", 1)[0]


def round_robin_groups(keys: Sequence[str], n_folds: int = 5, seed: int = 42) -> dict[str, int]:
    """key -> 1-based fold: sorted keys shuffled as by `random.seed(seed); random.shuffle`, fold
    i + 1 = keys[i::n_folds]. A private Random instance gives the same sequence as the seeded
    module-level one without disturbing the global random state.

    >>> round_robin_groups(list("abcdef"), n_folds=3, seed=42)
    {'d': 1, 'b': 2, 'c': 3, 'e': 1, 'a': 2, 'f': 3}
    """
    order = sorted(keys)
    random.Random(seed).shuffle(order)
    return {key: i % n_folds + 1 for i, key in enumerate(order)}


def sipakmed_folds(ids: Sequence[str], n_folds: int = 5, seed: int = 42, group_by: str = "cell") -> dict[str, int]:
    """Valid sample id -> 1-based fold. cell: the scripts' split of the ids themselves; slide: the
    same split of the unique slides (class + NNN), every cell taking its slide's fold."""
    choice(group_by, SIPAKMED_GROUPINGS, "task.data.group_by")
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise ValueError("sample ids are not unique")
    if group_by == "cell":
        return round_robin_groups(ids, n_folds, seed)
    slide_fold = round_robin_groups(sorted({slide_of(i) for i in ids}), n_folds, seed)
    return {i: slide_fold[slide_of(i)] for i in ids}
