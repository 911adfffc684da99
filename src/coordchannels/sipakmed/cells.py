"""One SiPaKMeD cell, pure functions (SPEC section 2): contour and image reading, nucleus centres,
the scripts' INTER_AREA resize and the pad to 256 x 256.

Resizing. OpenCV's INTER_AREA, which the scripts use, is exact pixel-area averaging: output pixel
i covers the input interval [i s, (i + 1) s) with s = input / output size, and every input pixel
counts with the length it overlaps that interval. That holds for downscaling (cv::resizeArea) and
for upscaling too, where OpenCV's area mode uses the same overlap weights (a pixel takes one
input pixel, or a blend of two where it straddles their border). `area_weights` builds exactly
these weights (checked against cv2.resize on float images: they agree within 4e-5 for sizes
33-512, down and up; on uint8 input OpenCV rounds in fixed point, within one grey level). Neither
torch's `interpolate(mode="area")` (adaptive average pooling over whole input pixels) nor
Pillow's BOX filter (whole pixels whose centres fall in the window) matches it except for
integer ratios; both are off by up to half the intensity range on a noise image otherwise.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from coordchannels.settings import choice

log = logging.getLogger(__name__)

# Class name -> sample-id prefix (SPEC section 2). Archive `im_<Class>.7z`, folder `im_<Class>`.
CLASS_PREFIX = {"Dyskeratotic": 1, "Koilocytotic": 2, "Metaplastic": 3, "Parabasal": 4, "Superficial-Intermediate": 5}
CLASSES = tuple(CLASS_PREFIX)
CENTRES = ("vertex_mean", "polygon_centroid")
RESIZE_RULES = ("truncate", "round")
NORM_STATS = ("original", "resized")


def sample_id(cls: str, name: str) -> str:
    """`Koilocytotic`, `095_10` -> `2_095_10`."""
    return f"{CLASS_PREFIX[cls]}_{name}"


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
    choice(how, CENTRES, "task.data.centre")
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

    >>> resized_shape(300, 200)[:2], resized_shape(300, 200, rule="round")[:2]
    ((256, 170), (256, 171))
    >>> resized_shape(98, 40)[:2], resized_shape(98, 40, rule="round")[:2]
    ((255, 104), (256, 104))
    """
    choice(rule, RESIZE_RULES, "task.data.resize_rule")
    scale = size / max(height, width)
    if rule == "truncate":
        new_h, new_w = int(height * scale), int(width * scale)
    else:
        new_h = size if height >= width else int(round(height * scale))
        new_w = size if width >= height else int(round(width * scale))
    return max(1, new_h), max(1, new_w), scale


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of OpenCV's INTER_AREA along one axis: overlap lengths, rows summing to 1.

    Three pixels into two: each output pixel covers 1.5 input pixels.

    >>> area_weights(3, 2).round(3).tolist()
    [[0.667, 0.333, 0.0], [0.0, 0.333, 0.667]]
    """
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

    image: np.ndarray  # (3, size, size) uint8, resized, zero outside the box
    points: np.ndarray  # (P, 2) contour in the size x size frame
    box: tuple[int, int, int, int]  # top, left, height, width of the image inside the frame
    scale: float
    mean: float
    std: float


def fit_cell(
    image: np.ndarray,
    points: np.ndarray,
    size: int = 256,
    rule: str = "truncate",
    norm_stats: str = "original",
    name: str = "image",
) -> FittedCell:
    """Resize so the longer side is `size` (area), pad to size x size, move the contour with it.

    The normalisation (x - mean) / std over all pixels and channels is linear and the area
    weights sum to 1, so normalising before or after the resize gives the same picture; only the
    statistics differ: `original` takes them from the image as read (SPEC order), `resized` from
    the resized one (the scripts' Standardisation.py resized the 8-bit BMPs in place, so their
    later normalisation most likely saw the resized image). They are returned, not applied, so
    that the cache stays 8-bit.
    """
    choice(norm_stats, NORM_STATS, "task.data.norm_stats")
    h, w = image.shape[:2]
    new_h, new_w, scale = resized_shape(h, w, size, rule)
    top, left = pad_offsets(new_h, new_w, size)
    resized = resize_area(image, new_h, new_w)
    stats_of = image.astype(np.float64) if norm_stats == "original" else resized
    mean, std = float(stats_of.mean()), float(stats_of.std())
    if not std > 0:
        raise ValueError(f"{name}: constant image (std 0) cannot be normalised")
    canvas = np.zeros((3, size, size), dtype=np.uint8)
    canvas[:, top : top + new_h, left : left + new_w] = (
        np.clip(np.rint(resized), 0, 255).astype(np.uint8).transpose(2, 0, 1)
    )
    moved = points * scale + np.array([left, top], dtype=np.float64)
    return FittedCell(canvas, moved, (top, left, new_h, new_w), scale, mean, std)
