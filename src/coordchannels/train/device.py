"""Device, seeds and determinism of a training job."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import random
import sys
from collections.abc import Iterator

import numpy as np
import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Device, seeds, determinism
# --------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels where they cost little: all of them on a CPU; cuDNN's on a GPU (the
    fully deterministic CUDA mode needs an environment variable set before start-up)."""
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if device.type == "cpu":
        torch.use_deterministic_algorithms(deterministic, warn_only=True)


_MALLOC_TUNED = False


def tune_malloc() -> None:
    """Keep freed memory in the process instead of returning it to the system (glibc only).

    Each training step allocates and frees the same ~1 MB activations; by default glibc maps and
    unmaps them every time, and the page faults (slow in a VM) cost about a quarter of
    NimeshaNet's CPU training time. Changes speed only, never numbers.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or not sys.platform.startswith("linux"):
        return
    _MALLOC_TUNED = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers in glibc's malloc.h
        libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's largest allowed value
        libc.mallopt(m_trim_threshold, 1024 * 1024 * 1024)
    except (OSError, AttributeError):  # not glibc (e.g. musl): keep the defaults
        pass


# What runs the train stage's jobs (train.executor): in this process one after another, in joblib
# processes side by side, or each in its own submitit job (coordchannels.train.submit).
EXECUTORS = ("serial", "joblib", "submitit")


def jobs_side_by_side(cfg: DictConfig, n_jobs_total: int) -> int:
    """How many jobs run at once: with train.executor=joblib (the default) cfg.train.n_jobs, where
    `auto` = one job per core on a CPU (the small models gain little from more threads per job) and
    one at a time on a GPU (which a single job keeps busy); one with serial; with submitit, all of
    them (at most `train.submitit.slurm_array_parallelism` on SLURM)."""
    executor = str(cfg.train.get("executor", "joblib"))
    if executor == "serial":
        return 1
    if executor == "submitit":
        limit = cfg.train.submitit.get("slurm_array_parallelism") if cfg.train.submitit.cluster == "slurm" else None
        return max(1, min(int(limit or n_jobs_total), n_jobs_total))
    wanted = cfg.train.n_jobs
    if str(wanted) == "auto":
        wanted = 1 if resolve_device(cfg.train.device).type == "cuda" else _cores()
    return max(1, min(int(wanted), n_jobs_total))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_job(cfg: DictConfig, n_jobs: int) -> int:
    """cfg.train.num_threads: a fixed number, part of the job's fingerprint, never derived from the
    cores or from how many jobs run side by side (CPU kernels sum in another order with another
    thread count, so a job's numbers would depend on how it was scheduled)."""
    return int(cfg.train.num_threads)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Use n torch threads inside the block, then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
