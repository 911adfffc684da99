"""The runner owns the stage contract: it calls each stage as `fn(cfg, ctx)` with its context (its
folder, declared inputs, upstream folders and logger), skips finished stages without writing
anything, chains settings through upstream stages, and refuses stale inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from coordchannels.pipeline import run_stages
from coordchannels.stages import StageContext, StageError, stage_context
from tests.conftest import compose_config
from tests.helpers import CALLS, CONTEXTS, with_probes


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_stage_gets_its_folder_log_config_and_record(tmp_path):
    cfg = with_probes(tmp_path, "stages=[make]")
    assert run_stages(cfg) == ["make"]
    out = tmp_path / "make"
    assert (out / "made.txt").read_text() == "substring 42"
    assert "make running" in (out / "logs" / "make.log").read_text()
    assert OmegaConf.load(out / "logs" / "make.config.yaml").task.name == "ecg"
    assert json.loads((out / "logs" / "make.inputs.json").read_text()) == {"task.data.label_match": "substring"}
    assert len(json.loads((out / "logs" / "make.time.json").read_text())) == 1


def test_a_stage_is_called_with_its_context(tmp_path):
    """`fn(cfg, ctx)`: ctx.out is the stage's folder, ctx.inputs its declared `inputs` as paths (by
    config key, without their globs), ctx.after the folders of the stages it reads (by name), and
    ctx.log a logger of its own whose records go to the stage's log file while it runs."""
    logs = tmp_path / "logs_in"
    logs.mkdir()
    cfg = with_probes(tmp_path, "stages=[make,use]")
    with open_dict(cfg):
        cfg.probe_dir = str(logs)
        cfg.stage_defs.use.inputs = ["probe_dir:*/*_log.csv"]
    assert run_stages(cfg) == ["make", "use"]
    ctx = CONTEXTS["use"]
    assert ctx == StageContext(
        name="use", out=tmp_path / "use", inputs={"probe_dir": logs}, after={"make": tmp_path / "make"}
    )
    assert CONTEXTS["make"] == StageContext(name="make", out=tmp_path / "make")
    assert ctx.log.name == "coordchannels.stages.use"
    use_log = (tmp_path / "use" / "logs" / "use.log").read_text()
    assert f"coordchannels.stages.use: use reads {tmp_path / 'make'}" in use_log
    assert "coordchannels.stages.make: make running" in (tmp_path / "make" / "logs" / "make.log").read_text()
    assert "use reads" not in (tmp_path / "make" / "logs" / "make.log").read_text()
    # Out of the run the stage's records go to no stage's file; code calling a stage's function
    # itself builds the same context from the declaration.
    ctx.log.warning("after the run")
    assert "after the run" not in (tmp_path / "use" / "logs" / "use.log").read_text()
    assert stage_context(cfg, "use") == ctx


def test_a_stage_written_as_fn_cfg_out_gets_a_context_not_its_folder(tmp_path):
    """The second argument is a StageContext, not a path: a stage still written for `fn(cfg, out)`
    fails at its first use of the folder, and the runner records nothing for it."""
    cfg = with_probes(tmp_path, "stages=[old]")
    with pytest.raises(TypeError, match="StageContext"):
        run_stages(cfg)
    assert isinstance(CONTEXTS["old"], StageContext) and CONTEXTS["old"].out == tmp_path / "old"
    logs = tmp_path / "old" / "logs"
    assert "stage old failed" in (logs / "old.log").read_text()
    assert not (tmp_path / "old" / "old.txt").exists() and not (logs / "old.inputs.json").exists()


def test_a_finished_stage_is_skipped_and_writes_nothing(tmp_path):
    cfg = with_probes(tmp_path, "stages=[make,use]")
    run_stages(cfg)
    before = snapshot(tmp_path)
    CALLS.clear()
    assert run_stages(cfg) == []
    assert CALLS == [] and snapshot(tmp_path) == before


