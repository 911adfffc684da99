"""Every command in the README's code blocks (and docs/) runs as written and does what its comment says.

Each line of a ```bash block is a command with an optional `# comment`. A `make` command must be a
target that `make -n` accepts; the app commands it expands to (and `coordchannels ...` or
`python -m coordchannels...` typed directly) must compose the real config and pass the settings
checks; a sweep (`-m`, the studies of replications) is composed run by run, its runs must keep
apart (their own run and results folders), and the summary stage after them is one more run.
What the comment claims is then checked on the composed configs: `one job` trains one job,
`-> <folder>` and `the committed results/<x>` write there, `writes nothing` is a dry run, a local
copy is used when the comment says offline, and so on (CLAIMS).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from coordchannels.settings import validate_choices
from coordchannels.stages import stage_spec
from coordchannels.sweep import sweep_overrides
from coordchannels.train.grid import job_grid
from tests.conftest import REPO, compose_config, sweep_config

APP = re.compile(r"-m (coordchannels)[ \t]+(.*?)(?:\|\||;|$)", re.M)
MULTIRUN = ("-m", "--multirun")
LOOP = re.compile(r"for t in ([^;]+);")


@dataclass
class Command:
    line: str
    comment: str


def readme_commands() -> list[Command]:
    """The commands of every bash block of the README and of the documentation it links (docs/)."""
    text = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for raw in block.splitlines():
            line, _, comment = raw.partition(" # ")
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(Command(line.strip(), comment.strip()))
    return commands


@dataclass
class AppRun:
    """One run of a Hydra entry point: its module and composed config (`summary`: the summary
    stage a study's sweep runs after its replications)."""

    module: str
    cfg: DictConfig
    summary: bool = False


def app_runs(command: str, root: Path) -> list[AppRun]:
    """The Hydra app runs a command makes (through `make -n` for make), composed under `root`."""
    words = shlex.split(re.sub(r"<[^>]+>", str(root / "placeholder"), command))
    if words[0] == "make":
        make = subprocess.run(["make", "-n", *words[1:]], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert make.returncode == 0, f"`{command}`: make -n failed: {make.stderr}"
        script = make.stdout.replace("\\\n", " ")
        loop = LOOP.search(script)
        task = loop.group(1).split()[0] if loop else None
        lines = [(m.group(1), shlex.split(m.group(2).replace("$t", task or "$t"))) for m in APP.finditer(script)]
    elif words[0] == "coordchannels":
        lines = [("coordchannels", words[1:])]
    elif words[0].endswith("python") and words[1] == "-m":
        lines = [(words[2], words[3:])]
    else:
        assert words[0] == "source" and words[1] == ".venv/bin/activate", f"`{command}`: no check for this command"
        return []
    runs = []
    for module, args in lines:
        multirun = any(a in MULTIRUN for a in args)
        args = [a for a in args if a not in MULTIRUN]
        overrides = [a for a in args if not a.startswith("hydra")]
        if multirun:
            runs += sweep_runs(command, module, [*overrides, f"paths.root_dir={root}"])
            continue
        cfg = compose_config([*overrides, f"paths.root_dir={root}"])
        validate_choices(cfg)
        summary = OmegaConf.select(cfg, "replicate.summary")  # a study's summary stage run alone
        runs.append(AppRun(module, cfg, summary=bool(summary) and list(cfg.stages) == [summary]))
    return runs


def sweep_runs(command: str, module: str, overrides: list[str]) -> list[AppRun]:
    """The runs of a sweep, as `coordchannels.sweep` expands it, then its summary stage (if any)."""
    sweep = sweep_config(*overrides)
    runs = [AppRun(module, compose_config(members)) for members in sweep_overrides(sweep)]
    for run in runs:
        validate_choices(run.cfg)
    for folder in ("train.run_dir", "stats.out_dir"):
        paths = [OmegaConf.select(run.cfg, folder) for run in runs]
        assert len(set(paths)) == len(paths), f"`{command}`: the runs of a Hydra multirun (-m) share a {folder}"
    summary = OmegaConf.select(sweep, "replicate.summary")
    if summary:
        parsed = OverridesParser.create().parse_overrides(overrides)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        runs.append(AppRun(module, compose_config([*fixed, f"stages=[{summary}]"]), summary=True))
    return runs


def out_dir(run: AppRun, root: Path) -> Path:
    """Where the run writes its tables, relative to the repository root (the folder make runs in)."""
    cfg = run.cfg
    path = stage_spec(cfg, cfg.stages[0]).out if run.summary else Path(str(cfg.stats.out_dir))
    return path.relative_to(root) if path.is_relative_to(root) else path


# What a comment may say, and how the composed runs show it.
CLAIMS = [
    (r"\bone job\b", lambda runs, m, root: [len(job_grid(r.cfg)) for r in runs] == [1]),
    (r"-> (data/\S+|results/\S+)", lambda runs, m, root: out_dir(runs[-1], root) == Path(m.group(1))),
    (r"committed (results/[\w/]+)", lambda runs, m, root: out_dir(runs[-1], root) == Path(m.group(1))),
    (r"writes nothing|plan and time estimate", lambda runs, m, root: all(r.cfg.dry_run for r in runs)),
    (r"offline", lambda runs, m, root: runs[0].cfg.paths.published_logs_mirror is not None),
    (r"local mirror", lambda runs, m, root: runs[0].cfg.paths.vfdb_mirror is not None),
    (r"side by side", lambda runs, m, root: int(runs[0].cfg.train.n_jobs) > 1),
    (r"continues finished 15-epoch", lambda runs, m, root: int(runs[0].cfg.train.epochs) > 15),
    (
        r"own process",
        lambda runs, m, root: (
            runs[0].cfg.train.executor == "submitit" and runs[0].cfg.train.submitit.cluster == "local"
        ),
    ),
    (r"tiny settings", lambda runs, m, root: runs[-1].cfg.train.limit_train is not None),
    (r"\bno training\b", lambda runs, m, root: runs and all(r.summary for r in runs)),
    (r"(\d+) replications?\b", lambda runs, m, root: sum(not r.summary for r in runs) == int(m.group(1))),
]


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: c.line[:60])
def test_every_readme_command_does_what_its_sentence_says(command, tmp_path):
    runs = app_runs(command.line, tmp_path)
    for pattern, holds in CLAIMS:
        match = re.search(pattern, command.comment)
        if match:
            assert runs and holds(runs, match, tmp_path), (
                f"`{command.line}` does not do what it says: {command.comment}"
            )


def test_the_readme_checks_catch_a_misleading_command(tmp_path):
    """The commands issue 23 found misleading fail these checks."""
    two_jobs = app_runs("coordchannels task=ecg stages=[train] train.arms=[study] train.folds=[3]", tmp_path)
    assert len(job_grid(two_jobs[0].cfg)) == 2  # 'one job' would fail
    with pytest.raises(AssertionError, match="multirun"):  # both runs in one run folder
        app_runs("coordchannels -m task=ecg stages=[train] train.folds=[1],[2] hydra/launcher=joblib", tmp_path)
    study = app_runs("make replicate ARGS='replicate.n=3 replicate.groupings=[record]'", tmp_path)
    assert [r.summary for r in study] == [False, False, False, True]  # 3 replications, then the summary
    assert [r.cfg.train.seeds[0] for r in study[:3]] == [42, 43, 44]
    offline = app_runs("make table3", tmp_path)
    assert offline[0].cfg.paths.published_logs_mirror is None  # 'offline' would fail
