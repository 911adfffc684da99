"""Every committed table recomputes from its committed per-fold logs (`make restats` would change
nothing), and none prints a p-value below what its test can reach."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from coordchannels.pipeline import run_stages
from coordchannels.stats.comparison import build_outputs
from coordchannels.stats.restats import restats_config, stats_folders

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = stats_folders(ROOT / "results") if (ROOT / "results").is_dir() else []


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the committed configs hold paths relative to the repository


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.relative_to(ROOT / "results").as_posix())
def test_committed_tables_recompute_from_their_logs(folder):
    outputs = build_outputs(restats_config(folder.relative_to(ROOT)))
    for name, fresh in outputs.items():
        if not name.endswith(".csv"):
            continue
        committed = pd.read_csv(folder / name)
        fresh = pd.read_csv(pd.io.common.StringIO(fresh.to_csv(index=False)))
        assert list(committed.columns) == list(fresh.columns), name
        pd.testing.assert_frame_equal(committed, fresh, check_exact=False, rtol=1e-12, obj=f"{folder}/{name}")
    table = next(v for k, v in outputs.items() if k.endswith("table.csv"))
    assert (table.p_exact_two_sided >= 2 / 2.0**table.n_units - 1e-15).all()  # never below the floor
    md = next(v for k, v in outputs.items() if k.endswith("table.md"))
    assert "ONE-SIDED" in md and "TWO-SIDED" in md and "| 0.00000 |" not in md
    if (table.n_units <= 5).all():  # with 5 folds a bootstrap p of 0 means all 5 differences share a sign
        assert "<0.0000" not in md


def test_there_are_committed_results_to_check():
    assert len(FOLDERS) >= 10 or not (ROOT / "results").is_dir()
    assert np.all([os.path.isdir(f / "logs") for f in FOLDERS])


def resummarise(committed: Path, stage: str, into: Path) -> Path:
    """Rerun a committed study summary (`make restats`'s way) on a copy of its folder without the
    summary's own outputs; returns the copy."""
    import shutil

    from coordchannels.stats.restats import summary_config

    copy = into / committed.name
    shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("*.png", f"{stage}*.csv", f"{stage}*.md"))
    assert run_stages(summary_config(copy, stage)) == [stage]
    return copy


def test_the_committed_replication_summary_recomputes_from_the_replications_logs(tmp_path):
    from coordchannels.replicate import summary_outputs
    from coordchannels.stats.restats import summary_config

    committed = ROOT / "results" / "ecg_replications"
    if not (committed / "logs" / "replication_summary.config.yaml").is_file():
        pytest.skip("no committed replication summary in results/ecg_replications")
    copy = resummarise(committed, "replication_summary", tmp_path)
    for name in summary_outputs(summary_config(copy)):
        if name.endswith(".csv"):
            pd.testing.assert_frame_equal(
                pd.read_csv(committed / name), pd.read_csv(copy / name), check_exact=False, rtol=1e-12, obj=name
            )
    summary = pd.read_csv(copy / "replication_summary.csv")
    assert (summary.p_sign_flip >= summary.p_sign_flip_floor - 1e-15).all()


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_restats_updates_the_manifest_and_restores_a_folder_whose_logs_changed(tmp_path):
    import shutil

    from coordchannels.stats.restats import restat
    from coordchannels.verify import check_files, recorded_files

    committed = ROOT / "results" / "ecg"
    if not (committed / "manifest.json").is_file():
        pytest.skip("no committed results/ecg")
    folder = tmp_path / "ecg"
    shutil.copytree(committed, folder)
    untouched = _tree(committed)
    restat(folder)
    assert check_files(folder, recorded_files(folder)) == []
    assert (folder / "comparison_table.csv").read_bytes() == (committed / "comparison_table.csv").read_bytes()
    # A per-fold log changed in place (same size): the recomputation stops and restores the folder.
    log = next((folder / "fold_logs").rglob("*_log.csv"))
    data = bytearray(log.read_bytes())
    data[-3] = ord("7") if data[-3] != ord("7") else ord("3")
    log.write_bytes(bytes(data))
    before = _tree(folder)
    with pytest.raises(Exception, match="differ|changed"):
        restat(folder)
    assert _tree(folder) == before
    assert _tree(committed) == untouched  # it wrote only into the folder it was given


def test_the_committed_mechanisms_summary_recomputes_from_the_replications_logs(tmp_path):
    from coordchannels.mechanisms_analysis import OUTPUTS

    committed = ROOT / "results" / "ecg_mechanisms"
    if not (committed / "logs" / "mechanisms_summary.config.yaml").is_file():
        pytest.skip("results/ecg_mechanisms has no pooled summary yet: it is written once all ten replications exist")
    copy = resummarise(committed, "mechanisms_summary", tmp_path)
    for name in OUTPUTS:
        if name.endswith(".csv"):
            pd.testing.assert_frame_equal(
                pd.read_csv(committed / name), pd.read_csv(copy / name), check_exact=False, rtol=1e-12, obj=name
            )
    assert (committed / "mechanisms_summary.md").read_text() == (copy / "mechanisms_summary.md").read_text()
    primary = pd.read_csv(copy / "mechanisms_primary.csv")
    assert len(primary) == 6 * 3 * 2  # six comparisons x three metrics x two groupings, as pre-stated
