"""A generated stand-in for SiPaKMeD in the exact layout of the official archives (SPEC section 2).

The real data set (5.2 GB, slow server) cannot be part of tests or a quick demo, so this module
writes small cell images and contours that the SiPaKMeD stages read exactly as they read the real
ones. What it reproduces:

- five 7-Zip archives `im_<Class>.7z` whose members sit under one top folder `im_<Class>/`: a few
  full-slide images `NNN.bmp` with `NNN_cytKK.dat` / `NNN_nucKK.dat`, and `im_<Class>/CROPPED/`
  with the isolated cells `NNN_MM.bmp`, `NNN_MM_nuc.dat`, `NNN_MM_cyt.dat`. (Copies of the data
  set found in the wild read `im_<Class>/im_<Class>/CROPPED/...` - an archive extracted into a
  folder named after it - and sometimes `im_<Class>/CROPPED/...`: the stages therefore look for
  each class's CROPPED folder at any depth.)
- `archives=False` writes the extracted tree instead, nested the common way:
  `<out>/im_<Class>/im_<Class>/CROPPED/...`.
- cells: 24-bit RGB BMP, sides of about 70-300 px in various aspect ratios, a pale cytoplasm and
  a darker elliptical nucleus drawn from the very polygon written to `_nuc.dat`;
- contours: one point `x,y` per line, comma separated, image pixel coordinates, some files ending
  with a closing point equal to the first, some with integer coordinates;
- a few cells whose nucleus contour lies partly outside the image (the invalid samples the
  stages must exclude), like the 26 listed by the authors.

`make_fake_sipakmed` returns what was written, with the expected nucleus centres, so tests can
check the pipeline against the truth. CLI: `python -m coordchannels.sipakmed.synthetic OUT --cells N`.
"""

from __future__ import annotations

import argparse
import io as _bytes_io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import py7zr
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from coordchannels.io import atomic_dir, atomic_path

log = logging.getLogger(__name__)

# Class folder names and sample-id prefixes (SPEC section 2), in prefix order.
CLASSES = ("Dyskeratotic", "Koilocytotic", "Metaplastic", "Parabasal", "Superficial-Intermediate")
# Cells per class in the real data set (4049 in all); the generator keeps these proportions.
REAL_COUNTS = (813, 825, 793, 787, 831)
MAX_CELLS = sum(REAL_COUNTS)
# A fast LZMA2 preset: the generated archives are real 7z files, just not squeezed hard.
FILTERS = [{"id": py7zr.FILTER_LZMA2, "preset": 1}]


@dataclass
class FakeCell:
    """One generated cell: its image and contours, and the truth the pipeline should recover."""

    cls: str
    name: str  # NNN_MM
    image: np.ndarray  # (H, W, 3) uint8
    nucleus: np.ndarray  # (P, 2) contour points as written (closing point included if any)
    cytoplasm: np.ndarray  # (Q, 2)
    invalid: bool
    integer_coords: bool

    @property
    def sample_id(self) -> str:
        return f"{CLASSES.index(self.cls) + 1}_{self.name}"


@dataclass
class FakeInfo:
    """What `make_fake_sipakmed` wrote: `paths` are the archives, or the class folders of the tree."""

    out_dir: Path
    paths: list[Path]
    cells: pd.DataFrame  # sample_id, class, name, width, height, centre_x, centre_y, invalid, closed
    invalid_ids: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Drawing


def class_counts(n_cells: int) -> list[int]:
    """Split n_cells over the five classes in the real data set's proportions (largest remainder)."""
    if not 1 <= n_cells <= MAX_CELLS:
        raise ValueError(f"n_cells must be between 1 and {MAX_CELLS} (the real data set's size), got {n_cells}")
    exact = np.array(REAL_COUNTS) * n_cells / MAX_CELLS
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n_cells - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def cell_names(n: int, rng: np.random.Generator) -> list[str]:
    """`NNN_MM` names: consecutive slide images holding 1-12 cells each, cells numbered from 01."""
    names, slide = [], 0
    while len(names) < n:
        slide += int(rng.integers(1, 3))  # real slide numbers have gaps
        for cell in range(1, int(rng.integers(1, 13)) + 1):
            names.append(f"{slide:03d}_{cell:02d}")
    return names[:n]


