"""The one Hydra application: `python -m coordchannels [overrides]` runs `cfg.stages` in order."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from coordchannels.pipeline import run_stages

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    run_stages(cfg)


if __name__ == "__main__":
    main()
