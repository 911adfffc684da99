"""The ECG download stage: the VFDB records, SHA-256 verified against the shipped registry."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from omegaconf import DictConfig

from coordchannels import download
from coordchannels.stages import StageContext

log = logging.getLogger(__name__)

VFDB_EXTENSIONS = ("hea", "dat", "atr")


def vfdb_files(records: Iterable[int | str]) -> dict[str, str]:
    """{file name: sha256} of the .hea/.dat/.atr files of `records`, from the registry."""
    known = download.registry("vfdb")
    wanted = [f"{record}.{ext}" for record in records for ext in VFDB_EXTENSIONS]
    missing = sorted({name.rsplit(".", 1)[0] for name in wanted if name not in known})
    if missing:
        known_records = sorted({name.rsplit(".", 1)[0] for name in known})
        raise ValueError(
            f"VFDB record(s) {missing} are not in the registry "
            f"(coordchannels/registry/vfdb.sha256); known records: {known_records}"
        )
    return {name: known[name] for name in wanted}


def outputs(cfg: DictConfig) -> list[str]:
    """The stage's declared outputs: every file of every record asked for."""
    return list(vfdb_files(cfg.task.data.records))


def download_stage(cfg: DictConfig, ctx: StageContext) -> None:
    """The VFDB records of `task.data.records` into `ctx.out`, SHA-256 verified.

    Source: the local folder `task.data.mirror` when set (Make variable VFDB_DIR), else
    PhysioNet at `task.data.url`.
    """
    data = cfg.task.data
    with download.local_copy_hint("vfdb"):
        paths = download.obtain_all(
            vfdb_files(data.records),
            ctx.out,
            base_url=data.url,
            mirror=download.mirror_setting(cfg, "task.data.mirror"),
            replace_bad=bool(cfg.overwrite),
            **download.network_settings(cfg),
        )
    log.info("VFDB: %d files verified in %s", len(paths), ctx.out)