def ellipse_polygon(
    cx: float,
    cy: float,
    a: float,
    b: float,
    angle: float,
    n_points: int,
    rng: np.random.Generator,
    jitter: float = 0.04,
) -> np.ndarray:
    """(n_points, 2) vertices of a slightly irregular ellipse, like a hand-traced outline."""
    t = np.linspace(0.0, 2 * np.pi, n_points, endpoint=False) + rng.uniform(0, 2 * np.pi)
    r = 1.0 + rng.uniform(-jitter, jitter, n_points)
    x, y = a * r * np.cos(t), b * r * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def cell_size(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width): the longer side 70-300 px, the shorter 55-100 % of it (at least 70)."""
    long_side = int(rng.integers(70, 301))
    short_side = max(70, int(round(long_side * rng.uniform(0.55, 1.0))))
    return (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)


def draw_cell(h: int, w: int, nucleus: np.ndarray, cytoplasm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) uint8: pale background, tinted cytoplasm, dark nucleus, mild noise."""
    background = rng.uniform(190, 235, 3)
    cyto_colour = background - rng.uniform(30, 80, 3)
    nuc_colour = cyto_colour * rng.uniform(0.3, 0.6, 3)  # stained nucleus: darker than its cytoplasm
    canvas = Image.new("RGB", (w, h), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(canvas)
    draw.polygon([tuple(p) for p in cytoplasm], fill=tuple(int(v) for v in cyto_colour))
    draw.polygon([tuple(p) for p in nucleus], fill=tuple(int(v) for v in nuc_colour))
    noisy = np.asarray(canvas, dtype=np.float64) + rng.normal(0.0, 6.0, (h, w, 3))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def make_cell(cls: str, name: str, invalid: bool, rng: np.random.Generator) -> FakeCell:
    """One cell whose nucleus lies inside the image, or (invalid) spills over its border."""
    h, w = cell_size(rng)
    short = min(h, w)
    cx, cy = w * rng.uniform(0.3, 0.7), h * rng.uniform(0.3, 0.7)
    a = short * rng.uniform(0.08, 0.22)
    b = a * rng.uniform(0.6, 1.0)
    nucleus = ellipse_polygon(cx, cy, a, b, rng.uniform(0, np.pi), int(rng.integers(16, 49)), rng)
    cytoplasm = ellipse_polygon(
        w / 2,
        h / 2,
        w * rng.uniform(0.38, 0.48),
        h * rng.uniform(0.38, 0.48),
        rng.uniform(-0.2, 0.2),
        int(rng.integers(30, 80)),
        rng,
        jitter=0.02,
    )
    image = draw_cell(h, w, nucleus, cytoplasm, rng)
    if invalid:
        # Contour in the wrong frame, as if traced on the full slide and not shifted to the
        # crop: its centre lands on or past the right border, so part of it lies outside.
        nucleus = nucleus + np.array([w - cx + a * rng.uniform(0.0, 0.5), h * rng.uniform(-0.1, 0.1)])
    integer_coords = rng.random() < 0.2
    if integer_coords:
        nucleus, cytoplasm = np.rint(nucleus), np.rint(cytoplasm)
    if rng.random() < 0.35:  # closed outline: last point repeats the first
        nucleus = np.vstack([nucleus, nucleus[:1]])
        cytoplasm = np.vstack([cytoplasm, cytoplasm[:1]])
    return FakeCell(cls, name, image, nucleus, cytoplasm, invalid, integer_coords)


# --------------------------------------------------------------------------------------------
# Encoding


def bmp_bytes(image: np.ndarray) -> bytes:
    buf = _bytes_io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="BMP")
    return buf.getvalue()


