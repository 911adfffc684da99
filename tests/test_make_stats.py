"""`make stats LOGS=... OUT=...` with folder names that need quoting (spaces, apostrophes, ...)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.helpers import write_set

# Each name is a hazard for one quoting layer: the shell's, Hydra's override grammar, or both.
AWKWARD = 'it\'s a "logs" folder, [x]=y'
AWKWARD_OUT = "Sam's results"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_stats_takes_folder_names_with_apostrophes_and_spaces(tmp_path):
    logs = write_set(tmp_path / AWKWARD)
    out = tmp_path / "o u t" / AWKWARD_OUT
    env = {**os.environ, "COORDCHANNELS_ROOT": str(tmp_path)}  # Hydra's own logs under tmp_path
    # -o: take the virtual environment as it is (never pip-install from a test); PY: this Python.
    command = [
        "make",
        "-s",
        "-C",
        str(REPO),
        "-o",
        ".venv/.installed",
        "stats",
        f"PY={sys.executable}",
        f"LOGS={logs}",
        f"OUT={out}",
        "ARGS=stats.n_resamples=100",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    table = pd.read_csv(out / "comparison_table.csv")
    assert len(table) == 3
    assert (out / "learning_curves.png").is_file()
    # nothing was written beside the awkward names (an unquoted name splits into several)
    assert sorted(p.name for p in (tmp_path / "o u t").iterdir()) == [AWKWARD_OUT]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_stats_without_folders_prints_usage():
    done = subprocess.run(
        ["make", "-s", "-C", str(REPO), "-o", ".venv/.installed", "stats", "LOGS=x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "usage: make stats LOGS=<dir> OUT=<dir>" in done.stdout
