"""The one Hydra application: `coordchannels [overrides]` (or `python -m coordchannels`) runs
`cfg.stages` in order. The config tree ships inside the package (coordchannels/conf), so the
command works from any folder after `pip install .`; relative paths are under the current folder
(`paths.root_dir`, or the COORDCHANNELS_ROOT environment variable)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from coordchannels.pipeline import run_stages


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stages(cfg)


if __name__ == "__main__":
    main()