def contour_text(points: np.ndarray, integer: bool) -> str:
    """One `x,y` line per point, as in the official `.dat` files."""
    fmt = "{:.0f},{:.0f}\n" if integer else "{:.4f},{:.4f}\n"
    return "".join(fmt.format(x, y) for x, y in points)


def vertex_mean_centre(points: np.ndarray) -> np.ndarray:
    """Mean of the vertices, a closing point equal to the first not counted twice."""
    if len(points) > 1 and np.allclose(points[0], points[-1]):
        points = points[:-1]
    return points.mean(axis=0)


def class_members(cls: str, cells: list[FakeCell], rng: np.random.Generator) -> dict[str, bytes]:
    """{member path inside `im_<cls>.7z`: bytes}: full-slide images, then the CROPPED cells."""
    top = f"im_{cls}"
    members: dict[str, bytes] = {}
    slides = sorted({c.name.split("_")[0] for c in cells})[:2]
    for slide in slides:  # a couple of small full-slide images, unused by the pipeline
        h, w = int(rng.integers(48, 97)), int(rng.integers(64, 129))
        members[f"{top}/{slide}.bmp"] = bmp_bytes(rng.integers(150, 230, (h, w, 3), dtype=np.uint8))
        outline = ellipse_polygon(w / 2, h / 2, w / 4, h / 4, 0.0, 24, rng)
        members[f"{top}/{slide}_cyt01.dat"] = contour_text(outline, False).encode()
        members[f"{top}/{slide}_nuc01.dat"] = contour_text(outline * 0.3 + [w * 0.35, h * 0.35], False).encode()
    for c in cells:
        stem = f"{top}/CROPPED/{c.name}"
        members[f"{stem}.bmp"] = bmp_bytes(c.image)
        members[f"{stem}_nuc.dat"] = contour_text(c.nucleus, c.integer_coords).encode()
        members[f"{stem}_cyt.dat"] = contour_text(c.cytoplasm, c.integer_coords).encode()
    return members


def write_archive(path: Path, members: dict[str, bytes]) -> None:
    with atomic_path(path) as tmp:
        with py7zr.SevenZipFile(tmp, "w", filters=FILTERS) as archive:
            for arcname, data in members.items():
                archive.writestr(data, arcname)


def write_tree(class_root: Path, members: dict[str, bytes]) -> None:
    """Members under `class_root` (= <out>/im_<Class>), i.e. <out>/im_<Class>/im_<Class>/CROPPED/..."""
    with atomic_dir(class_root) as tmp:
        for arcname, data in members.items():
            target = tmp / arcname
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


# --------------------------------------------------------------------------------------------
# In-memory cell images (benchmarks): no files, any number, fast


def _ellipse(xx, yy, centre, axes, angle, edge=1.5):
    """Soft elliptic masks (n, 1, H, W) in [0, 1]: 1 inside, a sigmoid edge ~`edge` px wide."""
    dx = xx - centre[:, 0, None, None]
    dy = yy - centre[:, 1, None, None]
    c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u = (dx * c + dy * s) / axes[:, 0, None, None]
    v = (-dx * s + dy * c) / axes[:, 1, None, None]
    radius = torch.sqrt(u * u + v * v)
    return torch.sigmoid((1 - radius) * axes.min(dim=1).values[:, None, None] / edge)[:, None]


