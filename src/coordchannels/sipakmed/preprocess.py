"""The SiPaKMeD preprocess stage: parse every cell, exclude invalid samples, resize + pad to
256 x 256, nucleus centres; one compact cache (`images.npy` + `cache.npz`), `samples.csv`,
`excluded.csv`, `variants.csv`.

The cache. `images.npy` is uint8 (N, 3, 256, 256): the area-resized image rounded to 8 bits
(as the scripts' own resized BMPs were), zero outside its pad box; `cache.npz` holds each image's
mean and std (normalisation happens on the device, where the pad area is set to 0), the box,
the contours in the 256 x 256 frame and both centre definitions. 4023 images take 791 MB; float16
normalised images would take twice that. The 8-bit rounding changes a normalised pixel by at
most 0.5 / std (std = the image's intensity std in grey levels): on 994 generated cells (std
24-54) the largest error against float32 was 0.016, where float16 would give 0.002
(tests/test_sipakmed_preprocess.py checks the bound). Augmented variants are never made here:
only their parameters (`variants.csv`); the loader warps on the device per batch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from coordchannels.folds import slide_of
from coordchannels.io import atomic_path, save_npz, write_csv
from coordchannels.settings import choice
from coordchannels.sipakmed import warp
from coordchannels.sipakmed.archives import (
    AUTHORS_INVALID_CSV,
    CELL_NUC,
    CROPPED,
    cropped_ready,
    origin,
)
from coordchannels.sipakmed.cells import (
    CENTRES,
    CLASSES,
    NORM_STATS,
    RESIZE_RULES,
    drop_closing_point,
    fit_cell,
    image_size,
    nucleus_centre,
    outside_image,
    read_cell_image,
    read_contour,
    sample_id,
)
from coordchannels.stages import StageContext

log = logging.getLogger(__name__)

INVALID_RULES = ("contour", "authors", "either")
SAMPLES_CSV = "samples.csv"
EXCLUDED_CSV = "excluded.csv"
INVALID_COMPARE_CSV = "invalid_vs_authors.csv"
IMAGES_NPY = "images.npy"
CACHE_NPZ = "cache.npz"
VARIANTS_CSV = "variants.csv"


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
        raise FileNotFoundError(
            f"{cropped} lacks class folders {[c for c in CLASSES if not (cropped / c).is_dir()]}: "
            "run the download stage first (`make data TASK=sipakmed`)"
        )
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
    return pd.DataFrame(
        {
            "sample_id": ids,
            "in_data": [i in present for i in ids],
            "ours": [i in ours for i in ids],
            "authors": [i in authors for i in ids],
        }
    )


def contour_rule(cells: list[Cell]) -> tuple[dict[str, str], dict[str, str], dict[str, np.ndarray]]:
    """Parse every contour and read every image size (headers only: cheap).

    Returns ({sample_id: reason} for cells whose nucleus contour leaves the image (SPEC rule),
    {sample_id: reason} for contours without area (fewer than 3 points, or all on a line: no
    centre exists, whatever invalid_rule says), {sample_id: contour} for every cell).
    """
    outside, degenerate, contours = {}, {}, {}
    for cell in cells:
        with named_origin(cell.nuc):
            points = read_contour(cell.nuc)
        with named_origin(cell.bmp):
            h, w = image_size(cell.bmp)
        contours[cell.sample_id] = points
        if polygon_area(points) == 0:
            degenerate[cell.sample_id] = (
                f"nucleus contour without area ({len(drop_closing_point(points))} "
                "distinct point(s) or all on one line): no centre"
            )
        if outside_image(points, h, w):
            lo, hi = points.min(axis=0), points.max(axis=0)
            outside[cell.sample_id] = (
                f"nucleus contour outside the {w}x{h} image (x {lo[0]:.1f}..{hi[0]:.1f}, y {lo[1]:.1f}..{hi[1]:.1f})"
            )
    return outside, degenerate, contours


def polygon_area(points: np.ndarray) -> float:
    """Shoelace area of a contour (closing point or not).

    >>> polygon_area(np.array([[0, 0], [2, 0], [2, 1], [0, 1]], dtype=float))
    2.0
    >>> polygon_area(np.array([[0, 0], [1, 1], [2, 2]], dtype=float))
    0.0
    """
    p = drop_closing_point(points)
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


@contextlib.contextmanager
def named_origin(path: Path) -> Iterator[None]:
    """Errors about a file copied from the user's mirror (or an archive) also name that original."""
    try:
        yield
    except (ValueError, OSError) as exc:
        source = origin(path)
        if source is None:
            raise
        raise type(exc)(f"{exc} [{path.name} is a copy of {source}]") from exc


