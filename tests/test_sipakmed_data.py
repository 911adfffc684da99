"""SiPaKMeD raw data: the generator, finding and extracting the cropped cells, the download stage,
contour parsing, the invalid-sample rule and clear errors for bad input (SPEC section 2).

Everything runs on generated data in the official archive layout; the HTTP test serves the
generated archives from a server on 127.0.0.1 started here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import py7zr
import pytest

from coordchannels import download
from coordchannels.pipeline import run_stages
from coordchannels.sipakmed import archives, preprocess
from coordchannels.sipakmed.archives import CROPPED, cropped_members, extract_cropped, find_cropped_dirs
from coordchannels.sipakmed.cells import CLASSES, outside_image, read_cell_image, read_contour
from coordchannels.sipakmed.synthetic import MAX_CELLS, REAL_COUNTS, class_counts, main, make_fake_sipakmed
from tests.conftest import SHARED_DATA, call_stage
from tests.http_server import FileServer

N_CELLS = 12


@pytest.fixture(scope="module")
def fake_archives(tmp_path_factory):
    out = tmp_path_factory.mktemp("archives")
    return make_fake_sipakmed(out, N_CELLS, seed=3, archives=True, n_invalid=2)


@pytest.fixture(scope="module")
def fake_tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("tree")
    return make_fake_sipakmed(out, N_CELLS, seed=3, archives=False, n_invalid=2)


def files_under(folder) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


# ------------------------------------------------------------------ generator


def test_class_counts_keep_the_real_proportions():
    assert class_counts(MAX_CELLS) == list(REAL_COUNTS)
    assert sum(class_counts(37)) == 37
    for bad in (0, MAX_CELLS + 1):
        with pytest.raises(ValueError, match="n_cells"):
            class_counts(bad)


def test_generated_archives_have_the_official_layout(fake_archives):
    assert [p.name for p in fake_archives.paths] == [f"im_{c}.7z" for c in CLASSES]
    cells = fake_archives.cells
    assert len(cells) == N_CELLS and cells["invalid"].sum() == 2
    assert set(fake_archives.invalid_ids) == set(cells.loc[cells["invalid"], "sample_id"])
    for cls, archive in zip(CLASSES, fake_archives.paths):
        with py7zr.SevenZipFile(archive) as z:
            names = set(z.getnames())
        ours = cells[cells["class"] == cls]
        for name in ours["name"]:
            for suffix in (".bmp", "_nuc.dat", "_cyt.dat"):
                assert f"im_{cls}/CROPPED/{name}{suffix}" in names
        full_slides = {n for n in names if n.count("/") == 1 and n.endswith(".bmp")}
        assert full_slides, "each archive also holds full-slide images beside CROPPED/"
        assert {n.split("/")[0] for n in names} == {f"im_{cls}"}


def test_generated_cells_are_realistic(fake_tree):
    cells = fake_tree.cells
    assert cells["width"].between(70, 300).all() and cells["height"].between(70, 300).all()
    assert cells["closed"].any() or len(cells) < 10
    row = cells[~cells["invalid"]].iloc[0]
    folder = fake_tree.out_dir / f"im_{row['class']}" / f"im_{row['class']}" / "CROPPED"
    image = read_cell_image(folder / f"{row['name']}.bmp")
    assert image.shape == (row["height"], row["width"], 3)
    points = read_contour(folder / f"{row['name']}_nuc.dat")
    assert not outside_image(points, row["height"], row["width"])
    # the nucleus is drawn darker than the rest of the cell
    cx, cy = int(row["centre_x"]), int(row["centre_y"])
    assert image[cy, cx].mean() < image.mean()


def test_generator_is_deterministic_and_cli_writes_a_tree(tmp_path, fake_tree, capsys):
    main([str(tmp_path / "cli"), "--cells", str(N_CELLS), "--seed", "3", "--invalid", "2", "--tree"])
    assert f"{N_CELLS} cells, 2 invalid" in capsys.readouterr().out
    assert files_under(tmp_path / "cli") == files_under(fake_tree.out_dir)


# ------------------------------------------------------------------ finding CROPPED folders


def test_cropped_folders_are_found_at_any_depth(tmp_path):
    layouts = [
        "a/b/im_Dyskeratotic/CROPPED",
        "Koilocytotic/CROPPED",
        "im_Metaplastic/im_Metaplastic/CROPPED",
        "x/im_Parabasal/cropped",
        "im_Superficial-Intermediate/im_Superficial-Intermediate/CROPPED",
    ]
    for layout in layouts:
        (tmp_path / layout).mkdir(parents=True)
    (tmp_path / "unrelated/CROPPED").mkdir(parents=True)  # no class folder: ignored
    found = find_cropped_dirs(tmp_path)
    assert [str(found[c].relative_to(tmp_path)) for c in CLASSES] == layouts


def test_missing_or_duplicate_cropped_folders_are_errors(tmp_path):
    (tmp_path / "im_Parabasal/CROPPED").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="Dyskeratotic"):
        find_cropped_dirs(tmp_path)
    for cls in CLASSES:
        (tmp_path / f"im_{cls}/CROPPED").mkdir(parents=True, exist_ok=True)
    (tmp_path / "im_Parabasal/im_Parabasal/CROPPED").mkdir(parents=True)
    with pytest.raises(ValueError, match="more than one CROPPED"):
        find_cropped_dirs(tmp_path)


def test_only_cropped_cell_images_and_nucleus_contours_are_members():
    names = [
        "im_X/001.bmp",
        "im_X/001_nuc01.dat",
        "im_X/CROPPED",
        "im_X/CROPPED/001_01.bmp",
        "im_X/CROPPED/001_01_nuc.dat",
        "im_X/CROPPED/001_01_cyt.dat",
        "im_X\\CROPPED\\002_03.BMP",
        "im_X/CROPPED/notes.txt",
        "001_01.bmp",
    ]
    assert cropped_members(names) == [
        "im_X/CROPPED/001_01.bmp",
        "im_X/CROPPED/001_01_nuc.dat",
        "im_X\\CROPPED\\002_03.BMP",
    ]


# ------------------------------------------------------------------ extraction and download stage


def test_extraction_takes_only_the_cropped_cells(fake_archives, tmp_path):
    archive = fake_archives.paths[CLASSES.index("Parabasal")]
    n = extract_cropped(archive, tmp_path / "im_Parabasal" / "CROPPED")  # parents made as needed
    names = sorted(fake_archives.cells.query("`class` == 'Parabasal'")["name"])
    expected = sorted([f"{m}.bmp" for m in names] + [f"{m}_nuc.dat" for m in names])
    assert n == len(expected)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == expected  # nothing left over


# A stand-in for the 7-Zip program: the two commands extract_cropped runs, in 7z's own output
# format (`l -slt`: the archive's block, a dashed line, then `Path = ` per member), done by py7zr.
FAKE_7Z = """#!{python}
import sys, py7zr
args = sys.argv[1:]
archive = [a for a in args if a.endswith(".7z")][0]
with py7zr.SevenZipFile(archive) as z:
    if args[0] == "l":
        print("Path = " + archive + "\\nType = 7z\\n\\n----------")
        print("\\n\\n".join("Path = " + n + "\\nSize = 1" for n in z.getnames()))
    else:
        out = [a[2:] for a in args if a.startswith("-o")][0]
        listfile = [a[1:] for a in args if a.startswith("@")][0]
        z.extract(path=out, targets=open(listfile).read().split())
