"""Replications of the ECG study: the two-level bootstrap, independent replications (each an
ordinary run of the app, the study a Hydra sweep of them), and a summary computed from the
replications' per-fold logs alone."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from coordchannels.folds import ecg_folds
from coordchannels.pipeline import run_stages
from coordchannels.settings import plain
from coordchannels.stats.comparison import hierarchical_exact, hierarchical_means
from coordchannels.train import build_model, seed_everything
from coordchannels.train.grid import job_grid
from coordchannels.train.record import job_fingerprint
from tests.conftest import REPO, compose_config, sweep_config
from tests.helpers import run_app, write_set


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


def replication(tmp_path, grouping: str, r: int, *overrides: str, experiment: str = "ecg_replications"):
    """Replication r of `grouping`, composed as the app composes that run (or that run of the sweep)."""
    return compose_config(
        [
            f"experiment={experiment}",
            f"paths.root_dir={tmp_path}",
            f"replicate.grouping={grouping}",
            f"replicate.index={r}",
            *overrides,
        ]
    )


def test_replications_are_independent_re_runs(tmp_path):
    one, two = replication(tmp_path, "record", 1), replication(tmp_path, "record", 2)
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


def old_loop_config(tmp_path, grouping: str, r: int, experiment: str = "ecg_replications"):
    """Replication r as the removed run loop built it (`replication_config`, and for the mechanisms
    study `mechanisms_config`): the study's config with these values set, by the loop's rules
    written out by hand (seeds base_seed + r - 1 with base_seed 42)."""
    cfg = compose_config([f"experiment={experiment}", f"paths.root_dir={tmp_path}"])
    seed = 42 + r - 1
    out = f"{tmp_path}/data/results/{experiment}/{grouping}/replication_{r}"
    prefix = "replication" if experiment == "ecg_replications" else "mechanisms"
    for key, value in {
        "task.data.group_by": grouping,
        "task.data.fold_seed": seed,
        "train.seeds": [seed],
        "train.run_name": f"{prefix}_{grouping}_{r}",
        "stats.out_dir": out,
        "stages": list(cfg.task.stages),
    }.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


@pytest.mark.parametrize("experiment", ["ecg_replications", "ecg_mechanisms"])
@pytest.mark.parametrize("grouping, r, seed", [("episode", 1, 42), ("record", 3, 44), ("episode", 10, 51)])
def test_a_replication_run_is_the_replication_the_old_loop_ran(tmp_path, experiment, grouping, r, seed):
    """`replicate.grouping=<g> replicate.index=<r>` gives replication r the seed, fold seed, run
    folder, results folder and job fingerprints the replication loop gave it: its committed logs and
    resumable runs stay its own (replication 3: seed 42 + 3 - 1 = 44)."""
    new, old = (
        replication(tmp_path, grouping, r, experiment=experiment),
        old_loop_config(tmp_path, grouping, r, experiment),
    )
    prefix = "replication" if experiment == "ecg_replications" else "mechanisms"
    assert list(new.train.seeds) == [seed] and new.task.data.fold_seed == seed and new.replicate.seed == seed
    assert new.task.data.group_by == grouping and new.train.run_name == f"{prefix}_{grouping}_{r}"
    assert Path(new.train.run_dir) == tmp_path / "data" / "runs" / "ecg" / f"{prefix}_{grouping}_{r}"
    assert Path(new.stats.out_dir) == tmp_path / "data" / "results" / experiment / grouping / f"replication_{r}"
    assert Path(new.task.folds_dir).name == f"folds_5_seed_{seed}"
    for node in ("task", "train", "stats"):  # every setting of the run, resolved
        assert plain(new[node]) == plain(old[node]), node
    # the same run as a member of the study's sweep (the runs `make replicate` / `make mechanisms` make)
    from coordchannels.sweep import sweep_overrides

    n = "replicate.n=10" if experiment == "ecg_replications" else "mechanisms.n=10"
    members = sweep_overrides(sweep_config(f"experiment={experiment}", n, f"paths.root_dir={tmp_path}"))
    member = [m for m in members if f"replicate.grouping={grouping}" in m and f"replicate.index={r}" in m]
    assert len(member) == 1 and len(members) == 20
    swept = compose_config(member[0])
    for node in ("task", "train", "stats"):
        assert plain(swept[node]) == plain(old[node]), node
    jobs = job_grid(new)
    assert jobs == job_grid(old) and {job.seed for job in jobs} == {seed}
    assert [job_fingerprint(new, job) for job in jobs] == [job_fingerprint(old, job) for job in jobs]
    if experiment == "ecg_mechanisms":
        assert new.stages[:] == ["download", "extract", "augment", "features", "folds", "reuse_logs", "train"] + [
            "stats",
            "manifest",
        ]
        reuse = tmp_path / "results" / "ecg_replications" / grouping / f"replication_{r}"
        assert Path(new.mechanisms.reuse_source) == reuse
    else:
        assert list(new.stages) == list(old.stages)


def test_each_committed_replication_is_the_run_its_two_settings_name():
    """Every committed replication (made by the replication loop) is the run that
    `replicate.grouping=<g> replicate.index=<r>` composes now: the same data settings (fold seed,
    grouping), training settings and seeds, run name, stages and results folder."""
    folders = [f for f in (REPO / "results" / "ecg_replications").glob("*/replication_*") if f.name[12:].isdigit()]
    if not folders:
        pytest.skip("no committed replication in results/ecg_replications")
    for folder in folders:
        committed = json.loads((folder / "manifest.json").read_text())["config"]
        grouping, r = folder.parent.name, int(folder.name.split("_")[1])
        new = plain(
            compose_config(
                [
                    "experiment=ecg_replications",
                    f"replicate.grouping={grouping}",
                    f"replicate.index={r}",
                    "paths.outputs_dir=${paths.results_dir}",  # published (make ecg-replications)
                ]
            )
        )
        # Where the raw data came from, and how jobs are launched (side by side, submitted, the
        # settings' allowed values): none changes a number (none is in a job's fingerprint).
        ignore = {"mirror", "n_jobs", "executor", "submitit", "choices"}
        for node in ("task.data", "train"):
            ours, theirs = new, committed
            for part in node.split("."):
                ours, theirs = ours[part], theirs[part]
            assert {k: v for k, v in ours.items() if k not in ignore} == {
                k: v for k, v in theirs.items() if k not in ignore
            }, f"{folder}: {node}"
        assert theirs["seeds"] == [42 + r - 1] and committed["task"]["data"]["fold_seed"] == 42 + r - 1
        for key in ("stages", "seed"):
            assert new[key] == committed[key], f"{folder}: {key}"
        assert (
            new["stats"]["out_dir"]
            == committed["stats"]["out_dir"]
            == f"./results/ecg_replications/{grouping}/{folder.name}"
        )


def test_a_smoke_study_keeps_its_replications_apart(tmp_path):
    """debug=smoke shrinks a study into data/smoke/ but keeps each replication's run and results
    folder (the replication loop set them after composing; the study file now wins over debug)."""
    one, two = (replication(tmp_path, "episode", r, "debug=smoke") for r in (1, 2))
    assert one.train.epochs == 5 and one.train.run_name == "replication_episode_1" != two.train.run_name
    assert Path(one.stats.out_dir) == tmp_path / "data" / "smoke" / "results" / "ecg_replications" / "episode" / (
        "replication_1"
    )
    plain_smoke = compose_config(["debug=smoke", f"paths.root_dir={tmp_path}"])
    assert plain_smoke.train.run_name == "smoke"
    assert Path(plain_smoke.stats.out_dir) == tmp_path / "data" / "smoke" / "results" / "ecg"


def test_the_sweep_runs_every_grouping_times_replications_first_to_n():
    from coordchannels.sweep import sweep_overrides

    def runs(*overrides):
        members = sweep_overrides(sweep_config("experiment=ecg_replications", *overrides))
        return [[o for o in member if o.startswith(("replicate.grouping=", "replicate.index="))] for member in members]

    # the loop's order: each grouping, its replications in turn
    assert runs() == [
        [f"replicate.grouping={g}", f"replicate.index={r}"] for g in ("episode", "record") for r in range(1, 6)
    ]
    assert runs("replicate.n=10", "replicate.first=10", "replicate.groupings=[episode]") == [
        ["replicate.grouping=episode", "replicate.index=10"]
    ]
    assert runs("replicate.n=10", "replicate.first=11") == []  # only the summary
    assert runs("replicate.index=range(6,8)", "replicate.grouping=record") == [
        ["replicate.grouping=record", "replicate.index=6"],
        ["replicate.grouping=record", "replicate.index=7"],
    ]
    mechanisms = sweep_overrides(sweep_config("experiment=ecg_mechanisms", "mechanisms.n=3", "mechanisms.first=2"))
    assert [m[:2] for m in mechanisms] == [
        [f"replicate.grouping={g}", f"replicate.index={r}"] for g in ("episode", "record") for r in (2, 3)
    ]
    assert all("mechanisms.n=3" in m for m in mechanisms)  # the fixed overrides go to every run


def test_a_dry_run_of_the_replications_trains_nothing_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """dry_run=true is honoured by the runner itself, so `make replicate ARGS=dry_run=true` only
    prints each replication's plan (it used to start training); the sweep's own file goes to a
    temporary folder that is removed."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert (
        run_app("-m", "experiment=ecg_replications", f"paths.root_dir={tmp_path}", "replicate.n=2", "dry_run=true") == 0
    )
    assert not [p for p in tmp_path.rglob("*") if p.is_file()] and list(tmp_path.rglob("*")) == [scratch]
    printed = capsys.readouterr().out
    assert printed.count("dry run (task ecg)") == 2 * 2 + 1  # 2 groupings x 2 replications, then the summary
    assert "replication_episode_2" in printed and "replication_record_1" in printed
    assert printed.index("replication_record_2") < printed.index("stage replication_summary: would run")


