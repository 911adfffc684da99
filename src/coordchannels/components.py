"""The facts of models and arms, read from their config files (conf/model, conf/arm).

Everything about a component lives in its YAML file: an arm's channels and model arguments, and
how tables and figures show it (`label`, `colour`, `order`); a model's network, its folder name in
the published log layout (`log_name`), its short `label` and its rank (`order`). Code asks here
instead of keeping its own lists, so a new arm or model is one file.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

CONF_DIR = Path(__file__).resolve().parent / "conf"
# Colours for arms whose file names none (matplotlib's tab palette, after the named ones).
SPARE_COLOURS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


@cache
def group_files(group: str) -> dict[str, DictConfig]:
    """{option name: its YAML, unresolved} for every file of config group `group`."""
    return {path.stem: OmegaConf.load(path) for path in sorted((CONF_DIR / group).glob("*.yaml"))}


def complete_arms(cfg: DictConfig) -> None:
    """Add to cfg.arms every arm file of conf/arm/ not already composed into it."""
    with open_dict(cfg):
        if cfg.get("arms") is None:
            cfg.arms = {}
        for name, node in group_files("arm").items():
            if name not in cfg.arms:
                cfg.arms[name] = node


def arm_order(cfg: DictConfig | None = None) -> dict[str, int]:
    """{arm name: rank}: baseline first; all-pairs comparisons take later minus earlier."""
    arms = cfg.arms if cfg is not None and cfg.get("arms") else group_files("arm")
    return {str(node.get("name", name)): int(node.get("order", 1000)) for name, node in arms.items()}


def model_order() -> dict[str, int]:
    """{log folder name: rank} of every model file (the paper's Table 3 order)."""
    return {str(node.log_name): int(node.get("order", 1000)) for node in group_files("model").values()}


def arm_style(cfg: DictConfig | None, arm: str, spare_index: int = 0) -> tuple[str, str, bool]:
    """(legend label, colour, known) of an arm; an unknown arm gets its name and a spare colour."""
    arms = cfg.arms if cfg is not None and cfg.get("arms") else group_files("arm")
    node = arms.get(arm)
    if node is None or node.get("colour") is None:
        return arm, SPARE_COLOURS[spare_index % len(SPARE_COLOURS)], False
    return str(node.get("label", arm)), str(node.colour), True


def ordered(names, order: dict[str, int]) -> list[str]:
    """`names` by rank in `order`, unknown names after the known ones, alphabetically.

    >>> ordered(["zzz", "study", "control"], {"control": 1, "study": 2})
    ['control', 'study', 'zzz']
    """
    return sorted(dict.fromkeys(names), key=lambda n: (order.get(n, float("inf")), n))
