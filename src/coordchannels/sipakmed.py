"""SiPaKMeD nuclear-centre localisation: data stages and the trainer's loader (SPEC sections 2, 3, 5, 9).

Stages (task.stage_defs in conf/task/sipakmed.yaml):
- `download_stage`: the isolated cells of the five class archives, and nothing else, into
  `<raw_dir>/cropped/<Class>/NNN_MM.bmp` + `NNN_MM_nuc.dat` (plus the authors' invalid list).
- `preprocess_stage`: parse, exclude invalid samples, resize + pad to 256 x 256, nucleus centres;
  one compact cache (`images.npy` + `cache.npz`), `samples.csv`, `excluded.csv`, `variants.csv`.
- `folds_stage`: `folds.csv`, both groupings of SPEC section 9 in one file.
`load_task_data` gives the trainer the 20 affine variants of every image, computed per batch on
the device from the cache and the variant table; no variant is ever written to disk (the
authors' scripts wrote 80460 float32 tensors, about 105 GB per arm).

Resizing. OpenCV's INTER_AREA, which the scripts use, is exact pixel-area averaging: output pixel
i covers the input interval [i s, (i + 1) s) with s = input / output size, and every input pixel
counts with the length it overlaps that interval. That holds for downscaling (cv::resizeArea) and
for upscaling too, where OpenCV's area mode uses the same overlap weights (a pixel takes one
input pixel, or a blend of two where it straddles their border). `area_weights` builds exactly
these weights (checked against cv2.resize on float images: they agree within 4e-5 for sizes
33-512, down and up; on uint8 input OpenCV rounds in fixed point, within one grey level). Neither torch's `interpolate(mode="area")` (adaptive average pooling over whole input
pixels) nor Pillow's BOX filter (whole pixels whose centres fall in the window) matches it except
for integer ratios; both are off by up to half the intensity range on a noise image otherwise.

The cache. `images.npy` is uint8 (N, 3, 256, 256): the area-resized image rounded to 8 bits
(as the scripts' own resized BMPs were), zero outside its pad box; `cache.npz` holds each image's
mean and std (normalisation happens on the device, where the pad area is set to 0), the box,
the contours in the 256 x 256 frame and both centre definitions. 4023 images take 791 MB; float16
normalised images would take twice that. The 8-bit rounding changes a normalised pixel by at
most 0.5 / std (std = the image's intensity std in grey levels): on 994 generated cells (std
24-54) the largest error against float32 was 0.016, where float16 would give 0.002
(tests/test_sipakmed_preprocess.py checks the bound).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import py7zr
import torch
from omegaconf import DictConfig
from PIL import Image

from coordchannels import download, warp
from coordchannels.channels import KINDS, N_EXTRA, extra_channels_2d
from coordchannels.folds import FOLDS_CSV, SIPAKMED_GROUPINGS, sipakmed_folds, slide_of
from coordchannels.io import atomic_dir, atomic_path, save_npz, write_csv
from coordchannels.taskdata import folds_present

log = logging.getLogger(__name__)

# Class name -> sample-id prefix (SPEC section 2). Archive `im_<Class>.7z`, folder `im_<Class>`.
CLASS_PREFIX = {"Dyskeratotic": 1, "Koilocytotic": 2, "Metaplastic": 3, "Parabasal": 4,
                "Superficial-Intermediate": 5}
CLASSES = tuple(CLASS_PREFIX)
CENTRES = ("vertex_mean", "polygon_centroid")
RESIZE_RULES = ("truncate", "round")
NORM_STATS = ("original", "resized")
INVALID_RULES = ("contour", "authors", "either")

# Cell files inside a CROPPED folder: NNN_MM.bmp and its nucleus contour NNN_MM_nuc.dat.
CELL_BMP = re.compile(r"(\d+_\d+)\.bmp", re.IGNORECASE)
CELL_NUC = re.compile(r"(\d+_\d+)_nuc\.dat", re.IGNORECASE)

# Layout under task.data.raw_dir and task.processed_dir.
CROPPED = "cropped"
AUTHORS_INVALID_CSV = "invalid_samples.csv"
SAMPLES_CSV = "samples.csv"
EXCLUDED_CSV = "excluded.csv"
INVALID_COMPARE_CSV = "invalid_vs_authors.csv"
IMAGES_NPY = "images.npy"
CACHE_NPZ = "cache.npz"
VARIANTS_CSV = "variants.csv"
PREPROCESS_OUTPUTS = (SAMPLES_CSV, EXCLUDED_CSV, IMAGES_NPY, CACHE_NPZ, VARIANTS_CSV)


def sample_id(cls: str, name: str) -> str:
    """`Koilocytotic`, `095_10` -> `2_095_10`."""
    return f"{CLASS_PREFIX[cls]}_{name}"


def _choice(value: str, allowed: tuple[str, ...], key: str) -> str:
    if value not in allowed:
        raise ValueError(f"task.data.{key} must be one of {allowed}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Finding and extracting the cropped cells
# --------------------------------------------------------------------------------------------


def class_of(parts: tuple[str, ...]) -> str | None:
    """The class named by the innermost folder `<Class>` or `im_<Class>` among `parts`, if any."""
    names = {c.lower(): c for c in CLASSES} | {f"im_{c}".lower(): c for c in CLASSES}
    for part in reversed(parts):
        if part.lower() in names:
            return names[part.lower()]
    return None


def cell_file_kind(name: str) -> tuple[str, str] | None:
    """('bmp' | 'nuc', 'NNN_MM') for a cropped cell's image or nucleus contour, else None."""
    for kind, pattern in (("bmp", CELL_BMP), ("nuc", CELL_NUC)):
        match = pattern.fullmatch(name)
        if match:
            return kind, match.group(1)
    return None