def synthetic_cells(n: int, size: int, seed: int, chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """n cell-like RGB images, uint8 (n, 3, size, size), and their nucleus centres (n, 2) = (x, y)."""
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    images, centres = [], []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        r = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
        # Background: low-frequency texture, slightly tinted per image.
        low = r(m, 3, max(size // 16, 2), max(size // 16, 2))
        texture = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        img = 170 + 40 * r(m, 3, 1, 1) + 40 * (texture - 0.5)
        # Cytoplasm: a large light ellipse near the middle.
        cyto_c = size / 2 + (r(m, 2) - 0.5) * 0.2 * size
        cyto_axes = size * (0.22 + 0.12 * r(m, 2))
        cyto = _ellipse(xs, ys, cyto_c, cyto_axes, r(m) * math.pi)
        img = img * (1 - cyto) + (120 + 60 * r(m, 3, 1, 1)) * cyto
        # Nucleus: a small dark ellipse inside the cytoplasm; its centre is the target.
        nuc_c = cyto_c + (r(m, 2) - 0.5) * cyto_axes * 0.8
        nuc_axes = size * (0.04 + 0.05 * r(m, 2))
        nuc = _ellipse(xs, ys, nuc_c, nuc_axes, r(m) * math.pi)
        img = img * (1 - nuc) + (40 + 40 * r(m, 3, 1, 1)) * nuc
        img = img + 8 * torch.randn(img.shape, generator=gen)
        images.append(img.clamp(0, 255).round().to(torch.uint8))
        centres.append(nuc_c.double())
    return torch.cat(images), torch.cat(centres)


# --------------------------------------------------------------------------------------------
# Entry points


def default_invalid(n_cells: int) -> int:
    """As many invalid cells as the real data set's share (26 of 4049), at least one from 20 cells."""
    return max(int(n_cells >= 20), round(26 * n_cells / MAX_CELLS))


def make_fake_sipakmed(
    out_dir: str | Path, n_cells: int = 100, seed: int = 0, archives: bool = True, n_invalid: int | None = None
) -> FakeInfo:
    """Write a generated SiPaKMeD of `n_cells` cells (1..4049) into `out_dir`; same seed, same bytes.

    archives=True: the five `im_<Class>.7z`; False: the extracted tree `im_<Class>/im_<Class>/...`.
    `n_invalid` cells (default: the real share) get a nucleus contour partly outside the image.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    counts = class_counts(n_cells)
    n_invalid = default_invalid(n_cells) if n_invalid is None else int(n_invalid)
    if not 0 <= n_invalid <= n_cells:
        raise ValueError(f"n_invalid must be between 0 and n_cells={n_cells}, got {n_invalid}")
    invalid_flags = np.zeros(n_cells, dtype=bool)
    invalid_flags[rng.choice(n_cells, n_invalid, replace=False)] = True
    rows, paths, start = [], [], 0
    for cls, count in zip(CLASSES, counts):
        names = cell_names(count, rng)
        cells = [make_cell(cls, name, bool(invalid_flags[start + i]), rng) for i, name in enumerate(names)]
        start += count
        members = class_members(cls, cells, rng)
        if archives:
            path = out_dir / f"im_{cls}.7z"
            write_archive(path, members)
        else:
            path = out_dir / f"im_{cls}"
            write_tree(path, members)
        paths.append(path)
        for c in cells:
            centre = vertex_mean_centre(c.nucleus)
            rows.append(
                {
                    "sample_id": c.sample_id,
                    "class": cls,
                    "name": c.name,
                    "width": c.image.shape[1],
                    "height": c.image.shape[0],
                    "centre_x": centre[0],
                    "centre_y": centre[1],
                    "invalid": c.invalid,
                    "closed": bool(np.array_equal(c.nucleus[0], c.nucleus[-1])),
                }
            )
    table = pd.DataFrame(rows)
    invalid_ids = sorted(table.loc[table["invalid"], "sample_id"])
    log.info("fake SiPaKMeD: %d cells (%d invalid) written to %s", n_cells, len(invalid_ids), out_dir)
    return FakeInfo(out_dir=out_dir, paths=paths, cells=table, invalid_ids=invalid_ids)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a generated SiPaKMeD in the official archive layout.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--cells", type=int, default=100, help=f"number of cells, 1..{MAX_CELLS} (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--invalid", type=int, default=None, help="cells with a contour outside the image")
    parser.add_argument("--tree", action="store_true", help="write the extracted folders, not 7z archives")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    info = make_fake_sipakmed(args.out_dir, args.cells, args.seed, archives=not args.tree, n_invalid=args.invalid)
    print(f"{len(info.cells)} cells, {len(info.invalid_ids)} invalid ({', '.join(info.invalid_ids)}) in {info.out_dir}")


if __name__ == "__main__":
    main()
