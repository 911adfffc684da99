"""Config values as plain data, and the one check of allowed values.

Allowed values of a setting are declared beside it in the config tree, in a `choices` node of its
group (e.g. `conf/train/default.yaml`: `choices: {precision: [fp32, bf16]}`); the runner checks
all of them before any stage runs (`validate_choices`), so a typo fails at once and nothing is
recorded. Functions that branch on such a value call `choice` too, for callers outside a run.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf


class SettingError(ValueError):
    """A setting has a value the project cannot use; the message names the setting."""


def register_resolvers() -> None:
    """The config's own resolvers (registered when the package is imported):

    - `${cc.sum:a,b,...}`: the integers added (replication r's seed: `base_seed + r - 1`);
    - `${cc.join:list}`: a list as `a,b,...`, the values of a sweep (`hydra.sweeper.params`).

    >>> register_resolvers()
    >>> cfg = OmegaConf.create({"r": 3, "seed": "${cc.sum:42,${r},-1}", "g": "${cc.join:[episode,record]}"})
    >>> cfg.seed, cfg.g
    (44, 'episode,record')
    """
    if not OmegaConf.has_resolver("cc.sum"):
        OmegaConf.register_new_resolver("cc.sum", lambda *values: sum(int(v) for v in values))
    if not OmegaConf.has_resolver("cc.join"):
        OmegaConf.register_new_resolver("cc.join", lambda values: ",".join(str(v) for v in values))


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


def check_added_keys(overrides: Iterable[str], compose: Callable[[list[str]], DictConfig] | None = None) -> None:
    """Refuse an override that adds a setting the config does not have (`+train.epoch=3`, Hydra's
    own advice for `train.epoch=3`, would run and be ignored), naming the nearest known setting.

    `compose(overrides)` composes the app's config (default: Hydra's compose, inside the app); the
    known settings are those of the config composed without the adding overrides (`+key=value`,
    and `++key=value` of a key it lacks). Adding a config group (`+experiment=...`) is not adding
    a setting."""
    from hydra import compose as hydra_compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    compose = compose or (lambda kept: hydra_compose(config_name="config", overrides=kept))

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    adding = [o for o in parsed if (o.is_add() or o.is_force_add()) and not _is_group(o.key_or_group)]
    if not adding:
        return
    known = compose([o.input_line for o in parsed if o not in adding])
    missing = object()
    names = list(setting_names(known))
    for o in adding:
        if OmegaConf.select(known, o.key_or_group, default=missing) is not missing:
            continue  # ++key=value of a known key
        nearest = difflib.get_close_matches(o.key_or_group, names, n=1, cutoff=0.6)
        hint = f"did you mean {nearest[0]}=...?" if nearest else "see `coordchannels --cfg job` for the settings"
        raise SettingError(f"{o.input_line}: the config has no setting {o.key_or_group!r} ({hint})")


def setting_names(cfg: DictConfig, prefix: str = "") -> Iterator[str]:
    """Every dotted setting of the config (lists and values are leaves; Hydra's own left out)."""
    for key in cfg:
        if not prefix and str(key) == "hydra":
            continue
        node = cfg._get_node(key)
        name = f"{prefix}{key}"
        yield name
        if OmegaConf.is_dict(node):
            yield from setting_names(node, f"{name}.")


def _is_group(key: str) -> bool:
    """Whether an override's key names a config group (`experiment`, `arm@arms.x`, `hydra/launcher`)."""
    from coordchannels.components import CONF_DIR

    group = key.split("@")[0]
    return "/" in group or ("." not in group and (CONF_DIR / group).is_dir())
