"""Atomic outputs: a finished file or folder appears whole or not at all."""

from __future__ import annotations

import os
import stat
import time

import numpy as np
import pytest

from coordchannels.io import atomic_dir, atomic_path, save_npy, write_text


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_the_old_file_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "out.csv"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError
    assert target.read_text() == "old"
    write_text(target, "new")
    assert target.read_text() == "new"


def test_finished_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644


def test_atomic_dir_replaces_a_tree_whole_or_not_at_all(tmp_path):
    target = tmp_path / "tree"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def _leftover(folder, name, age_s=3600.0, is_dir=False):
    """A temporary as a killed writer leaves it, last modified `age_s` seconds ago."""
    part = folder / name
    if is_dir:
        part.mkdir()
        (part / "chunk.npy").write_bytes(b"x" * 10)
    else:
        part.write_bytes(b"x" * 10)
    old = time.time() - age_s
    os.utime(part, (old, old))
    return part


def test_stale_temporaries_of_the_target_are_removed_by_its_next_write(tmp_path):
    target = tmp_path / "features.npy"
    mine = _leftover(tmp_path, ".features.npy.k3j_9xq2.part")
    other = _leftover(tmp_path, ".labels.npy.a1b2c3d4.part")  # another target's
    longer = _leftover(tmp_path, ".features.npy.gz.a1b2c3d4.part")  # features.npy.gz's
    fresh = _leftover(tmp_path, ".features.npy.zz99aa11.part", age_s=-60)  # a writer still at it
    save_npy(target, np.arange(3))
    assert not mine.exists()
    assert other.exists() and longer.exists() and fresh.exists()
    assert np.load(target).tolist() == [0, 1, 2]


def test_stale_temporary_folders_are_removed_by_the_next_atomic_dir(tmp_path):
    stale = _leftover(tmp_path, ".images.ab12cd34.part", is_dir=True)
    other = _leftover(tmp_path, ".images2.ab12cd34.part", is_dir=True)
    with atomic_dir(tmp_path / "images") as tmp:
        (tmp / "a").write_text("1")
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["a"]


def test_stale_temporaries_only_match_their_own_target_name(tmp_path):
    # glob specials in the name are literal; the random part has exactly 8 characters
    from coordchannels.io import stale_parts

    odd = tmp_path / "a[1]*.csv"
    mine = _leftover(tmp_path, ".a[1]*.csv.abcdefgh.part")
    not_mine = _leftover(tmp_path, ".a1x.csv.abcdefgh.part")
    too_short = _leftover(tmp_path, ".a[1]*.csv.abc.part")
    assert stale_parts(odd) == [mine]
    write_text(odd, "x")
    assert not mine.exists() and not_mine.exists() and too_short.exists()
