"""A study of replications as one Hydra sweep (conf/study/replications.yaml).

Each replication is an ordinary run of the app (`replicate.grouping=<g> replicate.index=<r>`);
`python -m coordchannels -m experiment=ecg_replications` (or `ecg_mechanisms`) runs every one of
the sweep, by default the groupings of `replicate.groupings` x replications `replicate.first` ..
`replicate.n` (`hydra.sweeper.params`), one after another in one process (Hydra's basic sweeper),
each through the runner like any run: finished stages and jobs are skipped. This callback adds
what a study needs around them, through Hydra's public callback API:

- before the first replication: the study's own settings (the summary stage's `check`), every
  replication's number and, unless `dry_run`, its settings and stage checks
  (`pipeline.preflight`), so that a refusal (a committed replication made with other settings or
  on another CPU) comes before hours of training, not after;
- before one replication run on its own (no sweep): its number (`replicate.index`, from 1);
- after the last: the summary stage (`replicate.summary`) once, from the replications' per-fold
  logs; with `dry_run=true` its plan, then the study's total (`replicate.total_plan`) if any.

Replications `first..n` of an empty range (`replicate.first=n+1`) run no replication: only the
summary. Its errors end the command with one line, as the app's own do (coordchannels.entry).
"""

from __future__ import annotations

import copy
import itertools
import logging

from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf, open_dict

from coordchannels.components import complete_arms
from coordchannels.entry import UserError, hydra_message, reported_errors
from coordchannels.pipeline import preflight, run_stages
from coordchannels.replicate import check_replication

log = logging.getLogger(__name__)


def sweep_overrides(config: DictConfig) -> list[list[str]]:
    """The overrides of each run of the sweep, in the order Hydra's basic sweeper runs them: the
    values of `hydra.sweeper.params` and of the command line's overrides (which win), key by key,
    their product (the last key varying fastest)."""
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    lines = [*(f"{key}={value}" for key, value in params.items()), *config.hydra.overrides.task]
    values: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        if override.is_sweep_override():
            values[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            values[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(run) for run in itertools.product(*values.values())]


def compose_run(config_name: str | None, overrides: list[str]) -> DictConfig:
    """One run's config, as Hydra composes it for the sweep; what cannot compose, in one line."""
    try:
        return compose(config_name=config_name, overrides=overrides)
    except Exception as exc:
        raise UserError(hydra_message(exc)) from exc


def summary_config(config: DictConfig) -> DictConfig:
    """The sweep's config (its fixed overrides, not the swept ones) running only the summary stage."""
    cfg = copy.deepcopy(config)
    OmegaConf.set_readonly(cfg, False)
    with open_dict(cfg):
        cfg.pop("hydra", None)
    OmegaConf.update(cfg, "stages", [str(config.replicate.summary)], merge=False)
    return cfg


class ReplicationSweep(Callback):
    """The study around the sweep's runs (see the module)."""

    def __init__(self) -> None:
        self.runs: list[DictConfig] = []  # the sweep's runs, composed before the first starts

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs) -> None:
        with reported_errors():
            preflight(summary_config(config))  # replicate.n, first, groupings (mechanisms: arms, analysis)
            self.runs = [compose_run(config_name, overrides) for overrides in sweep_overrides(config)]
            for run in self.runs:
                complete_arms(run)  # every conf/arm/ file is an arm, as the run's own config has it
                check_replication(run)
            if not config.get("dry_run"):
                for run in self.runs:
                    preflight(run)  # every replication's settings and checks before the first trains
            log.info("%d replication(s) to run, then the %s stage", len(self.runs), config.replicate.summary)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        with reported_errors():
            check_replication(config)  # one replication run on its own, before Hydra writes anything

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        r = config.replicate
        if list(config.stages) != [r.summary]:
            log.info("replication %s, %s grouping (seed and fold seed %s)", r.index, r.grouping, r.seed)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        with reported_errors():
            summary = summary_config(config)
            run_stages(summary)  # under dry_run=true: its plan
            total = config.replicate.get("total_plan")
            if config.get("dry_run") and total:
                for line in get_method(str(total))(summary, self.runs):
                    print(line, flush=True)
