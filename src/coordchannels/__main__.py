"""The one Hydra application: `coordchannels [overrides]` (or `python -m coordchannels`) runs
`cfg.stages` in order. The config tree ships inside the package (coordchannels/conf), so the
command works from any folder after `pip install .`; relative paths are under the current folder
(`paths.root_dir`, or the COORDCHANNELS_ROOT environment variable).

A wrong setting stops with one line (`error: ...`) and no traceback (coordchannels.entry).
`dry_run=true` prints what would run and the training plan (jobs, device, estimated time) and
stops, writing nothing. `-m` runs a Hydra sweep of such runs, one after another: a study of
replications is one (`coordchannels -m experiment=ecg_replications`; coordchannels.sweep). Ctrl-C stops with one line: every stage and job resumes where it stopped
when the same command is run again.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from coordchannels.entry import hydra_entry, reports_errors
from coordchannels.pipeline import run_stages
from coordchannels.settings import check_added_keys


@hydra_entry
@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@reports_errors
def main(cfg: DictConfig) -> None:
    check_added_keys(HydraConfig.get().overrides.task)  # `+train.epoch=3` is a typo too
    run_stages(cfg)  # prints the plan and writes nothing under dry_run=true


if __name__ == "__main__":
    main()