def test_settings_chain_through_upstream_stages(tmp_path):
    cfg = with_probes(tmp_path, "stages=[make,use]")
    run_stages(cfg)
    record = json.loads((tmp_path / "use" / "logs" / "use.inputs.json").read_text())
    made = json.loads((tmp_path / "make" / "logs" / "make.outputs.json").read_text())
    assert record == {"task.data.label_match": "substring", "seed": 42, "run(make)": made["run_id"]}
    # Changed upstream data: both stages refuse to reuse their outputs silently...
    cfg.task.data.label_match = "exact"
    with pytest.raises(StageError, match=r"stage 'make'.*task.data.label_match: 'substring' -> 'exact'"):
        run_stages(cfg)
    # ...also when only the downstream stage is asked for: it will not read stale inputs.
    cfg.stages = ["use"]
    with pytest.raises(StageError, match=r"outputs of stage 'make'.*other settings.*label_match"):
        run_stages(cfg)
    cfg.stages, cfg.overwrite = ["make", "use"], True
    assert run_stages(cfg) == ["make", "use"]
    assert (tmp_path / "use" / "used.txt").read_text() == "exact 42"


def test_a_downstream_stage_refuses_to_run_before_its_inputs_exist(tmp_path):
    cfg = with_probes(tmp_path, "stages=[use]")
    with pytest.raises(StageError, match=r"reads the outputs of stage 'make'.*has not finished"):
        run_stages(cfg)
    assert not (tmp_path / "use").exists()


def test_external_data_are_read_without_a_record_and_say_so(tmp_path):
    """Data made outside the pipeline (no stage record) are refused unless external_data=true."""
    from coordchannels.train.record import data_fingerprint

    (tmp_path / "make").mkdir()
    (tmp_path / "make" / "made.txt").write_text("from elsewhere")
    cfg = with_probes(tmp_path, "stages=[use]")
    with pytest.raises(StageError, match="has not finished"):
        run_stages(cfg)
    cfg.external_data = True
    assert run_stages(cfg) == ["use"]
    assert (tmp_path / "use" / "used.txt").read_text() == "from elsewhere"
    assert data_fingerprint(cfg)["data_runs"] == "external"
    cfg.external_data = False
    assert data_fingerprint(cfg).get("data_runs") != "external"


def test_rerun_stages_are_redone_when_their_inputs_change(tmp_path):
    cfg = with_probes(tmp_path, "stages=[make]")
    logs = tmp_path / "logs_in"
    (logs / "M").mkdir(parents=True)
    (logs / "M" / "a_log.csv").write_text("1")
    with open_dict(cfg):
        cfg.probe_dir = str(logs)
        cfg.stage_defs.make.inputs = ["probe_dir:*/*_log.csv"]
        cfg.stage_defs.make.on_change = "rerun"
    assert run_stages(cfg) == ["make"]
    assert run_stages(cfg) == []
    (logs / "M" / "unrelated.txt").write_text("not a log")
    assert run_stages(cfg) == []
    (logs / "M" / "a_log.csv").write_text("2")
    assert run_stages(cfg) == ["make"]


def test_a_failed_stage_logs_its_error_and_records_nothing(tmp_path):
    cfg = with_probes(tmp_path, "stages=[broken]")
    with pytest.raises(RuntimeError, match="the probe broke"):
        run_stages(cfg)
    logs = tmp_path / "broken" / "logs"
    assert "stage broken failed" in (logs / "broken.log").read_text()
    assert "the probe broke" in (logs / "broken.log").read_text()
    assert not (logs / "broken.inputs.json").exists() and not (logs / "broken.time.json").exists()


def test_a_bad_setting_fails_before_any_stage_writes(tmp_path):
    cfg = with_probes(tmp_path, "stages=[make]", "train.precision=fp16")
    with pytest.raises(ValueError, match="train.precision must be one of"):
        run_stages(cfg)
    assert not (tmp_path / "make").exists()


