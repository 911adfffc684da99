"""Every shipped config composes, and everything it names exists (as lightning-hydra-template's
test_sweeps and torchtune's test_configs): for every task and experiment, every stage's function
and outputs, the task's loader, and every model for every arm."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class, get_method
from omegaconf import OmegaConf

from coordchannels.channels import KINDS
from coordchannels.components import CONF_DIR, arm_order, group_files, model_order
from coordchannels.settings import SettingError, validate_choices
from coordchannels.stages import output_paths, stage_context, stage_function, stage_names, stage_record, stage_spec
from coordchannels.train import build_model
from tests.conftest import compose_config

TASKS = sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
# Inputs small enough to run every model once: (channels of the signal, shape of one sample).
SIGNAL = {1: (2, (500,)), 2: (3, (256, 256))}


def test_the_shipped_tree_is_what_the_tests_compose():
    assert TASKS == ["coordgate", "deblur", "ecg", "sipakmed"]
    # Every experiment config is one a Makefile target runs, so none is left to rot unrun.
    makefile = (CONF_DIR.parents[2] / "Makefile").read_text()
    assert EXPERIMENTS and all(f"experiment={e} " in makefile for e in EXPERIMENTS), EXPERIMENTS


DEBUGS = sorted(p.stem for p in (CONF_DIR / "debug").glob("*.yaml"))


@pytest.mark.parametrize(
    "overrides",
    [[f"task={t}"] for t in TASKS]
    + [[f"experiment={e}"] for e in EXPERIMENTS]
    + [[f"debug={d}", f"task={t}"] for d in DEBUGS for t in TASKS if t != "coordgate"],
    ids=lambda o: " ".join(o),
)
def test_every_config_composes_resolves_and_names_real_code(overrides, tmp_path):
    cfg = compose_config([*overrides, f"paths.root_dir={tmp_path}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["stages"], "no stages"
    validate_choices(cfg)
    for name in stage_names(cfg):
        stage = stage_spec(cfg, name)
        inspect.signature(stage_function(stage)).bind(cfg, stage_context(cfg, stage))  # the runner's call: fn(cfg, ctx)
        assert str(stage.out).startswith(str(tmp_path)), f"stage {name} writes outside paths.root_dir"
        if name != "train" or cfg.task.models:
            assert output_paths(cfg, stage), f"stage {name} declares no outputs"
        for upstream in stage.after:
            stage_spec(cfg, upstream)
        if not stage.inputs:
            stage_record(cfg, stage)  # every declared setting exists
    for name in cfg.stages:
        stage_spec(cfg, name)
    if cfg.task.models:
        inspect.signature(get_method(cfg.task.loader)).bind(cfg, cfg.arms.study, "cpu")  # load(cfg, arm, device)
    for key in ("train.run_dir", "train.logs_dir", "stats.out_dir", "task.processed_dir"):
        assert str(OmegaConf.select(cfg, key)).startswith(str(tmp_path)), key


# The deblurring task's models take no arm (tests/test_deblur.py runs each of them).
@pytest.mark.parametrize("task", [t for t in TASKS if t not in ("coordgate", "deblur")])
def test_every_model_runs_with_every_arm(task):
    cfg = compose_config(
        [f"task={task}", "task.models.lakshyanet.net.size=64", "task.models.lakshyanet_reduced.net.size=64"]
        if task == "sipakmed"
        else [f"task={task}"]
    )
    dims = int(cfg.task.dims)
    channels, shape = SIGNAL[dims]
    if dims == 2:
        shape = (64, 64)
    from coordchannels.channels import N_EXTRA

    for model in cfg.task.models:
        for arm, arm_cfg in cfg.arms.items():
            n = channels + N_EXTRA[f"{dims}d"][arm_cfg.channels]
            torch.manual_seed(0)
            net = build_model(cfg.task.models[model], arm_cfg, n)
            out = net(torch.randn(2, n, *shape))
            assert out.shape == (2, dims), (model, arm)


def test_every_component_file_states_its_facts():
    for name, arm in group_files("arm").items():
        assert arm.name == name and arm.label and arm.colour and isinstance(arm.order, int), name
    assert len(set(arm_order().values())) == len(group_files("arm")), "two arms share a rank"
    for name, model in group_files("model").items():
        assert model.log_name and model.label and isinstance(model.order, int), name
    assert list(sorted(model_order(), key=model_order().get)) == [
        "NimeshaNet",
        "Reduced Parameter NimeshaNet",
        "LakshyaNet",
        "Reduced Parameter LakshyaNet",
    ]


@pytest.mark.parametrize(
    "override, key",
    [
        ("task.data.label_match=fuzzy", "task.data.label_match"),
        ("train.precision=fp16", "train.precision"),
        ("stats.method=jackknife", "stats.method"),
    ],
)
def test_a_bad_choice_names_its_setting(override, key):
    cfg = compose_config([override])
    with pytest.raises(SettingError, match=rf"{key} must be one of"):
        validate_choices(cfg)


def test_the_installed_app_runs_from_any_folder(tmp_path):
    """The config ships inside the package: the app composes from a folder that is not a checkout,
    and its paths default to that folder."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "coordchannels", "task=coordgate", "--cfg", "job", "--resolve"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "results_dir: ./results" in done.stdout and "name: coordgate" in done.stdout


