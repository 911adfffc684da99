"""Replications of the ECG study: the two-level bootstrap, independent replications, and a summary
computed from the replications' per-fold logs alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from coordchannels.folds import ecg_folds
from coordchannels.pipeline import run_stages
from coordchannels.replicate import replication_config
from coordchannels.stats.comparison import hierarchical_exact, hierarchical_means
from coordchannels.train import build_model, seed_everything
from tests.conftest import compose_config
from tests.helpers import write_set


def weighted_quantile(values, weights, q):
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return values[order][np.searchsorted(cum, q)]


def test_hierarchical_bootstrap_agrees_with_exact_enumeration():
    groups = [np.array([0.1, 0.3]), np.array([0.2, 0.6, 0.4])]
    exact, weights = hierarchical_exact(groups)
    assert weights.sum() == pytest.approx(1.0)
    means = hierarchical_means(groups, 200_000, seed=1)
    assert means.mean() == pytest.approx(float(np.dot(exact, weights)), abs=2e-3)
    for q in (0.025, 0.5, 0.975):
        assert np.quantile(means, q) == pytest.approx(weighted_quantile(exact, weights, q), abs=0.02)
    # Replications vary too: the spread exceeds a bootstrap of the pooled folds alone.
    flat = np.concatenate(groups)
    pooled_only = flat[np.random.default_rng(0).integers(0, len(flat), (20000, len(flat)))].mean(axis=1)
    assert means.std() > 0.9 * pooled_only.std()


def test_replications_are_independent_re_runs(tmp_path):
    cfg = compose_config(["experiment=ecg_replications", f"paths.root_dir={tmp_path}"])
    one, two = replication_config(cfg, "record", 1), replication_config(cfg, "record", 2)
    assert (one.train.seeds[0], one.task.data.fold_seed) == (42, 42)  # the published protocol
    assert (two.train.seeds[0], two.task.data.fold_seed) == (43, 43)
    assert one.task.folds_dir != two.task.folds_dir and one.train.run_dir != two.train.run_dir
    assert one.stats.out_dir.endswith("ecg_replications/record/replication_1")
    names = [f"{r}_episode{i}" for r in range(400, 422) for i in range(3)]
    records = [n.split("_")[0] for n in names]
    assert ecg_folds(names, records, 5, 42, "record") != ecg_folds(names, records, 5, 43, "record")
    weights = []
    for rep in (one, two):
        seed_everything(int(rep.train.seeds[0]))
        net = build_model(rep.task.models.nimeshanet, rep.arms.study, 3)
        weights.append(torch.cat([p.flatten() for p in net.parameters()]))
    assert not torch.equal(*weights)


def fake_replications(root: Path, n: int) -> None:
    for r in range(1, n + 1):
        logs = write_set(root / "episode" / f"replication_{r}" / "fold_logs", models=("NimeshaNet",), epochs=8)
        # study better than control in every fold (write_set offsets arms by 0.01)
        assert logs.is_dir()


def fake_published(folder: Path) -> None:
    folder.mkdir(parents=True)
    rows = [
        ("NimeshaNet", m, d, "study > control" if d > 0 else "study < control")
        for m, d in (("train_r2", 0.05), ("test_r2", 0.03), ("instability", -0.01))
    ]
    pd.DataFrame(rows, columns=["model", "metric", "mean_diff", "conclusion"]).assign(
        ci_low=-1.0, ci_high=1.0, p_value=0.0
    ).to_csv(folder / "comparison_table.csv", index=False)
    pd.DataFrame(
        [("NimeshaNet", arm, "", f, "test_r2", 0.6) for arm in ("control", "study") for f in range(1, 6)],
        columns=["model", "arm", "seed", "fold", "metric", "value"],
    ).to_csv(folder / "fold_values.csv", index=False)


def test_the_summary_comes_from_the_replications_logs_alone(tmp_path):
    out = tmp_path / "data" / "results" / "ecg_replications"  # a new replication's default folder
    fake_replications(out, 2)
    fake_published(tmp_path / "published")
    cfg = compose_config(
        [
            "experiment=ecg_replications",
            f"paths.root_dir={tmp_path}",
            "replicate.groupings=[episode]",
            f"replicate.published_dir={tmp_path / 'published'}",
            "stats.n_resamples=2000",
            "stages=[replication_summary]",
        ]
    )
    assert run_stages(cfg) == ["replication_summary"]
    summary = pd.read_csv(out / "replication_summary.csv")
    train = summary[summary.metric == "train_r2"].iloc[0]
    assert train.n_replications == 2 and train.n_agree == 2  # study > control in both, as published
    assert {"test_r2_last5"} <= set(summary.metric)
    assert (out / "forest_episode.png").stat().st_size > 0 and (out / "arm_levels.png").stat().st_size > 0
    before = {
        name: (out / name).read_bytes() for name in ("replication_summary.csv", "replications.csv", "arm_levels.csv")
    }
    assert run_stages(cfg) == []  # same logs: nothing redone
    for name in before:
        (out / name).unlink()
    shutil.rmtree(out / "logs")
    assert run_stages(cfg) == ["replication_summary"]
    assert {name: (out / name).read_bytes() for name in before} == before


def test_a_dry_run_of_the_replications_trains_nothing_and_writes_nothing(tmp_path, capsys):
    """dry_run=true is honoured by the runner itself, so `make replicate ARGS=dry_run=true` only
    prints each replication's plan (it used to start training)."""
    from coordchannels.replicate import run_replications

    cfg = compose_config(["experiment=ecg_replications", f"paths.root_dir={tmp_path}", "replicate.n=2", "dry_run=true"])
    run_replications(cfg)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    printed = capsys.readouterr().out
    assert printed.count("dry run (task ecg)") == 2 * 2 + 1  # 2 groupings x 2 replications, then the summary
    assert "replication_episode_2" in printed and "replication_record_1" in printed


