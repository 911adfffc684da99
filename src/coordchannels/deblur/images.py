"""Sharp images for the deblurring task: a generator of fluorescence-microscopy-like images, or a
folder of the user's own micrographs cut into patches.

The generator draws cells as textured, soft-edged ellipses of varying size, brightness and density
on a dark background, with brighter nuclei, then applies Poisson-Gaussian noise as a camera does.
Image i depends only on (seed, i), so the set is the same whatever its size or the order in which
images are made. These are GENERATED images, not micrographs; see docs/deblur.md for the public
sets the paper used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy.ndimage import gaussian_filter

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class CellSettings:
    """How the generator draws one image (task.data.generator)."""

    cells: tuple[int, int] = (3, 12)  # cells per image, inclusive range
    radius: tuple[float, float] = (0.06, 0.16)  # cell semi-axis, as a fraction of the image side
    brightness: tuple[float, float] = (0.3, 1.0)
    background: float = 0.03
    texture_sigma: float = 1.2  # pixels: the grain of the cytoplasm's texture
    photons: float = 1000.0  # photons at brightness 1 (Poisson noise); <= 0 turns it off
    read_noise: float = 0.005  # Gaussian read noise (std, image units)

    @classmethod
    def from_config(cls, node) -> CellSettings:
        values = dict(node)
        for key in ("cells", "radius", "brightness"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image `index`: a pure function of (seed, index)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def cell_image(size: int, rng: np.random.Generator, s: CellSettings = CellSettings()) -> np.ndarray:
    """One (size, size) float32 image in [0, 1]: cells with nuclei on a dark background, noisy."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img = np.full((size, size), s.background)
    texture = gaussian_filter(rng.standard_normal((size, size)), s.texture_sigma)
    texture /= texture.std() + 1e-12
    for _ in range(int(rng.integers(s.cells[0], s.cells[1] + 1))):
        cy, cx = rng.uniform(0, size, 2)
        a, b = rng.uniform(*s.radius, 2) * size
        theta = rng.uniform(0, np.pi)
        bright = rng.uniform(*s.brightness)
        img += bright * _ellipse(yy, xx, cy, cx, a, b, theta) * (0.75 + 0.25 * texture)
        # A nucleus: smaller, brighter, off-centre within the cell.
        ny, nx = cy + rng.uniform(-0.3, 0.3) * a, cx + rng.uniform(-0.3, 0.3) * b
        img += 0.6 * bright * _ellipse(yy, xx, ny, nx, 0.4 * a, 0.4 * b, theta)
    img = np.clip(img / max(1.0, img.max()), 0.0, 1.0)
    if s.photons > 0:
        img = rng.poisson(img * s.photons) / s.photons
    img = img + s.read_noise * rng.standard_normal(img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _ellipse(yy, xx, cy, cx, a, b, theta, edge: float = 1.5) -> np.ndarray:
    """A soft-edged filled ellipse (1 inside, 0 outside, a logistic edge `edge` pixels wide)."""
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
    distance = (np.sqrt(u**2 + v**2) - 1.0) * min(a, b)  # roughly in pixels from the outline
    return 1.0 / (1.0 + np.exp(np.clip(distance / (edge / 4), -50, 50)))


def generate(n: int, size: int, seed: int, settings: CellSettings = CellSettings()) -> np.ndarray:
    """(n, size, size) float32 generated images; image i is the same for any n."""
    return np.stack([cell_image(size, image_rng(seed, i), settings) for i in range(n)])


# --------------------------------------------------------------------------------------------
# A folder of the user's own images
# --------------------------------------------------------------------------------------------
def image_files(folder: Path) -> list[Path]:
    """The image files of `folder` (recursively), sorted; a clear error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"task.data.folder={folder}: no such folder (set DEBLUR_IMAGES_DIR=<folder of images>)")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"task.data.folder={folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it")
    return files


def read_grey(path: Path) -> np.ndarray:
    """A 2-D float64 image scaled to [0, 1] by its percentiles (0.1 and 99.9, as microscopy images
    are usually normalised); RGB is converted to grey. A clear error names a bad file."""
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from exc
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D grey or RGB image, got an array of shape {arr.shape}")
    arr = arr.astype(np.float64)
    low, high = np.percentile(arr, [0.1, 99.9])
    if not high > low:
        raise ValueError(f"{path}: the image is constant (nothing to deblur)")
    return np.clip((arr - low) / (high - low), 0.0, 1.0)


def folder_patches(folder: Path, n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(patches (n, size, size) float32, source file index per patch): non-overlapping patches of
    every image, a seeded choice of n of them. Files are read in sorted order, so the result is a
    function of the folder's content and the seed."""
    patches, sources = [], []
    for k, path in enumerate(image_files(folder)):
        img = read_grey(path)
        rows, cols = img.shape[0] // size, img.shape[1] // size
        for r in range(rows):
            for c in range(cols):
                patches.append(img[r * size : (r + 1) * size, c * size : (c + 1) * size])
                sources.append(k)
    if len(patches) < n:
        raise ValueError(
            f"task.data.folder={folder}: {len(patches)} patches of {size}x{size} px in its images, "
            f"task.data.n_images={n} asked for; add images or lower n_images or patch_size"
        )
    chosen = np.sort(np.random.default_rng(seed).permutation(len(patches))[:n])
    return np.stack([patches[i] for i in chosen]).astype(np.float32), np.asarray(sources)[chosen]