def read_authors_list(cfg: DictConfig, required: bool) -> set[str] | None:
    """The authors' invalid ids, or None when their list is absent and not `required`."""
    path = Path(cfg.task.data.raw_dir) / AUTHORS_INVALID_CSV
    if path.is_file():
        return authors_invalid_ids(path)
    if required:
        raise FileNotFoundError(
            f"task.data.invalid_rule={cfg.task.data.invalid_rule} needs the authors' list {path}: run the "
            "download stage with task.data.fetch_authors_invalid=true (or set paths.invalid_samples_mirror "
            "to a local copy of invalid_samples.csv)"
        )
    log.warning("preprocess: %s not found: invalid samples not compared with the authors' list", path)
    return None


def exclusions(rule: str, outside: dict[str, str], authors: set[str] | None) -> dict[str, str]:
    """{sample_id: reason} of the cells to exclude under `rule` (task.data.invalid_rule).

    contour (SPEC): a nucleus contour point outside the image. authors: the ids of the authors'
    invalid_samples.csv (their folds then come out exactly as theirs). either: both lists.
    """
    choice(rule, INVALID_RULES, "task.data.invalid_rule")
    listed = {i: "listed in the authors' invalid_samples.csv" for i in (authors or set())}
    if rule == "contour":
        return dict(outside)
    if rule == "authors":
        return listed
    return {
        i: "; ".join(r for r in (outside.get(i), listed.get(i)) if r) for i in sorted(outside.keys() | listed.keys())
    }


def report_invalid(outside: dict[str, str], authors: set[str] | None, all_ids: set[str], out: Path) -> None:
    """Log and write how the contour rule compares with the authors' list, when that list is there."""
    if authors is None:
        return
    ours = set(outside)
    write_csv(compare_invalid(ours, authors, all_ids), out / INVALID_COMPARE_CSV)
    log.info(
        "preprocess: invalid samples: %d by the contour rule, %d in the authors' list (%d of them in "
        "this data), %d in both; only the contour rule %s; only the authors' %s",
        len(ours),
        len(authors),
        len(authors & all_ids),
        len(ours & authors),
        sorted(ours - authors),
        sorted((authors - ours) & all_ids),
    )