def canonical_name(name: str) -> str:
    """`001_01.BMP` -> `001_01.bmp`: one spelling in the raw layout whatever the source used."""
    kind, stem = cell_file_kind(name)
    return f"{stem}.bmp" if kind == "bmp" else f"{stem}_nuc.dat"


def find_cropped_dirs(root: str | Path) -> dict[str, Path]:
    """Class -> its CROPPED folder, found at any depth under `root`.

    Copies in the wild nest it differently (`im_X/im_X/CROPPED`, `im_X/CROPPED`, `X/CROPPED`); the
    class is the innermost enclosing folder named `X` or `im_X`. Several CROPPED folders for one
    class, or a class without one, is an error naming what was found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"SiPaKMeD folder {root} does not exist")
    found: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir() and path.name.lower() == "cropped":
            cls = class_of(path.relative_to(root).parts[:-1])
            if cls is None:
                log.warning("ignoring %s: no enclosing class folder (im_<Class>)", path)
                continue
            found.setdefault(cls, []).append(path)
    several = {c: [str(p) for p in ps] for c, ps in found.items() if len(ps) > 1}
    if several:
        raise ValueError(f"{root}: more than one CROPPED folder for a class: {several}")
    missing = [c for c in CLASSES if c not in found]
    if missing:
        raise FileNotFoundError(f"{root}: no CROPPED folder for class(es) {missing} "
                                f"(found: {sorted(found)}); expected e.g. im_{missing[0]}/CROPPED/")
    return {c: found[c][0] for c in CLASSES}


def has_cropped_tree(root: str | Path) -> bool:
    """Whether `root` holds at least one CROPPED folder (an extracted SiPaKMeD tree)."""
    root = Path(root)
    return root.is_dir() and any(p.is_dir() and p.name.lower() == "cropped" for p in root.rglob("*"))


def archive_class(archive: Path) -> str:
    """`im_Parabasal.7z` -> `Parabasal`; any other name is an error."""
    cls = class_of((archive.name.removesuffix(".7z"),))
    if cls is None or not archive.name.endswith(".7z"):
        raise ValueError(f"{archive}: not one of the SiPaKMeD archives {[f'im_{c}.7z' for c in CLASSES]}")
    return cls


def cropped_members(names: list[str]) -> list[str]:
    """The archive members that are cropped cells' images or nucleus contours (inside a CROPPED folder)."""
    keep = []
    for name in names:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if len(parts) > 1 and "cropped" in (p.lower() for p in parts[:-1]) and cell_file_kind(parts[-1]):
            keep.append(name)
    return keep


