"""The one Hydra application: `python -m coordchannels [overrides]` runs `cfg.stages` in order."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from coordchannels.pipeline import run_stages

# The config tree lives at the repository root (conf/), beside src/: the project is used from
# a checkout, installed in editable mode (`make setup`).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
if not (CONF_DIR / "config.yaml").is_file():
    raise SystemExit(f"coordchannels: config tree not found at {CONF_DIR}; use the package from its "
                     "repository checkout, installed with `make setup` (pip install -e .)")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    run_stages(cfg)


if __name__ == "__main__":
    main()