def preprocess_stage(cfg: DictConfig, ctx: StageContext) -> None:
    """Valid cells -> the 8-bit image cache, contours, centres, and the variant table.

    Peak memory is one cell plus the small per-cell arrays: images go straight into a memory-
    mapped `.npy`, and augmented variants are never made here (see `load_task_data`).
    """
    data = cfg.task.data
    size = int(data.image_size)
    rule = choice(str(data.resize_rule), RESIZE_RULES, "task.data.resize_rule")
    norm_stats = choice(str(data.norm_stats), NORM_STATS, "task.data.norm_stats")
    centre_how = choice(str(data.centre), CENTRES, "task.data.centre")

    invalid_rule = choice(str(data.invalid_rule), INVALID_RULES, "task.data.invalid_rule")

    cells = list_cells(ctx.after["download"] / CROPPED)
    outside, degenerate, contours = contour_rule(cells)
    authors = read_authors_list(cfg, required=invalid_rule != "contour")
    excluded = exclusions(invalid_rule, outside, authors)
    for i, reason in degenerate.items():  # no centre: excluded whatever the rule
        excluded[i] = "; ".join(r for r in (excluded.get(i), reason) if r)
    valid = [c for c in cells if c.sample_id not in excluded]
    log.info(
        "preprocess: %d cells, %d excluded (invalid_rule=%s), %d kept",
        len(cells),
        len(excluded),
        invalid_rule,
        len(valid),
    )
    if not valid:
        raise ValueError("preprocess: every cell was excluded; nothing to train on")
    ctx.out.mkdir(parents=True, exist_ok=True)
    present = {c.sample_id for c in cells}
    absent = sorted((authors or set()) - present)
    if absent and invalid_rule != "contour":
        log.warning("preprocess: %d id(s) of the authors' list are not in this data: %s", len(absent), absent[:10])
    gone = [i for i in sorted(excluded) if i in present]
    write_csv(pd.DataFrame({"sample_id": gone, "reason": [excluded[i] for i in gone]}), ctx.out / EXCLUDED_CSV)
    report_invalid(outside, authors, present, ctx.out)

    n = len(valid)
    rows, points, mean, std, box = [], [], np.empty(n), np.empty(n), np.empty((n, 4), np.int64)
    centres = {how: np.empty((n, 2)) for how in CENTRES}
    with atomic_path(ctx.out / IMAGES_NPY) as tmp, open(tmp, "wb") as fh:
        # A .npy written image by image (header, then C-order bytes): memory stays one image,
        # where a memory map would keep every written page resident.
        header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": (n, 3, size, size)}
        np.lib.format.write_array_header_1_0(fh, header)
        for i, cell in enumerate(valid):
            with named_origin(cell.bmp):
                raw = read_cell_image(cell.bmp)
                fitted = fit_cell(raw, contours[cell.sample_id], size, rule, norm_stats, name=str(cell.bmp))
            fh.write(np.ascontiguousarray(fitted.image).tobytes())
            mean[i], std[i], box[i] = fitted.mean, fitted.std, fitted.box
            points.append(fitted.points)
            for how in CENTRES:
                centres[how][i] = nucleus_centre(fitted.points, how)
            if not np.isfinite(centres[centre_how][i]).all():
                raise ValueError(f"{cell.nuc}: the contour has no area, so no {centre_how} centre")
            rows.append(
                {
                    "sample_id": cell.sample_id,
                    "class": cell.cls,
                    "slide": slide_of(cell.sample_id),
                    "cell": cell.name.split("_")[1],
                    "width": raw.shape[1],
                    "height": raw.shape[0],
                    "centre_x": centres[centre_how][i, 0],
                    "centre_y": centres[centre_how][i, 1],
                    "scale": fitted.scale,
                    "top": fitted.box[0],
                    "left": fitted.box[1],
                }
            )
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in points])]).astype(np.int64)
    save_npz(
        ctx.out / CACHE_NPZ,
        sample_id=np.array([c.sample_id for c in valid]),
        mean=mean,
        std=std,
        box=box,
        points=np.concatenate(points),
        offsets=offsets,
        centre_vertex_mean=centres["vertex_mean"],
        centre_polygon_centroid=centres["polygon_centroid"],
    )
    write_csv(variant_table(cfg, n), ctx.out / VARIANTS_CSV)
    write_csv(pd.DataFrame(rows), ctx.out / SAMPLES_CSV)
    log.info(
        "preprocess: %d images cached in %s (%.0f MB); %d variants each",
        n,
        ctx.out / IMAGES_NPY,
        n * 3 * size * size / 1e6,
        int(data.n_variants),
    )


def variant_table(cfg: DictConfig, n_images: int) -> pd.DataFrame:
    """The augmentation parameters of every (image, variant) from task.data (SPEC section 2)."""
    data = cfg.task.data
    return warp.variant_table(
        n_images,
        int(data.n_variants),
        int(data.variant_seed),
        max_shift=float(data.max_shift),
        max_angle=float(data.max_angle),
        scale=(float(data.scale_range[0]), float(data.scale_range[1])),
    )