def extract_cropped(archive: str | Path, dest: str | Path) -> int:
    """Extract only the CROPPED cells' `.bmp` and `_nuc.dat` of one class archive into `dest` (flat).

    Returns the number of files written. Full-slide images and `_cyt.dat` contours are left in
    the archive: they are most of its 1-1.4 GB and the task never reads them. py7zr reads the
    archive; where it lacks the archive's codec (it has no BCJ2, for one), the 7-Zip program
    (`7z`, `7zz` or `7za` on the PATH) does the same job.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        return _extract_cropped_with(archive, dest, _py7zr_names, _py7zr_extract)
    except py7zr.exceptions.Bad7zFile as err:
        raise ValueError(f"{archive}: not a readable 7z archive ({err})") from err
    except py7zr.exceptions.UnsupportedCompressionMethodError as err:
        program = seven_zip_program()
        if program is None:
            raise ValueError(f"{archive}: py7zr cannot decode its compression ({err}) and no 7-Zip program "
                             f"({', '.join(SEVEN_ZIP_PROGRAMS)}) is on the PATH; install 7-Zip, or extract the "
                             "archives yourself (`7z x <archive>`) and pass the extracted folder as "
                             "SIPAKMED_DIR (paths.sipakmed_mirror)") from err
        log.warning("%s: py7zr cannot decode it (%s); extracting with %s", archive, err, program)
        return _extract_cropped_with(archive, dest, lambda a: _program_names(program, a),
                                     lambda a, members, out: _program_extract(program, a, members, out))


def _extract_cropped_with(archive: Path, dest: Path, names_of, extract) -> int:
    """The cropped cells of `archive`, listed by `names_of(archive)` and extracted by
    `extract(archive, members, folder)` into a temporary folder, moved flat into `dest`."""
    members = cropped_members(names_of(archive))
    if not members:
        raise ValueError(f"{archive}: no CROPPED/NNN_MM.bmp or _nuc.dat members; is it a SiPaKMeD archive?")
    basenames = [PurePosixPath(m.replace("\\", "/")).name for m in members]
    twice = sorted({b for b in basenames if basenames.count(b) > 1})
    if twice:
        raise ValueError(f"{archive}: cell files found in more than one CROPPED folder: {twice[:5]}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".extract.") as tmp:
        extract(archive, members, Path(tmp))
        dest.mkdir(parents=True, exist_ok=True)
        for member, base in zip(members, basenames):
            shutil.move(Path(tmp) / member, dest / canonical_name(base))
    return len(members)


def _py7zr_names(archive: Path) -> list[str]:
    with py7zr.SevenZipFile(archive, "r") as z:
        return z.getnames()


def _py7zr_extract(archive: Path, members: list[str], out: Path) -> None:
    with py7zr.SevenZipFile(archive, "r") as z:
        z.extract(path=out, targets=members)


# 7-Zip's command-line programs (7-Zip, its standalone build, p7zip), in order of preference.
SEVEN_ZIP_PROGRAMS = ("7z", "7zz", "7za")


def seven_zip_program() -> str | None:
    return next((path for name in SEVEN_ZIP_PROGRAMS if (path := shutil.which(name))), None)


def _run_program(cmd: list[str], archive: Path) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ValueError(f"{archive}: `{' '.join(cmd)}` failed (exit {result.returncode}): "
                         f"{(result.stderr or result.stdout).strip()[-500:]}")
    return result.stdout


def _program_names(program: str, archive: Path) -> list[str]:
    """Member paths from `7z l -slt`: after the archive's own block, a `----------` line, then
    one `Path = ...` per member."""
    listing = _run_program([program, "l", "-slt", str(archive)], archive)
    members = listing.split("\n----------\n", 1)[-1]
    return [line[len("Path = "):] for line in members.splitlines() if line.startswith("Path = ")]


def _program_extract(program: str, archive: Path, members: list[str], out: Path) -> None:
    """`7z x` of exactly `members` (a list file: thousands of names do not fit a command line)."""
    listfile = out / ".members.txt"
    listfile.write_text("".join(f"{m}\n" for m in members), encoding="utf-8")
    _run_program([program, "x", "-y", "-scsUTF-8", f"-o{out}", str(archive), f"@{listfile}"], archive)
    listfile.unlink()


def copy_cropped(src: Path, dest: Path) -> int:
    """Copy a CROPPED folder's cell images and nucleus contours into `dest`; return the count."""
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for path in sorted(src.iterdir()):
        if path.is_file() and cell_file_kind(path.name):
            shutil.copyfile(path, dest / canonical_name(path.name))
            n += 1
    return n


def cropped_ready(folder: Path) -> bool:
    return all((folder / cls).is_dir() for cls in CLASSES)


def download_stage(cfg: DictConfig) -> None:
    """`<raw_dir>/cropped/<Class>/` with every cell's `.bmp` and `_nuc.dat`, and the authors' invalid list.

    Source, in order: an extracted tree in `task.data.mirror` (CROPPED folders at any depth;
    Make variable SIPAKMED_DIR), else the five archives (read in place from the mirror or
    downloaded, verified by `download.sipakmed_archives`) from which only the cropped cells are
    extracted.
    The folder is built beside its final place and renamed when complete.
    """
    data = cfg.task.data
    target = Path(data.raw_dir) / CROPPED
    if cropped_ready(target) and not cfg.overwrite:
        log.info("download: %s exists, skipped (overwrite=true to redo)", target)
    else:
        mirror = Path(data.mirror) if data.get("mirror") else None
        with atomic_dir(target) as tmp:
            if mirror is not None and has_cropped_tree(mirror):
                for cls, folder in find_cropped_dirs(mirror).items():
                    n = copy_cropped(folder, tmp / cls)
                    log.info("download: %s: %d files copied from %s", cls, n, folder)
            else:
                archives = download.sipakmed_archives(cfg)
                if not archives:
                    raise FileNotFoundError(f"SiPaKMeD mirror {mirror} holds neither the five archives "
                                            f"im_<Class>.7z nor an extracted tree with CROPPED folders")
                for archive in archives:
                    cls = archive_class(Path(archive))
                    n = extract_cropped(archive, tmp / cls)
                    log.info("download: %s: %d files extracted from %s", cls, n, archive)
            if not cropped_ready(tmp):
                raise FileNotFoundError(f"SiPaKMeD source lacks class(es) "
                                        f"{[c for c in CLASSES if not (tmp / c).is_dir()]}")
    if data.get("fetch_authors_invalid", True):
        # Report-only (preprocess compares it with the contour rule): a failure to get it must
        # not throw away the archives' extraction above.
        try:
            path = download.invalid_samples(cfg)
            log.info("download: the authors' invalid-sample list is %s", path)
        except (download.DownloadError, OSError) as err:
            log.warning("download: the authors' invalid-sample list is unavailable (%s); set "
                        "paths.invalid_samples_mirror to a local copy to compare with it", err)


# --------------------------------------------------------------------------------------------
# Reading one cell
# --------------------------------------------------------------------------------------------