"""


def unsupported(*args, **kwargs):
    raise py7zr.exceptions.UnsupportedCompressionMethodError(b"\\x03\\x03\\x01\\x1b", "BCJ2 is not supported")


def test_a_codec_py7zr_lacks_falls_back_to_the_7z_program(fake_archives, tmp_path, monkeypatch, caplog):
    import sys

    archive = fake_archives.paths[CLASSES.index("Koilocytotic")]
    want = extract_cropped(archive, tmp_path / "py7zr")
    program = tmp_path / "bin" / "7z"
    program.parent.mkdir()
    program.write_text(FAKE_7Z.format(python=sys.executable))
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{program.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(archives, "_py7zr_extract", unsupported)
    assert extract_cropped(archive, tmp_path / "program") == want
    assert files_under(tmp_path / "program") == files_under(tmp_path / "py7zr")
    assert "extracting with" in caplog.text and str(program) in caplog.text


def test_a_codec_py7zr_lacks_without_a_7z_program_is_a_clear_error(fake_archives, tmp_path, monkeypatch):
    archive = fake_archives.paths[0]
    monkeypatch.setattr(archives, "_py7zr_extract", unsupported)
    monkeypatch.setattr(archives, "seven_zip_program", lambda: None)
    with pytest.raises(ValueError, match=f"{archive.name}: py7zr cannot decode.*SIPAKMED_DIR"):
        extract_cropped(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_7z_is_a_clear_error(tmp_path):
    bad = tmp_path / "im_Parabasal.7z"
    bad.write_bytes(b"not an archive at all")
    with pytest.raises(ValueError, match="im_Parabasal.7z"):
        extract_cropped(bad, tmp_path / "out")


def archive_sizes(paths) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in paths}


@pytest.fixture
def no_proxy(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def test_download_stage_fetches_archives_over_http_and_extracts_cells(fake_archives, make_cfg, monkeypatch, no_proxy):
    """The real path: download.sipakmed_archives over HTTP (sizes patched to the generated
    archives'), the invalid list fetched and verified, then only the cropped cells extracted."""
    files = {p.name: p.read_bytes() for p in fake_archives.paths}
    invalid_csv = b"filename\n1_001_01\n"
    files["invalid_samples.csv"] = invalid_csv
    real_registry = download.registry
    sizes = archive_sizes(fake_archives.paths)

    def registry(name):
        if name == "sipakmed_archives":
            return sizes
        if name == "invalid_samples":
            return {"invalid_samples.csv": hashlib.sha256(invalid_csv).hexdigest()}
        return real_registry(name)

    monkeypatch.setattr(download, "registry", registry)
    with FileServer(files) as server:
        cfg = make_cfg(
            "task=sipakmed",
            f"task.data.url={server.url}",
            f"sources.invalid_samples_url={server.url}invalid_samples.csv",
        )
        cfg.stages = ["download", "authors_list"]
        assert run_stages(cfg) == ["download", "authors_list"]
        n_requests = len(server.requests)
        assert run_stages(cfg) == []  # complete: nothing fetched again
        assert len(server.requests) == n_requests
    raw = cfg.task.data.raw_dir
    cropped = files_under(Path(raw) / CROPPED)
    assert len(cropped) == 2 * N_CELLS
    assert all(name.endswith((".bmp", "_nuc.dat")) for name in cropped)
    assert (Path(raw) / "invalid_samples.csv").read_bytes() == invalid_csv


def test_download_stage_uses_an_extracted_tree_mirror(fake_tree, fake_archives, make_cfg, monkeypatch):
    """A mirror holding the extracted tree gives exactly the files extraction from the archives gives."""
    monkeypatch.setattr(archives, "sipakmed_archives", lambda cfg: list(fake_archives.paths))
    from_archives = make_cfg(
        "task=sipakmed", "task.data.fetch_authors_invalid=false", "task.data.raw_dir=${paths.raw_dir}/from_archives"
    )
    call_stage(from_archives, "download")
    from_tree = make_cfg(
        "task=sipakmed", "task.data.fetch_authors_invalid=false", f"paths.sipakmed_mirror={fake_tree.out_dir}"
    )
    call_stage(from_tree, "download")
    a = files_under(Path(from_archives.task.data.raw_dir) / CROPPED)
    b = files_under(Path(from_tree.task.data.raw_dir) / CROPPED)
    assert a == b and len(a) == 2 * N_CELLS
    assert sorted({k.split("/")[0] for k in a}) == sorted(CLASSES)


def test_archives_in_a_mirror_are_read_in_place_and_locked(fake_archives, make_cfg, monkeypatch):
    """A mirror with the archives: nothing 5 GB-sized is copied into raw_dir, the lock is written
    there, and a mirror archive of the wrong size is an error that leaves no cropped folder."""
    sizes = archive_sizes(fake_archives.paths)
    monkeypatch.setattr(download, "registry", lambda name: sizes)
    mirror = fake_archives.paths[0].parent
    cfg = make_cfg("task=sipakmed", "task.data.fetch_authors_invalid=false", f"paths.sipakmed_mirror={mirror}")
    call_stage(cfg, "download")
    raw = Path(cfg.task.data.raw_dir)
    assert not list(raw.glob("*.7z"))
    lock = json.loads((raw / archives.SIPAKMED_LOCK).read_text())
    assert sorted(lock) == sorted(sizes)
    assert len(files_under(raw / CROPPED)) == 2 * N_CELLS

    bad = dict(sizes, **{fake_archives.paths[0].name: sizes[fake_archives.paths[0].name] + 1})
    monkeypatch.setattr(download, "registry", lambda name: bad)
    other = make_cfg(
        "task=sipakmed",
        "task.data.fetch_authors_invalid=false",
        f"paths.sipakmed_mirror={mirror}",
        "task.data.raw_dir=${paths.raw_dir}/other",
    )
    with pytest.raises(download.ChecksumError, match=f"mirror file .*{fake_archives.paths[0].name}: size"):
        call_stage(other, "download")
    assert not (Path(other.task.data.raw_dir) / CROPPED).exists()


def test_download_stage_with_an_empty_mirror_is_a_clear_error(make_cfg, tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = make_cfg("task=sipakmed", f"paths.sipakmed_mirror={tmp_path / 'empty'}")
    with pytest.raises(FileNotFoundError, match="neither the five archives"):
        call_stage(cfg, "download")
    assert not (tmp_path / "data/raw/sipakmed" / CROPPED).exists()


# ------------------------------------------------------------------ contours and the invalid rule


def write(path, text: str):
    path.write_text(text)
    return path


def test_contours_parse_comma_or_whitespace_separated(tmp_path):
    comma = read_contour(write(tmp_path / "a_nuc.dat", "1.5,2\n3,4.25\n\n5e1,6\n"))
    spaces = read_contour(write(tmp_path / "b_nuc.dat", "1.5 2\n3\t4.25\n  50   6  \n"))
    mixed = read_contour(write(tmp_path / "c_nuc.dat", "1.5, 2\n3 ,4.25\n50,6\n"))
    expected = np.array([[1.5, 2], [3, 4.25], [50, 6]])
    for points in (comma, spaces, mixed):
        np.testing.assert_array_equal(points, expected)


@pytest.mark.parametrize(
    "text, line", [("1,2\n3,4\nx,5\n", 3), ("1,2\n3,4,5\n", 2), ("1,2\n\n7\n", 3), ("nan,2\n", 1), ("1;2\n", 1)]
)
def test_a_malformed_contour_line_is_an_error_with_file_and_line(tmp_path, text, line):
    path = write(tmp_path / "001_01_nuc.dat", text)
    with pytest.raises(ValueError, match=rf"001_01_nuc.dat, line {line}: expected two numbers"):
        read_contour(path)


def test_empty_or_missing_contours_are_errors(tmp_path):
    with pytest.raises(ValueError, match="empty_nuc.dat: empty contour"):
        read_contour(write(tmp_path / "empty_nuc.dat", "\n  \n"))
    with pytest.raises(FileNotFoundError, match="gone_nuc.dat"):
        read_contour(tmp_path / "gone_nuc.dat")


def test_invalid_rule_is_any_nucleus_point_outside_the_image():
    inside = np.array([[0.0, 0.0], [100.0, 50.0], [30.0, 20.0]])  # edges of a 100 x 50 image count as inside
    assert not outside_image(inside, height=50, width=100)
    for bad in ([-0.1, 10], [10, -0.5], [100.01, 10], [10, 50.5]):
        assert outside_image(np.vstack([inside, bad]), height=50, width=100)


def test_unreadable_image_is_an_error_naming_the_file(tmp_path):
    garbage = tmp_path / "001_01.bmp"
    garbage.write_bytes(b"BM this is not a bitmap")
    with pytest.raises(ValueError, match="001_01.bmp: cannot read the image"):
        read_cell_image(garbage)


# ------------------------------------------------------------------ bad input through the preprocess stage


@pytest.fixture
def raw_cfg(fake_tree, make_cfg):
    """A config whose raw layout is a copy of the generated cells, for spoiling one file."""
    cfg = make_cfg(
        "task=sipakmed", "task.data.fetch_authors_invalid=false", f"paths.sipakmed_mirror={fake_tree.out_dir}"
    )
    call_stage(cfg, "download")
    return cfg


def first_cell(cfg):
    folder = Path(cfg.task.data.raw_dir) / CROPPED / "Dyskeratotic"
    return sorted(folder.glob("*.bmp"))[0]


def test_preprocess_names_an_unreadable_bmp(raw_cfg):
    bmp = first_cell(raw_cfg)
    data = bmp.read_bytes()
    bmp.write_bytes(data[: len(data) // 3])  # truncated: header fine, pixels missing
    with pytest.raises(ValueError, match=rf"{bmp.name}: cannot read the image"):
        call_stage(raw_cfg, "preprocess")


def test_preprocess_names_a_missing_nucleus_contour(raw_cfg):
    bmp = first_cell(raw_cfg)
    (bmp.parent / f"{bmp.stem}_nuc.dat").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{bmp.stem}_nuc.dat is missing"):
        call_stage(raw_cfg, "preprocess")


def test_preprocess_names_an_empty_contour(raw_cfg):
    bmp = first_cell(raw_cfg)
    (bmp.parent / f"{bmp.stem}_nuc.dat").write_text("")
    with pytest.raises(ValueError, match=rf"{bmp.stem}_nuc.dat: empty contour"):
        call_stage(raw_cfg, "preprocess")
    assert not (Path(raw_cfg.task.processed_dir) / preprocess.SAMPLES_CSV).exists()


def test_preprocess_without_download_says_what_to_run(make_cfg):
    cfg = make_cfg("task=sipakmed")
    with pytest.raises(FileNotFoundError, match="run the download stage"):
        call_stage(cfg, "preprocess")


def test_authors_list_is_read_whatever_the_suffixes(tmp_path):
    path = write(tmp_path / "inv.csv", "filename\n2_095_10.bmp\n2_095_11_nuc.dat\n3_271_01\n")
    assert preprocess.authors_invalid_ids(path) == {"2_095_10", "2_095_11", "3_271_01"}
    shared = SHARED_DATA / "sipakmed_invalid_samples.csv"
    if shared.exists():
        ids = preprocess.authors_invalid_ids(shared)
        assert len(ids) == 26 and "2_095_10" in ids


def test_copy_of_tree_ignores_everything_but_cells(tmp_path):
    src = tmp_path / "CROPPED"
    src.mkdir()
    for name in ("001_01.bmp", "001_01_nuc.dat", "001_01_cyt.dat", "Thumbs.db", "001_02.BMP"):
        (src / name).write_bytes(name.encode())
    assert archives.copy_cropped(src, tmp_path / "out") == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["001_01.bmp", "001_01_nuc.dat", "001_02.bmp"]


# ------------------------------------------------------------------ state that must not stick


def test_an_error_names_the_mirror_file_and_a_fixed_mirror_is_taken_again(fake_tree, make_cfg, tmp_path):
    """A bad file in the user's mirror is named as the user's file; once fixed, the rerun notices
    the changed mirror and copies the cells again instead of saying `done`."""
    mirror = tmp_path / "mirror"
    import shutil

    shutil.copytree(fake_tree.out_dir, mirror)
    nuc = sorted(mirror.rglob("*_nuc.dat"))[0]
    good = nuc.read_text()
    nuc.write_text("not,a,contour\n")
    cfg = make_cfg(
        "task=sipakmed",
        "task.data.fetch_authors_invalid=false",
        f"paths.sipakmed_mirror={mirror}",
        "stages=[download,preprocess]",
    )
    with pytest.raises(ValueError, match=rf"is a copy of {nuc}"):
        run_stages(cfg)
    nuc.write_text(good)
    assert run_stages(cfg) == ["download", "preprocess"]


def test_right_sized_junk_archives_are_not_locked_in(fake_archives, make_cfg, monkeypatch, tmp_path):
    sizes = archive_sizes(fake_archives.paths)
    monkeypatch.setattr(download, "registry", lambda name: sizes)
    junk = tmp_path / "junk"
    junk.mkdir()
    for path in fake_archives.paths:
        (junk / path.name).write_bytes(b"\0" * path.stat().st_size)
    cfg = make_cfg("task=sipakmed", "task.data.fetch_authors_invalid=false", f"paths.sipakmed_mirror={junk}")
    with pytest.raises(ValueError, match="not a readable 7z archive"):
        call_stage(cfg, "download")
    lock = Path(cfg.task.data.raw_dir) / archives.SIPAKMED_LOCK
    assert not lock.exists() or json.loads(lock.read_text()) == {}
    good = make_cfg(
        "task=sipakmed",
        "task.data.fetch_authors_invalid=false",
        f"paths.sipakmed_mirror={fake_archives.paths[0].parent}",
    )
    call_stage(good, "download")  # the good archives are accepted, and now pinned
    assert sorted(json.loads(lock.read_text())) == sorted(sizes)


@pytest.mark.parametrize("contour", ["40,40\n", "40,40\n50,50\n", "40,40\n50,50\n60,60\n"])
def test_a_contour_without_area_is_excluded_with_its_reason(raw_cfg, contour):
    bmp = first_cell(raw_cfg)
    (bmp.parent / f"{bmp.stem}_nuc.dat").write_text(contour)
    for rule in ("contour", "authors"):
        cfg = raw_cfg.copy()
        cfg.task.data.invalid_rule = rule
        if rule == "authors":
            (Path(cfg.task.data.raw_dir) / "invalid_samples.csv").write_text("filename\n")
        call_stage(cfg, "preprocess")
        excluded = pd.read_csv(Path(cfg.task.processed_dir) / preprocess.EXCLUDED_CSV, dtype=str)
        reasons = dict(zip(excluded.sample_id, excluded.reason))
        assert "without area" in reasons[f"1_{bmp.stem}"], (rule, reasons)