def test_a_committed_replication_with_other_settings_is_refused_before_any_training(tmp_path):
    """Every replication's checks run before the first one trains: finding a committed replication
    made with other settings (here one model instead of two) after hours of training is too late."""
    from omegaconf import OmegaConf

    from coordchannels.replicate import run_replications
    from coordchannels.settings import SettingError

    cfg = compose_config(
        [
            "experiment=ecg_replications",
            f"paths.root_dir={tmp_path}",
            "replicate.n=2",
            "paths.outputs_dir=${paths.results_dir}",  # publishing (make ecg-replications)
        ]
    )
    committed = replication_config(cfg, "record", 2)
    OmegaConf.update(committed, "train.models", ["nimeshanet"], merge=False)
    logs = Path(str(committed.stats.out_dir)) / "logs"
    logs.mkdir(parents=True)
    OmegaConf.save(committed, logs / "stats.config.yaml")
    planted = {p for p in tmp_path.rglob("*") if p.is_file()}

    with pytest.raises(
        SettingError, match=r"replication_2 holds committed results made with other settings.*train\.models"
    ):
        run_replications(cfg)
    assert {p for p in tmp_path.rglob("*") if p.is_file()} == planted  # replication 1 did not start


def test_replicate_first_runs_only_the_later_replications(tmp_path, capsys):
    """replicate.first=k adds replications k..n without touching 1..k-1 (committed ones whose run
    folders are on another machine would otherwise be trained again)."""
    from coordchannels.replicate import run_replications

    cfg = compose_config(
        [
            "experiment=ecg_replications",
            f"paths.root_dir={tmp_path}",
            "replicate.n=3",
            "replicate.first=3",
            "replicate.groupings=[episode]",
            "dry_run=true",
        ]
    )
    run_replications(cfg)
    printed = capsys.readouterr().out
    assert "replication_episode_3" in printed
    assert "replication_episode_1" not in printed and "replication_episode_2" not in printed
    cfg.replicate.first = 4  # n + 1: no replication runs, only the summary
    run_replications(cfg)
    printed = capsys.readouterr().out
    assert "replication_episode" not in printed and "replication_summary" in printed
    cfg.replicate.first = 5
    with pytest.raises(ValueError, match=r"replicate\.first=5"):  # a SettingError is a ValueError
        run_replications(cfg)


def test_the_summary_reads_replications_1_to_n_only(tmp_path):
    """A replication beyond replicate.n (committed on the way to a larger n) leaves the summary of
    n replications as it is."""
    from coordchannels.replicate import summarised_folders

    for r in (1, 2, 3):
        (tmp_path / "episode" / f"replication_{r}" / "fold_logs").mkdir(parents=True)
    cfg = compose_config(["experiment=ecg_replications", "replicate.n=2"])
    assert [r for r, _ in summarised_folders(tmp_path, "episode", cfg)] == [1, 2]
    cfg.replicate.n = 3
    assert [r for r, _ in summarised_folders(tmp_path, "episode", cfg)] == [1, 2, 3]
