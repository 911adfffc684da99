"""Config values as plain data, and the one check of allowed values.

Allowed values of a setting are declared beside it in the config tree, in a `choices` node of its
group (e.g. `conf/train/default.yaml`: `choices: {precision: [fp32, bf16]}`); the runner checks
all of them before any stage runs (`validate_choices`), so a typo fails at once and nothing is
recorded. Functions that branch on such a value call `choice` too, for callers outside a run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf


class SettingError(ValueError):
    """A setting has a value the project cannot use; the message names the setting."""


def choice(value: Any, allowed: Iterable, key: str) -> Any:
    """`value` when it is one of `allowed`, else a SettingError naming the setting `key`.

    >>> choice("exact", ("substring", "exact"), "task.data.label_match")
    'exact'
    """
    allowed = tuple(allowed)
    if value not in allowed:
        raise SettingError(f"{key} must be one of {list(allowed)}, got {value!r}")
    return value


def declared_choices(cfg: DictConfig, prefix: str = "") -> Iterator[tuple[str, list]]:
    """(dotted setting, allowed values) for every `choices` node in the config tree."""
    for key in cfg:
        node = cfg._get_node(key)
        if key == "choices" and OmegaConf.is_dict(node):
            for name, allowed in node.items():
                yield f"{prefix}{name}", list(allowed)
        elif OmegaConf.is_dict(node) and not str(key).startswith("hydra"):
            yield from declared_choices(node, f"{prefix}{key}.")


def validate_choices(cfg: DictConfig) -> None:
    """Check every declared choice of the composed config (see the module docstring)."""
    for key, allowed in declared_choices(cfg):
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        choice(plain(value), allowed, key)


def plain(node: Any) -> Any:
    """A resolved config node as plain Python containers (other values as they are)."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def canonical(value: Any) -> str:
    """A stable text form of plain data: equal settings give equal strings.

    >>> canonical({"b": 1, "a": [2, 3]})
    '{"a": [2, 3], "b": 1}'
    """
    return json.dumps(value, sort_keys=True, default=str)
