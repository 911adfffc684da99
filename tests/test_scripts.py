"""Every script under scripts/ imports and prints its usage: a script that imports a name the
package no longer has fails here, not on the day someone runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPTS = sorted((REPO / "scripts").rglob("*.py"))


def test_scripts_are_found():
    names = {p.relative_to(REPO / "scripts").as_posix() for p in SCRIPTS}
    assert {"bench_ecg.py", "authors_ecg/authors_scripts_ecg.py"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(REPO / "scripts").as_posix())
def test_script_help(script):
    # Run from the repository root, as the scripts' own usage lines do.
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{script.name} --help failed:\n{done.stderr[-2000:]}"
    assert done.stdout.startswith("usage:"), done.stdout[:500]
