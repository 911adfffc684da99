"""The one Hydra application: `coordchannels [overrides]` (or `python -m coordchannels`) runs
`cfg.stages` in order. The config tree ships inside the package (coordchannels/conf), so the
command works from any folder after `pip install .`; relative paths are under the current folder
(`paths.root_dir`, or the COORDCHANNELS_ROOT environment variable).

A wrong setting stops with its message (`error: ...`) and no traceback. `dry_run=true` prints what would run and the training plan (jobs, device, estimated time) and
stops. Ctrl-C stops with one line: every stage and job resumes where it stopped when the same
command is run again.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from coordchannels.pipeline import StageError, run_stages
from coordchannels.settings import SettingError, check_added_keys
from coordchannels.train.record import RunConfigError

log = logging.getLogger("coordchannels")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        check_added_keys(HydraConfig.get().overrides.task)  # `+train.epoch=3` is a typo too
        run_stages(cfg)  # prints the plan and writes nothing under dry_run=true
        if cfg.get("dry_run"):
            _forget_hydra_output(cfg)
    except (SettingError, StageError, RunConfigError) as exc:  # a setting to change: its message, no traceback
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print(
            "\ninterrupted; rerun the same command to resume (finished stages and epochs are kept)",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(130)


def _forget_hydra_output(cfg: DictConfig) -> None:
    """A dry run leaves nothing behind: remove the log folder Hydra made for this run (only when it
    is inside paths.log_dir, where the config puts it)."""
    try:
        out = Path(HydraConfig.get().runtime.output_dir).resolve()
    except ValueError:  # not started by Hydra's main
        return
    if not out.is_relative_to(Path(str(cfg.paths.log_dir)).resolve()):
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve().is_relative_to(out):
            root.removeHandler(handler)
            handler.close()
    shutil.rmtree(out, ignore_errors=True)
    # and the folders made only to hold it (data/logs/hydra/<task>), when empty, below paths.root_dir
    top = Path(str(cfg.paths.root_dir)).resolve()
    for parent in out.parents:
        if parent == top or not parent.is_relative_to(top) or any(parent.iterdir()):
            break
        parent.rmdir()


if __name__ == "__main__":
    main()