# ---------------------------------------------------------------------------------------------
# Every option of every config group, each composed on its own with Hydra's compose API
# ---------------------------------------------------------------------------------------------
def group_options() -> list[tuple[str, str]]:
    """(group, option) of every YAML file under conf/ but the primary config.yaml."""
    return sorted(
        (p.parent.relative_to(CONF_DIR).as_posix(), p.stem) for p in CONF_DIR.rglob("*.yaml") if p.parent != CONF_DIR
    )


def test_group_options_cover_every_group():
    groups = {g for g, _ in group_options()}
    assert {"arm", "debug", "experiment", "model", "paths", "stats", "task", "train", "hydra"} <= groups
    assert "train/submitit" in groups  # a group inside a group: submitit's clusters


def model_task(model: str) -> str:
    """The task whose defaults list places the model file (its network reads that task's data)."""
    line = re.compile(rf"^\s*- /model@models\.\w+: {model}\s*$", re.M)
    tasks = [t for t in TASKS if line.search((CONF_DIR / "task" / f"{t}.yaml").read_text())]
    assert tasks, f"model file {model}.yaml is used by no task"
    return tasks[0]


def study_experiment(study: str) -> str:
    """The experiment whose defaults list places the study file (its replications are that
    experiment's: the study reads the experiment's `replicate` settings)."""
    line = re.compile(rf"^\s*- /study: {study}\b", re.M)
    experiments = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if line.search(p.read_text()))
    assert experiments, f"study file {study}.yaml is used by no experiment"
    return experiments[0]


def compose_option(group: str, option: str):
    """The app's config with one group option selected, as the command line would select it; the
    model and arm files, which tasks and the defaults list place under a package, are added
    under a package of their own, and a study file through an experiment that uses it."""
    override = {
        "model": f"+model@task.models.probe={option}",
        "arm": f"+arm@arms.probe={option}",
    }.get(group, f"{group}={option}")
    if group == "study":
        override = f"experiment={study_experiment(option)}"
    task = model_task(option) if group == "model" else "ecg" if group == "debug" else None
    overrides = [override] + ([f"task={task}"] if task else [])
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="coordchannels.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=group.startswith("hydra"))


@pytest.mark.parametrize("group, option", group_options(), ids=lambda v: str(v))
def test_every_option_of_every_group_composes_and_resolves(group, option, tmp_path):
    cfg = compose_option(group, option)
    if group.startswith("hydra"):
        # Hydra's own settings: its launcher's class exists, and the output folders are set.
        launcher = cfg.hydra.launcher
        assert get_class(launcher._target_).__name__.endswith("Launcher"), launcher._target_
        assert cfg.hydra.run.dir and cfg.hydra.sweep.dir
        return
    OmegaConf.update(cfg, "paths.root_dir", str(tmp_path))
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    # Only a cluster's own values (`???`: the SLURM partition) are left to the command line.
    cluster_own = {"train.submitit.slurm_partition"} if (group, option) == ("train/submitit", "slurm") else set()
    assert OmegaConf.missing_keys(cfg) == cluster_own, f"{group}/{option} leaves required keys unset"
    for key in ("task.name", "task.stages", "train.epochs", "train.seeds", "stats.out_dir", "paths.data_dir"):
        assert OmegaConf.select(cfg, key) not in (None, "", []), f"{group}/{option}: {key} is empty"
    assert set(resolved["stages"]) <= set(resolved["stage_defs"]) | set(resolved["task"].get("stage_defs") or {})
    validate_choices(cfg)
    if group == "model":
        model = cfg.task.models.probe
        assert model.log_name and model.label and isinstance(model.order, int)
        assert inspect.isclass(get_class(model.net._target_)), model.net._target_
    if group == "arm":
        arm = cfg.arms.probe
        assert arm.name == option and arm.label.startswith(option) and arm.colour
        assert arm.channels in KINDS
