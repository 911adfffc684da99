"""The config tree composes for every task and the pipeline resolves and runs stages."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf, open_dict

from coordchannels.pipeline import StageError, run_stages, stage_spec
from tests.conftest import compose_config


@pytest.mark.parametrize("task", ["ecg", "sipakmed", "coordgate"])
def test_every_task_composes_and_resolves(task, tmp_path):
    cfg = compose_config([f"task={task}", f"paths.root_dir={tmp_path}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["task"]["name"] == task
    assert resolved["stages"] == resolved["task"]["stages"]
    for name in cfg.stages:
        assert stage_spec(cfg, name).out.startswith(str(tmp_path))


def test_no_path_escapes_the_paths_root(tmp_path):
    cfg = compose_config([f"paths.root_dir={tmp_path}"])
    for key in ("train.run_dir", "train.logs_dir", "stats.out_dir", "task.processed_dir"):
        assert OmegaConf.select(cfg, key).startswith(str(tmp_path)), key


def test_unknown_stage_is_a_clear_error(tmp_path):
    cfg = compose_config([f"paths.root_dir={tmp_path}", "stages=[nonsense]"])
    with pytest.raises(StageError, match="unknown stage 'nonsense'"):
        run_stages(cfg)


def test_stage_writes_log_and_config_beside_its_output(tmp_path):
    cfg = compose_config([f"paths.root_dir={tmp_path}", "stages=[probe]"])
    out = tmp_path / "probe_out"
    with open_dict(cfg):
        cfg.stage_defs.probe = {"fn": "tests.test_config.probe_stage", "out": str(out)}
    assert run_stages(cfg) == []
    assert (out / "probe.txt").read_text() == "ecg"
    assert "probe running" in (out / "logs" / "probe.log").read_text()
    assert OmegaConf.load(out / "logs" / "probe.config.yaml").task.name == "ecg"


def test_unimplemented_stage_is_reported_not_run(tmp_path):
    # A stage declared with fn: null (not implemented yet) is listed as missing, not run; the
    # stages around it still run.
    cfg = compose_config([f"paths.root_dir={tmp_path}", "stages=[placeholder,probe]"])
    out = tmp_path / "probe_out"
    with open_dict(cfg):
        cfg.stage_defs.placeholder = {"fn": None, "out": str(tmp_path / "placeholder_out")}
        cfg.stage_defs.probe = {"fn": "tests.test_config.probe_stage", "out": str(out)}
    assert run_stages(cfg) == ["placeholder"]
    assert not (tmp_path / "placeholder_out").exists()
    assert (out / "probe.txt").read_text() == "ecg"


def probe_stage(cfg):
    import logging

    logging.getLogger("probe").info("probe running")
    (tmp := __import__("pathlib").Path(stage_spec(cfg, "probe").out)).mkdir(exist_ok=True)
    (tmp / "probe.txt").write_text(cfg.task.name)


def test_outputs_made_with_other_settings_are_not_reused(tmp_path):
    cfg = compose_config([f"paths.root_dir={tmp_path}", "stages=[probe]"])
    out = tmp_path / "probe_out"
    with open_dict(cfg):
        cfg.stage_defs.probe = {"fn": "tests.test_config.probe_stage", "out": str(out),
                                "depends_on": ["task.data.label_match", "seed"]}
    run_stages(cfg)
    run_stages(cfg)  # same settings: fine
    cfg.task.data.label_match = "exact"
    with pytest.raises(StageError, match=r"other settings \(task.data.label_match: 'substring' -> 'exact'\)"):
        run_stages(cfg)
    cfg.overwrite = True
    run_stages(cfg)  # opt-in: redone, and the new settings recorded
    cfg.overwrite = False
    run_stages(cfg)