def test_one_replication_is_a_run_of_the_app(tmp_path, capsys):
    assert run_app("experiment=ecg_replications", f"paths.root_dir={tmp_path}", "replicate.grouping=record",
                   "replicate.index=3", "dry_run=true") == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.count("dry run (task ecg)") == 1 and "folds_5_seed_44" in printed
    assert "runs/ecg/replication_record_3" in printed and "ecg_replications/record/replication_3" in printed
    assert "replication_summary" not in printed
    assert run_app("experiment=ecg_replications", f"paths.root_dir={tmp_path}", "replicate.index=0") == 1
    assert "error: replicate.index=0: give a replication number from 1" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_a_committed_replication_with_other_settings_is_refused_before_any_training(tmp_path, capsys):
    """Every replication's checks run before the first one trains: finding a committed replication
    made with other settings (here one model instead of two) after hours of training is too late."""
    overrides = [
        "experiment=ecg_replications",
        f"paths.root_dir={tmp_path}",
        "replicate.n=2",
        "paths.outputs_dir=${paths.results_dir}",  # publishing (make ecg-replications)
    ]
    committed = replication(tmp_path, "record", 2, *overrides[2:])
    OmegaConf.update(committed, "train.models", ["nimeshanet"], merge=False)
    logs = Path(str(committed.stats.out_dir)) / "logs"
    logs.mkdir(parents=True)
    OmegaConf.save(committed, logs / "stats.config.yaml")
    planted = {p for p in tmp_path.rglob("*") if p.is_file()}

    assert run_app("-m", *overrides) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(r"^error: .*replication_2 holds committed results made with other settings.*train\.models", error)
    assert {p for p in tmp_path.rglob("*") if p.is_file()} == planted  # replication 1 did not start
    assert not (tmp_path / "data").exists()  # nor the sweep