def read_contour(path: str | Path) -> np.ndarray:
    """Contour points (P, 2) = x, y from a `.dat` file: one point per line, `x,y` or `x y`.

    Blank lines are skipped. Anything else that is not exactly two finite numbers is an error
    naming the file and line; so is a file without points.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"nucleus contour {path} not found")
    points = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        fields = [f for f in re.split(r"[,\s]+", text) if f]
        try:
            values = [float(f) for f in fields]
        except ValueError:
            values = []
        if len(values) != 2 or not np.isfinite(values).all():
            raise ValueError(f"{path}, line {number}: expected two numbers 'x,y', got {line!r}")
        points.append(values)
    if not points:
        raise ValueError(f"{path}: empty contour (no points)")
    return np.asarray(points, dtype=np.float64)


def read_cell_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a BMP; an unreadable file is an error naming it.

    (cv2.imread, used by the scripts, gives BGR; the order of the three channels changes neither
    the normalisation nor the intensity mean m of the study arm.)
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"cell image {path} not found") from None
    except Exception as err:  # Pillow raises several types for corrupt or truncated files
        raise ValueError(f"{path}: cannot read the image ({type(err).__name__}: {err})") from err


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except Exception as err:
        raise ValueError(f"{path}: cannot read the image ({type(err).__name__}: {err})") from err


def drop_closing_point(points: np.ndarray) -> np.ndarray:
    """The contour without a last point that repeats the first (np.allclose, as the scripts)."""
    if len(points) > 1 and np.allclose(points[0], points[-1]):
        return points[:-1]
    return points


def vertex_mean(points: np.ndarray) -> np.ndarray:
    """(2,) mean of the distinct vertices: the scripts' nucleus centre."""
    return drop_closing_point(points).mean(axis=0)


def polygon_centroid(points: np.ndarray) -> np.ndarray:
    """(2,) area centroid of the polygon (shoelace formula): the paper's wording.

    A polygon without area (fewer than 3 distinct vertices, or all on a line) has no centroid:
    NaN is returned, and the loader refuses NaN centres.
    """
    p = drop_closing_point(points)
    if len(p) < 3:
        return np.full(2, np.nan)
    # Relative to the first vertex: same centroid, far less cancellation for large coordinates.
    x, y = (p - p[0]).T
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area2 = cross.sum()
    if abs(area2) < 1e-9 * max(1.0, np.ptp(x) * np.ptp(y)):
        return np.full(2, np.nan)
    cx = ((x + xn) * cross).sum() / (3.0 * area2)
    cy = ((y + yn) * cross).sum() / (3.0 * area2)
    return p[0] + np.array([cx, cy])


def nucleus_centre(points: np.ndarray, how: str = "vertex_mean") -> np.ndarray:
    _choice(how, CENTRES, "centre")
    return vertex_mean(points) if how == "vertex_mean" else polygon_centroid(points)


def outside_image(points: np.ndarray, height: int, width: int) -> bool:
    """SPEC rule for an invalid sample: a nucleus contour point outside the image.

    The image is taken as [0, width] x [0, height] in its pixel coordinates, so points on the
    far edge of the last pixel (a 1-based annotation of the last pixel) still count as inside.
    """
    x, y = points[:, 0], points[:, 1]
    return bool((x < 0).any() or (y < 0).any() or (x > width).any() or (y > height).any())


# --------------------------------------------------------------------------------------------
# Resize, pad, normalise
# --------------------------------------------------------------------------------------------


