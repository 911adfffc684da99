"""Pure logic of scripts/authors_ecg/authors_scripts_ecg.py: literal patches that fail loudly, log conversion."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "authors_ecg" / "authors_scripts_ecg.py"


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


@pytest.fixture(scope="module")
def compare():
    path = SCRIPT.parent / "compare_authors_ecg.py"
    spec = importlib.util.spec_from_file_location("compare_authors_ecg", path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def tiny_processed(folder: Path, n_samples: int = 6, length: int = 5000):
    """A processed ECG folder with 3 episodes in folds 2, 1, 2 (default split's folds.csv)."""
    import numpy as np

    rng = np.random.default_rng(0)
    episodes = ["418_episode0", "418_episode1", "419_episode0"]
    aug = pd.DataFrame(
        {
            "sample": range(n_samples),
            "episode": [episodes[i // 2] for i in range(n_samples)],
            "variant": [0, 1] * (n_samples // 2),
            "target_s": rng.uniform(0, 20, n_samples),
        }
    )
    (folder / "folds_5_seed_42").mkdir(parents=True)
    aug.to_csv(folder / "augmented.csv", index=False)
    sig = rng.normal(size=(n_samples, 2, length)).astype(np.float32)
    np.save(folder / "augmented.npy", sig)
    pd.DataFrame({"episode": episodes, "fold_episode": [2, 1, 2]}).to_csv(
        folder / "folds_5_seed_42" / "folds.csv", index=False
    )
    return aug, sig


def test_the_runner_trains_their_script_on_our_data_via_the_export(mod, tmp_path):
    """--our-data: the structure stage writes our data in their format (no script of theirs runs)."""
    import torch

    aug, _ = tiny_processed(tmp_path / "ours")
    args = mod.main.__globals__["argparse"].Namespace(
        work=str(tmp_path / "work"), our_data=str(tmp_path / "ours"), python="python", logs_out=None
    )
    runner = mod.Runner(args)
    runner.work.mkdir()
    runner.structure()
    ds = tmp_path / "work" / "ECG_5fold_dataset"
    assert [len(torch.load(ds / "Study" / f"fold_{k}.pt")) for k in range(1, 6)] == [2, 4, 0, 0, 0]
    assert "structure (our data, exported)" in (tmp_path / "work" / "timings.csv").read_text()
    runner.structure()  # done: skipped, nothing redone
    assert (tmp_path / "work" / "timings.csv").read_text().count("exported") == 1


def test_export_in_their_fold_format(compare, tmp_path):
    """Our augmented data written as their structuring script writes its folds: per arm and fold,
    (5000, 3) float32 inputs with their coordinate channels, the target in seconds, our folds."""
    import numpy as np
    import torch

    ours, length = tmp_path / "ours", compare.L
    aug, sig = tiny_processed(ours, length=length)
    out = tmp_path / "theirs"
    compare.export_theirs(ours, out, n_folds=2)

    ramp = np.linspace(0, 20, length)
    for k, samples in ((1, [2, 3]), (2, [0, 1, 4, 5])):
        study = torch.load(out / "Study" / f"fold_{k}.pt")
        base = torch.load(out / "Baseline" / f"fold_{k}.pt")
        assert len(study) == len(base) == len(samples)
        for item_s, item_b, i in zip(study, base, samples):
            x = sig[i].T.astype(np.float64)
            assert item_s["input"].shape == (length, 3) and item_s["input"].dtype == torch.float32
            np.testing.assert_array_equal(item_s["input"][:, :2].numpy(), sig[i].T)
            np.testing.assert_allclose(item_s["input"][:, 2].numpy(), x.mean(1) * ramp, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(item_b["input"][:, 2].numpy(), ramp, rtol=1e-7)
            assert item_s["output"].item() == pytest.approx(aug.target_s[i], rel=1e-6)
            assert item_b["output"].item() == item_s["output"].item()
    assert not list(out.rglob("*.part"))


def test_export_refuses_samples_without_a_fold(compare, tmp_path):
    import numpy as np

    ours = tmp_path / "ours"
    (ours / compare.DEFAULT_FOLDS_DIR).mkdir(parents=True)
    pd.DataFrame({"sample": [0], "episode": ["418_episode0"], "variant": [0], "target_s": [1.0]}).to_csv(
        ours / "augmented.csv", index=False
    )
    np.save(ours / "augmented.npy", np.zeros((1, 2, compare.L), np.float32))
    pd.DataFrame({"episode": ["419_episode0"], "fold_episode": [1]}).to_csv(
        ours / compare.DEFAULT_FOLDS_DIR / "folds.csv", index=False
    )
    with pytest.raises(SystemExit, match="no fold"):
        compare.export_theirs(ours, tmp_path / "theirs")
