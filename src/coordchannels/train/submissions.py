"""The record of the jobs submitted with train.executor=submitit, so that a restarted submitter
finds them.

A submitter killed with kill -9 (or a lost login session) cannot stop the jobs it submitted: local
processes and SLURM tasks go on training. Their ids are therefore written, as soon as they are
submitted, to `<run_dir>/submitit/submitted.json` (the run folder, which a restart of the same
command uses again; each submission's own folder is new). A restart reads it first:

- a job of the record whose process or SLURM task is still alive is waited for (reattached), not
  submitted a second time beside itself; the log says which and how to cancel them;
- a job that is no longer alive and did not finish is said to have ended without finishing (with
  its submitit logs), and is submitted again, resuming from its last checkpoint.

Entries leave the record once their jobs are no longer alive.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig

from coordchannels.io import write_text
from coordchannels.train.grid import Job

log = logging.getLogger(__name__)

# submitit's states of a SLURM task that is queued or running (sacct).
SLURM_ALIVE = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING"}


@dataclass(frozen=True)
class Submitted:
    """One submitted job: the training job, its submitit id and where submitit keeps its files."""

    job: Job
    submitit_id: str
    executor: str  # "local" (the id is the process id) or "slurm"
    folder: str  # submitit's folder of the job
    stdout: str
    stderr: str
    host: str  # where it was submitted (a local process id means something only there)
    submitted: str

    def cancel_command(self) -> str:
        return f"scancel {self.submitit_id}" if self.executor == "slurm" else f"kill {self.submitit_id}"


def record_path(cfg: DictConfig) -> Path:
    return Path(str(cfg.train.run_dir)) / "submitit" / "submitted.json"


def read_submitted(cfg: DictConfig) -> list[Submitted]:
    path = record_path(cfg)
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())
        return [Submitted(**{**e, "job": Job(**e["job"])}) for e in entries]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("%s: unreadable record of submitted jobs (%s); ignored", path, exc)
        return []


def write_submitted(cfg: DictConfig, entries: list[Submitted]) -> None:
    path = record_path(cfg)
    if not entries:
        path.unlink(missing_ok=True)
        return
    write_text(path, json.dumps([asdict(e) for e in entries], indent=1) + "\n")


def record_submission(cfg: DictConfig, jobs: list[Job], submitted: list, executor: str) -> list[Submitted]:
    """Add the jobs just submitted (submitit's job objects) to the record, before waiting for them."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    new = [
        Submitted(
            job,
            str(s.job_id),
            "local" if executor == "local" else "slurm",
            str(s.paths.folder),
            str(s.paths.stdout),
            str(s.paths.stderr),
            socket.gethostname(),
            now,
        )
        for job, s in zip(jobs, submitted)
    ]
    kept = [e for e in read_submitted(cfg) if e.job not in set(jobs)]
    write_submitted(cfg, kept + new)
    log.info(
        "submitted job ids recorded in %s; to cancel them: %s",
        record_path(cfg),
        cancel_hint(new),
    )
    return new


def cancel_hint(entries: list[Submitted]) -> str:
    local = [e.submitit_id for e in entries if e.executor == "local"]
    slurm = sorted({e.submitit_id.split("_")[0] for e in entries if e.executor == "slurm"})
    parts = ([f"kill {' '.join(local)}"] if local else []) + ([f"scancel {' '.join(slurm)}"] if slurm else [])
    return "; ".join(parts) or "nothing to cancel"


def alive(entry: Submitted) -> bool:
    """Whether the submitted job's process (local) or SLURM task is still queued or running."""
    if entry.executor == "local":
        if entry.host != socket.gethostname():
            return False  # a process of another machine: it cannot be asked from here
        return process_alive(int(entry.submitit_id))
    try:
        import submitit

        return str(submitit.SlurmJob(entry.folder, entry.submitit_id).state).upper() in SLURM_ALIVE
    except Exception as exc:  # sacct unreachable: say so rather than guess
        log.warning("cannot ask SLURM about job %s (%s); taking it as ended", entry.submitit_id, exc)
        return False


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    # A zombie (exited, not yet reaped by its killed parent) is not training.
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True
    return True


def reattach(
    cfg: DictConfig, todo: list[Job], unfinished: Callable[[list[Job]], list[Job]], poll_s: float = 15.0
) -> list[Job]:
    """Before submitting `todo` (the unfinished jobs): wait for those of them still running from an
    earlier submission, say what became of each, and return the jobs still unfinished
    (`unfinished(jobs)`, asked again once they have ended). The record is left empty."""
    entries = [e for e in read_submitted(cfg) if e.job in set(todo)]
    running = [e for e in entries if alive(e)]
    if running:
        log.warning(
            "%d job(s) submitted earlier (%s) are still running: %s; waiting for them instead of submitting "
            "them again (to cancel them: %s)",
            len(running),
            running[0].submitted,
            ", ".join(f"{e.job} [{e.submitit_id}]" for e in running),
            cancel_hint(running),
        )
        while any(alive(e) for e in running):
            time.sleep(poll_s)
    left = unfinished(todo) if entries else todo
    for e in entries:
        if e.job in left:
            log.warning(
                "%s [submitit job %s, submitted %s] ended without finishing (its submitter was stopped, or it "
                "was killed or failed; logs %s, %s): submitting it again",
                e.job,
                e.submitit_id,
                e.submitted,
                e.stdout,
                e.stderr,
            )
        else:
            log.info("%s [submitit job %s, submitted %s] finished", e.job, e.submitit_id, e.submitted)
    write_submitted(cfg, [])  # every recorded job has ended (finished ones are not in `todo`)
    return left
