"""Pure logic of scripts/authors_scripts_ecg.py: literal patches that fail loudly, log conversion."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "authors_scripts_ecg.py"


@pytest.fixture(scope="module")
def mod():
    spec = importlib.util.spec_from_file_location("authors_scripts_ecg", SCRIPT)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def test_patch_applies_and_fills_placeholders(mod):
    text = 'a = 1\nout = "X:\\\\old"\nworkers=4\n'
    subs = [('out = "X:\\\\old"', "out = '{windows}'", 1, "path"), ("workers=4", "workers=0", 1, "workers")]
    got = mod.apply_patches(text, subs, {"{windows}": "/tmp/w"}, "f.py")
    assert got == "a = 1\nout = '/tmp/w'\nworkers=0\n"


def test_patch_missing_target_fails_loudly(mod):
    with pytest.raises(mod.PatchError, match="expected 1 match.*found 0"):
        mod.apply_patches("nothing here\n", [("num_workers=4", "num_workers=0", 1, "why")], name="t.py")


def test_patch_wrong_count_fails_loudly(mod):
    with pytest.raises(mod.PatchError, match="found 2"):
        mod.apply_patches("x=4\nx=4\n", [("x=4", "x=0", 1, "why")])


def test_every_listed_patch_has_a_reason_and_count(mod):
    subs = mod.patches("/vfdb")
    assert set(subs) == set(mod.SCRIPTS)
    for name, items in subs.items():
        for old, new, count, why in items:
            assert old and old != new and count >= 1 and why, name
    # the seed goes right after the imports of the augmentation script, nowhere else
    seeds = [new for items in subs.values() for _, new, _, _ in items if "seed" in new]
    assert seeds == ["from scipy import signal\nnp.random.seed(42)\n"]


def test_convert_log_to_published_layout(mod, tmp_path):
    src = tmp_path / "Baseline_fold_3_log.csv"
    pd.DataFrame({"epoch": [1, 2], "train_r2": [0.1, 0.25], "test_r2": [0.3, -0.5]}).to_csv(src, index=False)
    dst = tmp_path / "out" / "NimeshaNet" / mod.published_log_name("control", 3)
    mod.convert_log(src, dst)
    got = pd.read_csv(dst)
    assert list(got.columns) == ["epoch", "train_r2", "test_r2"]
    assert got["epoch"].tolist() == [1, 2] and got["test_r2"].tolist() == [0.3, -0.5]
    assert dst.name == "control_set_fold_3_log.csv"
    assert mod.their_log_name("control", 3) == "Baseline_fold_3_log.csv"
    assert mod.their_log_name("study", 1) == "Study_fold_1_log.csv"


def test_convert_log_rejects_other_columns(mod, tmp_path):
    src = tmp_path / "x.csv"
    pd.DataFrame({"epoch": [1], "loss": [0.1]}).to_csv(src, index=False)
    with pytest.raises(ValueError, match="unexpected columns"):
        mod.convert_log(src, tmp_path / "y.csv")
