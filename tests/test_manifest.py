"""The manifest records what a committed result needs: config, commit, versions, data, hardware."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from coordchannels.pipeline import record_timing
from coordchannels.stages import stage_spec
from tests.conftest import call_stage


def test_manifest_records_run_and_copies_logs(make_cfg, tmp_path):
    cfg = make_cfg("task=ecg")
    raw = Path(cfg.task.data.raw_dir)
    raw.mkdir(parents=True)
    (raw / "418.hea").write_text("418 2 250 525000\n")
    (raw / "418.dat.part").write_text("partial download: must not be listed")
    log = Path(cfg.stats.logs_dir) / "NimeshaNet" / "control_set_fold_1_log.csv"
    log.parent.mkdir(parents=True)
    log.write_text("epoch,train_r2,test_r2\n1,0.5,0.4\n")
    (log.parent / "checkpoint.pt").write_bytes(b"not a log")
    record_timing(stage_spec(cfg, "train"), 12.5)

    call_stage(cfg, "manifest")

    out = Path(cfg.stats.out_dir)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "ecg" and manifest["seed"] == 42
    assert manifest["data_sha256"] == {"418.hea": hashlib.sha256(b"418 2 250 525000\n").hexdigest()}
    assert manifest["stage_wall_time"]["train"][-1]["seconds"] == 12.5
    assert manifest["packages"]["torch"].startswith("2.")
    assert manifest["hardware"]["cpu_count"] >= 1
    assert manifest["config"]["train"]["lr"] == 1e-3
    assert manifest["logs_copied"] == 1
    assert (out / "fold_logs" / "NimeshaNet" / "control_set_fold_1_log.csv").read_text() == log.read_text()
    assert not (out / "fold_logs" / "NimeshaNet" / "checkpoint.pt").exists()


def test_locked_archives_are_not_hashed_again(tmp_path):
    from coordchannels.manifest import data_checksums

    (tmp_path / "im_Parabasal.7z").write_bytes(b"archive bytes")
    (tmp_path / "notes.txt").write_bytes(b"y")
    lock = {"im_Parabasal.7z": {"sha256": "recorded-at-download", "size": 13}}
    (tmp_path / "sipakmed_archives.lock.json").write_text(json.dumps(lock))
    sums = data_checksums(tmp_path)
    assert sums["im_Parabasal.7z"] == "recorded-at-download"
    assert sums["notes.txt"] == hashlib.sha256(b"y").hexdigest()


def test_archives_read_from_a_mirror_and_cropped_cells_are_in_the_checksums(tmp_path):
    """The lock lists archives that stay in the mirror; the extracted cells get one tree digest
    that changes when any cell file does."""
    from coordchannels.manifest import data_checksums

    lock = {"im_Parabasal.7z": {"sha256": "recorded", "size": 13}}
    (tmp_path / "sipakmed_archives.lock.json").write_text(json.dumps(lock))
    cells = tmp_path / "cropped" / "Parabasal"
    cells.mkdir(parents=True)
    (cells / "001_01.bmp").write_bytes(b"image")
    (cells / "001_01_nuc.dat").write_bytes(b"1,2\n")
    sums = data_checksums(tmp_path)
    assert sums["im_Parabasal.7z"] == "recorded"
    before = sums["cropped/"]
    assert len(before) == 64
    (cells / "001_01_nuc.dat").write_bytes(b"1,3\n")
    assert data_checksums(tmp_path)["cropped/"] != before