def resized_shape(height: int, width: int, size: int = 256, rule: str = "truncate") -> tuple[int, int, float]:
    """(new_height, new_width, scale) with scale = size / longer side (points are scaled by it).

    truncate (scripts): int(side * scale). In floating point that gives size - 1 for the longer
    side of some images (e.g. 98, 103 or 196 px: 98 * (256 / 98) = 255.99999999999997), which the
    pad then makes up. round: the longer side is exactly `size`, the shorter one rounded.
    """
    _choice(rule, RESIZE_RULES, "resize_rule")
    scale = size / max(height, width)
    if rule == "truncate":
        new_h, new_w = int(height * scale), int(width * scale)
    else:
        new_h = size if height >= width else int(round(height * scale))
        new_w = size if width >= height else int(round(width * scale))
    return max(1, new_h), max(1, new_w), scale


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of OpenCV's INTER_AREA along one axis: overlap lengths, rows summing to 1."""
    s = n_in / n_out
    lo = np.arange(n_out)[:, None] * s
    hi = lo + s
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def resize_area(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """(new_h, new_w, C) float64: `image` (H, W, C) resized like cv2.resize(..., INTER_AREA) on floats."""
    ry = area_weights(image.shape[0], new_h)
    rx = area_weights(image.shape[1], new_w)
    return np.einsum("yi,ijc,xj->yxc", ry, image.astype(np.float64), rx, optimize=True)


def pad_offsets(new_h: int, new_w: int, size: int = 256) -> tuple[int, int]:
    """(top, left): the shorter side is padded equally on both sides (the odd pixel goes after)."""
    if new_h > size or new_w > size:
        raise ValueError(f"resized image {new_h}x{new_w} does not fit in {size}x{size}")
    return (size - new_h) // 2, (size - new_w) // 2


@dataclass
class FittedCell:
    """One cell in the model's frame: image, contour and the numbers to normalise it on the device."""

    image: np.ndarray    # (3, size, size) uint8, resized, zero outside the box
    points: np.ndarray   # (P, 2) contour in the size x size frame
    box: tuple[int, int, int, int]   # top, left, height, width of the image inside the frame
    scale: float
    mean: float
    std: float


def fit_cell(image: np.ndarray, points: np.ndarray, size: int = 256, rule: str = "truncate",
             norm_stats: str = "original", name: str = "image") -> FittedCell:
    """Resize so the longer side is `size` (area), pad to size x size, move the contour with it.

    The normalisation (x - mean) / std over all pixels and channels is linear and the area
    weights sum to 1, so normalising before or after the resize gives the same picture; only the
    statistics differ: `original` takes them from the image as read (SPEC order), `resized` from
    the resized one (the scripts' Standardisation.py resized the 8-bit BMPs in place, so their
    later normalisation most likely saw the resized image). They are returned, not applied, so
    that the cache stays 8-bit.
    """
    _choice(norm_stats, NORM_STATS, "norm_stats")
    h, w = image.shape[:2]
    new_h, new_w, scale = resized_shape(h, w, size, rule)
    top, left = pad_offsets(new_h, new_w, size)
    resized = resize_area(image, new_h, new_w)
    stats_of = image.astype(np.float64) if norm_stats == "original" else resized
    mean, std = float(stats_of.mean()), float(stats_of.std())
    if not std > 0:
        raise ValueError(f"{name}: constant image (std 0) cannot be normalised")
    canvas = np.zeros((3, size, size), dtype=np.uint8)
    canvas[:, top:top + new_h, left:left + new_w] = np.clip(np.rint(resized), 0, 255).astype(np.uint8).transpose(2, 0, 1)
    moved = points * scale + np.array([left, top], dtype=np.float64)
    return FittedCell(canvas, moved, (top, left, new_h, new_w), scale, mean, std)


# --------------------------------------------------------------------------------------------
# Preprocess stage
# --------------------------------------------------------------------------------------------


@dataclass
class Cell:
    sample_id: str
    cls: str
    name: str
    bmp: Path
    nuc: Path


def list_cells(cropped: Path) -> list[Cell]:
    """Every cell under `<raw_dir>/cropped/<Class>/`, sorted by sample id; a missing contour is an error."""
    if not cropped_ready(cropped):
        raise FileNotFoundError(f"{cropped} lacks class folders {[c for c in CLASSES if not (cropped / c).is_dir()]}: "
                                "run the download stage first (`make data TASK=sipakmed`)")
    cells = []
    for cls in CLASSES:
        folder = cropped / cls
        names = {p.name for p in folder.iterdir()}
        for bmp in sorted(folder.glob("*.bmp")):
            stem = bmp.stem
            nuc = folder / f"{stem}_nuc.dat"
            if nuc.name not in names:
                raise FileNotFoundError(f"{bmp}: its nucleus contour {nuc.name} is missing")
            cells.append(Cell(sample_id(cls, stem), cls, stem, bmp, nuc))
        orphans = sorted(n for n in names if CELL_NUC.fullmatch(n) and f"{n[:-8]}.bmp" not in names)
        if orphans:
            log.warning("preprocess: %s: contours without an image ignored: %s", folder, orphans[:10])
    if not cells:
        raise FileNotFoundError(f"{cropped}: no cell images (NNN_MM.bmp)")
    return sorted(cells, key=lambda c: c.sample_id)


def authors_invalid_ids(path: Path) -> set[str]:
    """Ids in the authors' invalid_samples.csv (first column; `.bmp` / `_nuc.dat` suffixes dropped)."""
    table = pd.read_csv(path, dtype=str)
    if table.shape[1] < 1:
        raise ValueError(f"{path}: no column with sample ids")
    ids = table.iloc[:, 0].dropna().str.strip()
    return set(ids.str.replace(".bmp", "", regex=False).str.replace("_nuc.dat", "", regex=False))


def compare_invalid(ours: set[str], authors: set[str], present: set[str]) -> pd.DataFrame:
    """One row per id invalid by either rule: sample_id, in_data, ours, authors."""
    ids = sorted(ours | authors)
    return pd.DataFrame({"sample_id": ids, "in_data": [i in present for i in ids],
                         "ours": [i in ours for i in ids], "authors": [i in authors for i in ids]})


def contour_rule(cells: list[Cell]) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Parse every contour and read every image size (headers only: cheap).

    Returns ({sample_id: reason} for cells whose nucleus contour leaves the image (SPEC rule),
    {sample_id: contour} for every cell).
    """
    outside, contours = {}, {}
    for cell in cells:
        points = read_contour(cell.nuc)
        h, w = image_size(cell.bmp)
        contours[cell.sample_id] = points
        if outside_image(points, h, w):
            lo, hi = points.min(axis=0), points.max(axis=0)
            outside[cell.sample_id] = (f"nucleus contour outside the {w}x{h} image "
                                       f"(x {lo[0]:.1f}..{hi[0]:.1f}, y {lo[1]:.1f}..{hi[1]:.1f})")
    return outside, contours


def read_authors_list(cfg: DictConfig, required: bool) -> set[str] | None:
    """The authors' invalid ids, or None when their list is absent and not `required`."""
    path = Path(cfg.task.data.raw_dir) / AUTHORS_INVALID_CSV
    if path.is_file():
        return authors_invalid_ids(path)
    if required:
        raise FileNotFoundError(
            f"task.data.invalid_rule={cfg.task.data.invalid_rule} needs the authors' list {path}: run the "
            "download stage with task.data.fetch_authors_invalid=true (or set paths.invalid_samples_mirror "
            "to a local copy of invalid_samples.csv)")
    log.warning("preprocess: %s not found: invalid samples not compared with the authors' list", path)
    return None


def exclusions(rule: str, outside: dict[str, str], authors: set[str] | None) -> dict[str, str]:
    """{sample_id: reason} of the cells to exclude under `rule` (task.data.invalid_rule).

    contour (SPEC): a nucleus contour point outside the image. authors: the ids of the authors'
    invalid_samples.csv (their folds then come out exactly as theirs). either: both lists.
    """
    _choice(rule, INVALID_RULES, "invalid_rule")
    listed = {i: "listed in the authors' invalid_samples.csv" for i in (authors or set())}
    if rule == "contour":
        return dict(outside)
    if rule == "authors":
        return listed
    return {i: "; ".join(r for r in (outside.get(i), listed.get(i)) if r) for i in sorted(outside.keys() | listed.keys())}


def report_invalid(outside: dict[str, str], authors: set[str] | None, all_ids: set[str], out: Path) -> None:
    """Log and write how the contour rule compares with the authors' list, when that list is there."""
    if authors is None:
        return
    ours = set(outside)
    write_csv(compare_invalid(ours, authors, all_ids), out / INVALID_COMPARE_CSV)
    log.info("preprocess: invalid samples: %d by the contour rule, %d in the authors' list (%d of them in "
             "this data), %d in both; only the contour rule %s; only the authors' %s", len(ours), len(authors),
             len(authors & all_ids), len(ours & authors), sorted(ours - authors), sorted((authors - ours) & all_ids))


def preprocess_stage(cfg: DictConfig) -> None:
    """Valid cells -> the 8-bit image cache, contours, centres, and the variant table.

    Peak memory is one cell plus the small per-cell arrays: images go straight into a memory-
    mapped `.npy`, and augmented variants are never made here (see `load_task_data`).
    """
    data = cfg.task.data
    out = Path(cfg.task.processed_dir)
    if all((out / name).exists() for name in PREPROCESS_OUTPUTS) and not cfg.overwrite:
        log.info("preprocess: outputs in %s exist, skipped (overwrite=true to redo)", out)
        return
    size = int(data.image_size)
    rule = _choice(str(data.resize_rule), RESIZE_RULES, "resize_rule")
    norm_stats = _choice(str(data.norm_stats), NORM_STATS, "norm_stats")
    centre_how = _choice(str(data.centre), CENTRES, "centre")

    invalid_rule = _choice(str(data.invalid_rule), INVALID_RULES, "invalid_rule")

    cells = list_cells(Path(data.raw_dir) / CROPPED)
    outside, contours = contour_rule(cells)
    authors = read_authors_list(cfg, required=invalid_rule != "contour")
    excluded = exclusions(invalid_rule, outside, authors)
    valid = [c for c in cells if c.sample_id not in excluded]
    log.info("preprocess: %d cells, %d excluded (invalid_rule=%s), %d kept",
             len(cells), len(excluded), invalid_rule, len(valid))
    if not valid:
        raise ValueError("preprocess: every cell was excluded; nothing to train on")
    out.mkdir(parents=True, exist_ok=True)
    present = {c.sample_id for c in cells}
    absent = sorted((authors or set()) - present)
    if absent and invalid_rule != "contour":
        log.warning("preprocess: %d id(s) of the authors' list are not in this data: %s", len(absent), absent[:10])
    gone = [i for i in sorted(excluded) if i in present]
    write_csv(pd.DataFrame({"sample_id": gone, "reason": [excluded[i] for i in gone]}), out / EXCLUDED_CSV)
    report_invalid(outside, authors, present, out)

    n = len(valid)
    rows, points, mean, std, box = [], [], np.empty(n), np.empty(n), np.empty((n, 4), np.int64)
    centres = {how: np.empty((n, 2)) for how in CENTRES}
    with atomic_path(out / IMAGES_NPY) as tmp, open(tmp, "wb") as fh:
        # A .npy written image by image (header, then C-order bytes): memory stays one image,
        # where a memory map would keep every written page resident.
        header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": (n, 3, size, size)}
        np.lib.format.write_array_header_1_0(fh, header)
        for i, cell in enumerate(valid):
            raw = read_cell_image(cell.bmp)
            fitted = fit_cell(raw, contours[cell.sample_id], size, rule, norm_stats, name=str(cell.bmp))
            fh.write(np.ascontiguousarray(fitted.image).tobytes())
            mean[i], std[i], box[i] = fitted.mean, fitted.std, fitted.box
            points.append(fitted.points)
            for how in CENTRES:
                centres[how][i] = nucleus_centre(fitted.points, how)
            if not np.isfinite(centres[centre_how][i]).all():
                raise ValueError(f"{cell.nuc}: the contour has no area, so no {centre_how} centre")
            rows.append({"sample_id": cell.sample_id, "class": cell.cls, "slide": slide_of(cell.sample_id),
                         "cell": cell.name.split("_")[1], "width": raw.shape[1], "height": raw.shape[0],
                         "centre_x": centres[centre_how][i, 0], "centre_y": centres[centre_how][i, 1],
                         "scale": fitted.scale, "top": fitted.box[0], "left": fitted.box[1]})
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in points])]).astype(np.int64)
    save_npz(out / CACHE_NPZ, sample_id=np.array([c.sample_id for c in valid]), mean=mean, std=std, box=box,
             points=np.concatenate(points), offsets=offsets,
             centre_vertex_mean=centres["vertex_mean"], centre_polygon_centroid=centres["polygon_centroid"])
    write_csv(variant_table(cfg, n), out / VARIANTS_CSV)
    write_csv(pd.DataFrame(rows), out / SAMPLES_CSV)
    log.info("preprocess: %d images cached in %s (%.0f MB); %d variants each", n, out / IMAGES_NPY,
             n * 3 * size * size / 1e6, int(data.n_variants))