def test_replicate_first_runs_only_the_later_replications(tmp_path, capsys):
    """replicate.first=k adds replications k..n without touching 1..k-1 (committed ones whose run
    folders are on another machine would otherwise be trained again)."""
    study = ["-m", "experiment=ecg_replications", f"paths.root_dir={tmp_path}", "replicate.n=3"]
    study += ["replicate.groupings=[episode]", "dry_run=true"]
    assert run_app(*study, "replicate.first=3") == 0
    printed = capsys.readouterr().out
    assert "replication_episode_3" in printed
    assert "replication_episode_1" not in printed and "replication_episode_2" not in printed
    assert run_app(*study, "replicate.first=4") == 0  # n + 1: no replication runs, only the summary
    printed = capsys.readouterr().out
    assert "replication_episode" not in printed and "stage replication_summary: would run" in printed
    assert printed.count("dry run (task ecg)") == 1
    assert run_app(*study, "replicate.first=5") == 1
    assert "error: replicate.first=5: give a replication between 1 and replicate.n=3" in capsys.readouterr().err


def tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder`: its modification time and content."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_a_sweep_of_two_replications_equals_running_them_one_by_one(tmp_path, monkeypatch):
    """`-m` runs each replication as the app runs it alone (same per-fold logs, byte for byte, and
    the same summary), then the summary; run again, it trains nothing and rewrites nothing."""
    from coordchannels import train
    from tests.ecg_fixtures import RECORDS, registered, write_fixture_records

    mirror = tmp_path / "mirror"
    write_fixture_records(mirror)
    fake_published(tmp_path / "published")

    def study(root: Path) -> list[str]:
        return [
            "experiment=ecg_replications",
            "debug=smoke",
            f"paths.root_dir={root}",
            f"task.data.mirror={mirror}",
            f"task.data.raw_dir={root / 'raw'}",
            f"task.data.records=[{','.join(RECORDS)}]",
            "task.data.n_folds=2",
            "replicate.n=2",
            "replicate.groupings=[episode]",
            f"replicate.published_dir={tmp_path / 'published'}",
            "train.models=[nimeshanet]",
            "train.epochs=8",  # the summary's smoothing fits need 8 (debug=smoke has 5)
            "train.limit_train=24",
            "train.limit_test=12",
            "train.device=cpu",
            "train.num_threads=1",
            "train.n_jobs=1",
            "stats.n_resamples=200",
            f"hydra.sweep.dir={root / 'sweep'}",
            f"hydra.run.dir={root / 'run'}",
        ]

    swept, alone = tmp_path / "swept", tmp_path / "alone"
    with registered(mirror):
        assert run_app("-m", *study(swept)) == 0
        assert run_app(*study(alone), "replicate.index=1") == 0
        assert run_app(*study(alone), "replicate.index=2") == 0
        assert run_app(*study(alone), "stages=[replication_summary]") == 0
    out = Path("data") / "smoke" / "results" / "ecg_replications"
    for r in (1, 2):
        logs = [tree(root / out / "episode" / f"replication_{r}" / "fold_logs") for root in (swept, alone)]
        assert sum(name.endswith("_log.csv") for name in logs[0]) == 4  # 2 arms x 2 folds
        assert {k: v[1] for k, v in logs[0].items()} == {k: v[1] for k, v in logs[1].items()}
    assert len({(root / out / "replication_summary.csv").read_bytes() for root in (swept, alone)}) == 1
    assert (swept / "data" / "smoke" / "runs" / "ecg" / "replication_episode_2").is_dir()

    before = tree(swept / "data")
    trained = []
    real = train.job.train_one_epoch
    monkeypatch.setattr(train.job, "train_one_epoch", lambda *a, **k: trained.append(1) or real(*a, **k))
    with registered(mirror):
        assert run_app("-m", *study(swept)) == 0
    assert trained == [] and tree(swept / "data") == before  # every stage and job done: skipped


@pytest.mark.parametrize("module, experiment", [("replicate", "ecg_replications"), ("mechanisms", "ecg_mechanisms")])
def test_the_old_loop_commands_name_the_sweep_that_replaced_them(module, experiment):
    import runpy
    import warnings

    with warnings.catch_warnings(), pytest.raises(SystemExit) as exited:
        warnings.simplefilter("ignore", RuntimeWarning)  # the module is imported already
        runpy.run_module(f"coordchannels.{module}", run_name="__main__")
    assert str(exited.value).startswith("error: ") and f"-m coordchannels -m experiment={experiment}" in str(
        exited.value
    )


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
