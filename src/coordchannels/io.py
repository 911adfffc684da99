"""Atomic file output: nothing half-written is ever left where a finished file is expected.

A file or folder is written under a hidden temporary name beside its target,
`.<name>.<8 random characters>.part`, and renamed onto the target only when complete. A process
killed mid-write cannot remove its temporary; the next write of the same target removes such
leftovers first (`remove_stale_parts`): those of that target name only, and only when they were
last modified before this process imported this module, so a temporary that another process is
still filling (its modification time keeps moving) is left alone. Two processes writing the same
target at the same time are not supported (the last rename wins in any case); one writer may
then remove the other's temporary if it sat unmodified since before the writer started.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

# Temporaries older than this belong to an earlier (killed) process, not to this one.
_STARTED = time.time()
# tempfile's random part: 8 characters of "abcdefghijklmnopqrstuvwxyz0123456789_".
_RANDOM = r"[a-z0-9_]{8}"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read `chunk` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stale_parts(path: str | os.PathLike, before: float | None = None) -> list[Path]:
    """Temporaries of `path` (`.<name>.<random>.part` beside it) last modified before `before`
    (default: when this process imported this module). Temporaries of other targets never match,
    even `.<name>.gz.<random>.part` of `<name>.gz`: the random part has no dot."""
    path = Path(path)
    before = _STARTED if before is None else before
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{_RANDOM}\.part")
    if not path.parent.is_dir():
        return []
    found = []
    for entry in path.parent.iterdir():
        if pattern.fullmatch(entry.name):
            try:
                if entry.lstat().st_mtime < before:
                    found.append(entry)
            except FileNotFoundError:  # removed meanwhile
                continue
    return sorted(found)


def remove_stale_parts(path: str | os.PathLike, before: float | None = None) -> list[Path]:
    """Delete the temporaries `stale_parts` finds (files or folders); return what was removed."""
    removed = []
    for entry in stale_parts(path, before):
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue
        except OSError as err:  # never fail a write over a leftover we cannot delete
            log.warning("could not remove stale temporary %s: %s", entry, err)
            continue
        log.info("removed %s, a temporary left by an interrupted write of %s", entry, Path(path).name)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    # mkstemp creates 0600 files; give finished outputs the usual permissions (umask applied).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it becomes `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        yield tmp
        # Move the old tree aside before the new one takes its name, so that a crash between
        # the two steps leaves one complete copy, never none.
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# A set of files (`atomic_files`) is filled in a hidden folder beside them; this file inside it says
# the set is complete, so that renaming it into place may be finished by a later process.
SET_PREFIX = ".set."
SET_COMPLETE = ".complete"


@contextlib.contextmanager
def atomic_files(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; the files written into it replace their namesakes in `folder` as
    one set, only if the block succeeds. A failure while filling it (a full disk, a kill) leaves the
    previous set as it was; a kill while the complete set is renamed into place is finished by the
    next `atomic_files` of the same folder (`finish_file_sets`). Other files of `folder` are kept."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    finish_file_sets(folder)
    tmp = Path(tempfile.mkdtemp(prefix=SET_PREFIX, suffix=".part", dir=folder))
    try:
        yield tmp
        (tmp / SET_COMPLETE).touch()
        _move_set(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def finish_file_sets(folder: Path) -> None:
    """Complete the renaming of a set a killed process had finished filling; drop unfinished sets."""
    for tmp in sorted(folder.glob(f"{SET_PREFIX}*.part")):
        if (tmp / SET_COMPLETE).is_file():
            log.info("finishing the interrupted replacement of %s's files from %s", folder, tmp.name)
            _move_set(tmp, folder)
        shutil.rmtree(tmp, ignore_errors=True)


def _move_set(tmp: Path, folder: Path) -> None:
    for path in sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != SET_COMPLETE):
        target = folder / path.relative_to(tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    shutil.rmtree(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(df: pd.DataFrame, path: str | os.PathLike, **kwargs) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kwargs)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