def variant_table(cfg: DictConfig, n_images: int) -> pd.DataFrame:
    """The augmentation parameters of every (image, variant) from task.data (SPEC section 2)."""
    data = cfg.task.data
    return warp.variant_table(n_images, int(data.n_variants), int(data.variant_seed),
                              max_shift=float(data.max_shift), max_angle=float(data.max_angle),
                              scale=(float(data.scale_range[0]), float(data.scale_range[1])))


# --------------------------------------------------------------------------------------------
# Folds stage
# --------------------------------------------------------------------------------------------


def _require(path: Path, stage: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the {stage} stage first (`make data TASK=sipakmed`)")
    return path


def folds_stage(cfg: DictConfig) -> None:
    """folds.csv: sample_id, slide, fold_cell, fold_slide over the sorted valid ids (SPEC section 5).

    Both groupings go in one file so that switching task.data.group_by needs no rerun.
    """
    out = Path(cfg.task.processed_dir)
    target = out / FOLDS_CSV
    samples = pd.read_csv(_require(out / SAMPLES_CSV, "preprocess"), dtype=str)
    ids = sorted(samples["sample_id"])
    if target.exists() and not cfg.overwrite:
        # The folds are a function of the whole sample set: a preprocess rerun that kept other
        # cells (e.g. another invalid_rule) makes the old folds.csv wrong, not just incomplete.
        if sorted(pd.read_csv(target, dtype=str)["sample_id"]) != ids:
            raise ValueError(f"{target} was made for another sample set than {out / SAMPLES_CSV}: "
                             "rerun the folds stage with overwrite=true")
        log.info("folds: %s exists, skipped (overwrite=true to redo)", target)
        return
    data = cfg.task.data
    table = pd.DataFrame({"sample_id": ids, "slide": [slide_of(i) for i in ids]})
    for group_by in SIPAKMED_GROUPINGS:
        folds = sipakmed_folds(ids, int(data.n_folds), int(data.fold_seed), group_by)
        table[f"fold_{group_by}"] = table["sample_id"].map(folds)
    write_csv(table, target)
    log.info("folds: %d samples; per fold (by cell) %s, (by slide) %s", len(table),
             table["fold_cell"].value_counts().sort_index().tolist(),
             table["fold_slide"].value_counts().sort_index().tolist())


# --------------------------------------------------------------------------------------------
# Loader: the trainer's view of the task
# --------------------------------------------------------------------------------------------


def box_mask(box: torch.Tensor, size: int) -> torch.Tensor:
    """(n, 1, size, size) bool: True inside each image's box (top, left, height, width)."""
    r = torch.arange(size, device=box.device)
    top, left, height, width = box.unbind(dim=1)
    rows = (r[None] >= top[:, None]) & (r[None] < (top + height)[:, None])
    cols = (r[None] >= left[:, None]) & (r[None] < (left + width)[:, None])
    return (rows[:, :, None] & cols[:, None, :])[:, None]


@dataclass
class SipakmedTaskData:
    """Base images on the device; each sample `image * n_variants + variant` is warped per batch."""

    images: torch.Tensor       # (N, 3, S, S) uint8
    mean: torch.Tensor         # (N,) float32
    std: torch.Tensor          # (N,) float32
    box: torch.Tensor          # (N, 4) int64: top, left, height, width
    centres: torch.Tensor      # (N, 2) float64, in the S x S frame
    params: torch.Tensor       # (N * n_variants, 4) float64: tx, ty, angle_deg, scale
    image_fold: np.ndarray     # (N,) fold of each base image
    n_variants: int
    channels: str
    target_stats_samples: int | None = 10000
    target_names: tuple[str, ...] = ("h", "k")

    @property
    def n_channels(self) -> int:
        return 3 + N_EXTRA["2d"][self.channels]

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.params.shape[0])

    def split(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) sample indices in the scripts' order: training folds ascending, within a
        fold images by sample id, each image's variants 0..19 in a row. The order matters for
        the target statistics, taken from the first 10000 training samples."""
        folds = folds_present(self.image_fold, fold)
        train_images = np.concatenate([np.flatnonzero(self.image_fold == f) for f in folds if f != fold])
        test_images = np.flatnonzero(self.image_fold == fold)
        return self._expand(train_images), self._expand(test_images)

    def _expand(self, images: np.ndarray) -> np.ndarray:
        return (images[:, None] * self.n_variants + np.arange(self.n_variants)[None]).ravel().astype(np.int64)

    def matrices(self, idx: torch.Tensor) -> torch.Tensor:
        """(n, 2, 3) forward maps of samples `idx` (float64)."""
        return warp.affine_matrices(self.params[idx], size=self.size)

    def base_images(self, image: torch.Tensor) -> torch.Tensor:
        """(n, 3, S, S) float32 normalised base images, 0 outside each image's box."""
        x = self.images[image].float()
        x = (x - self.mean[image, None, None, None]) / self.std[image, None, None, None]
        return x * box_mask(self.box[image], self.size)

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(idx, device=self.images.device).long()
        x = warp.warp_images(self.base_images(idx // self.n_variants), self.matrices(idx))
        return torch.cat([x, extra_channels_2d(x, self.channels)], dim=1)

    def targets(self, idx: torch.Tensor) -> torch.Tensor:
        """(n, 2) float32 = (h, k): the centre moved by the variant's map. Both centre definitions
        commute with affine maps, so this equals recomputing them from the warped contour."""
        idx = torch.as_tensor(idx, device=self.images.device).long()
        centres = self.centres[idx // self.n_variants][:, None, :]
        return warp.warp_points(centres, self.matrices(idx))[:, 0].float()


def read_cache(out: Path) -> dict[str, np.ndarray]:
    with np.load(_require(out / CACHE_NPZ, "preprocess")) as npz:
        return {key: npz[key] for key in npz.files}


def contours_of(cache: dict[str, np.ndarray], i: int) -> np.ndarray:
    """Contour (P, 2) of image i in the model frame, from the ragged arrays of cache.npz."""
    return cache["points"][cache["offsets"][i]:cache["offsets"][i + 1]]


def image_folds(out: Path, ids: np.ndarray, group_by: str) -> np.ndarray:
    """The fold of every cached image, from folds.csv column fold_<group_by>."""
    _choice(group_by, SIPAKMED_GROUPINGS, "group_by")
    path = _require(out / FOLDS_CSV, "folds")
    folds = pd.read_csv(path, dtype={"sample_id": str})
    mapping = dict(zip(folds["sample_id"], folds[f"fold_{group_by}"]))
    missing = [i for i in ids if i not in mapping]
    if missing:
        raise ValueError(f"{path} lacks samples {missing[:5]}: rerun the folds stage (overwrite=true)")
    return np.array([mapping[i] for i in ids], dtype=np.int64)


def load_task_data(cfg: DictConfig, arm: DictConfig, device) -> SipakmedTaskData:
    """The cache on `device`, the variant table and the folds: what the trainer trains on."""
    data = cfg.task.data
    if arm.channels not in KINDS:
        raise ValueError(f"arm {arm.name!r}: unknown channel kind {arm.channels!r}; expected one of {KINDS}")
    out = Path(cfg.task.processed_dir)
    device = torch.device(device)
    cache = read_cache(out)
    ids = cache["sample_id"].astype(str)
    images = np.load(_require(out / IMAGES_NPY, "preprocess"), mmap_mode="r")
    params = warp.table_params(pd.read_csv(_require(out / VARIANTS_CSV, "preprocess")), str(out / VARIANTS_CSV))
    n_variants = int(data.n_variants)
    stale = (len(images) != len(ids) or images.shape[-1] != int(data.image_size)
             or len(params) != len(ids) * n_variants)
    if stale:
        raise ValueError(f"{out}: cache ({len(images)} images of {images.shape[-1]} px, {len(params)} variants) "
                         f"does not match {len(ids)} samples x task.data.n_variants={n_variants} at "
                         f"image_size={data.image_size}: rerun `make data TASK=sipakmed ARGS=overwrite=true`")
    centres = cache[f"centre_{_choice(str(data.centre), CENTRES, 'centre')}"]
    if not np.isfinite(centres).all():
        bad = ids[~np.isfinite(centres).all(axis=1)]
        raise ValueError(f"{out / CACHE_NPZ}: no {data.centre} centre for {list(bad[:5])} (contour without area)")
    stats = data.get("target_stats_samples")
    return SipakmedTaskData(
        images=torch.from_numpy(np.array(images)).to(device),  # a writable copy, read once
        mean=torch.from_numpy(cache["mean"]).float().to(device),
        std=torch.from_numpy(cache["std"]).float().to(device),
        box=torch.from_numpy(cache["box"]).long().to(device),
        centres=torch.from_numpy(centres).double().to(device),
        params=torch.from_numpy(params).to(device),
        image_fold=image_folds(out, ids, str(data.group_by)),
        n_variants=n_variants, channels=str(arm.channels),
        target_stats_samples=None if stats is None else int(stats))