def test_unknown_stage_and_bad_declarations_are_clear_errors(tmp_path):
    cfg = with_probes(tmp_path, "stages=[nonsense]")
    with pytest.raises(StageError, match="unknown stage 'nonsense'"):
        run_stages(cfg)
    cfg = with_probes(tmp_path, "stages=[make]")
    with open_dict(cfg):
        cfg.stage_defs.make.on_change = "sometimes"
    with pytest.raises(StageError, match="on_change must be one of"):
        run_stages(cfg)


def test_a_new_arm_is_one_yaml_file(tmp_path, monkeypatch):
    from coordchannels import components

    conf = tmp_path / "conf"
    (conf / "arm").mkdir(parents=True)
    for f in (components.CONF_DIR / "arm").glob("*.yaml"):
        (conf / "arm" / f.name).write_text(f.read_text())
    (conf / "arm" / "doubled.yaml").write_text(
        "name: doubled\nlabel: Doubled\ncolour: tab:cyan\norder: 9\nchannels: coords_norm\nmodel_kwargs: {}\n"
    )
    monkeypatch.setattr(components, "CONF_DIR", conf)
    components.group_files.cache_clear()
    try:
        cfg = compose_config([f"paths.root_dir={tmp_path}", "stages=[]"])
        run_stages(cfg)
        assert cfg.arms.doubled.channels == "coords_norm"
        assert components.arm_order()["doubled"] == 9
        assert components.arm_style(None, "doubled") == ("Doubled", "tab:cyan", True)
    finally:
        components.group_files.cache_clear()


def test_changed_input_content_is_taken_again_but_changed_settings_are_refused(tmp_path):
    cfg = with_probes(tmp_path, "stages=[make,use]")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "a.txt").write_text("first")
    with open_dict(cfg):
        cfg.probe_mirror = str(mirror)
        cfg.stage_defs.make.watch = ["probe_mirror"]
    assert run_stages(cfg) == ["make", "use"]
    assert run_stages(cfg) == []
    (mirror / "a.txt").write_text("fixed, and longer")
    cfg.stages = ["use"]  # the upstream stage must be redone first
    with pytest.raises(StageError, match=r"inputs of stage 'make' changed since it ran.*run it again first"):
        run_stages(cfg)
    cfg.stages = ["make", "use"]
    assert run_stages(cfg) == ["make", "use"]  # no overwrite needed: inputs, not settings, changed


def test_a_rebuilt_upstream_stage_makes_its_readers_run_again(tmp_path):
    cfg = with_probes(tmp_path, "stages=[make,use]")
    run_stages(cfg)
    cfg.stages, cfg.overwrite = ["make"], True
    run_stages(cfg)
    cfg.stages, cfg.overwrite = ["use"], False
    assert run_stages(cfg) == []  # a byte-identical rebuild is the same run of `make`
    with open_dict(cfg):
        cfg.probe_extra = " and other bytes"
    cfg.stages, cfg.overwrite = ["make"], True
    run_stages(cfg)
    cfg.stages, cfg.overwrite = ["use"], False
    assert run_stages(cfg) == ["use"]  # same settings, but made from other content of `make`
    assert run_stages(cfg) == []


def test_the_train_stage_is_seen_done_with_relative_paths(tmp_path, monkeypatch):
    """With the default relative root (`.`), a finished grid's logs are found where they are."""
    from coordchannels.stages import output_paths, stage_spec

    monkeypatch.chdir(tmp_path)
    cfg = compose_config(["paths.root_dir=.", "train.models=[nimeshanet]", "train.arms=[control]", "train.folds=[1]"])
    stage = stage_spec(cfg, "train")
    [log] = output_paths(cfg, stage)
    assert log == Path("data/runs/ecg/default/logs/NimeshaNet/control_set_fold_1_log.csv")
