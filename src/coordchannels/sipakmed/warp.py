"""SiPaKMeD augmentation on the device (SPEC section 2, "Augmentation").

The authors wrote 20 affine variants of every cell image to disk (about 105 GB per arm). Each
variant is a pure function of (image, variant index, seed), so this module stores only the small
table of parameters and recomputes every variant per batch on the training device:

1. `variant_params` / `variant_table`: tx, ty ~ U(-20, 20) px, angle ~ U(-20, 20) degrees,
   scale ~ U(0.75, 1.25), one row per (image, variant).
2. `affine_matrices`: the forward 2x3 map in pixel coordinates, exactly OpenCV's
   `getRotationMatrix2D((w // 2, h // 2), angle, scale)` with (tx, ty) added to its last column.
3. `warp_images`: what `cv2.warpAffine(img, M, (w, h), flags=INTER_LINEAR, borderValue=0)` does:
   output pixel p takes the input bilinearly sampled at M^-1 p, zero outside the image.
4. `warp_points`: contour points and centres go through the same M.

Coordinates: x = column, y = row, origin at the centre of the top-left pixel (OpenCV's convention:
pixel centres sit at integer coordinates), y points down, so a positive angle turns the picture
counter-clockwise as seen on screen.

One known, bounded difference to OpenCV: its warpAffine quantises the bilinear weights to 1/32 of
a pixel (INTER_BITS = 5), while torch's grid_sample uses exact weights, so values can differ by at
most about 1/64 of the local intensity step between neighbouring pixels. Geometry (which input
point feeds which output pixel) is identical.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

PARAM_COLUMNS = ("tx", "ty", "angle_deg", "scale")
TABLE_COLUMNS = ("image", "variant", *PARAM_COLUMNS)


# --------------------------------------------------------------------------------------------
# Parameters


def _check_ranges(max_shift: float, max_angle: float, scale: tuple[float, float]) -> None:
    if not (max_shift >= 0 and max_angle >= 0):
        raise ValueError(f"max_shift and max_angle must be >= 0, got {max_shift}, {max_angle}")
    lo, hi = scale
    if not (0 < lo <= hi):
        raise ValueError(f"scale range must satisfy 0 < low <= high, got {scale}")


def variant_params(
    n_images: int,
    n_variants: int = 20,
    seed: int = 42,
    *,
    max_shift: float = 20.0,
    max_angle: float = 20.0,
    scale: tuple[float, float] = (0.75, 1.25),
) -> np.ndarray:
    """Augmentation parameters, float64 (n_images * n_variants, 4): columns tx, ty, angle_deg, scale.

    Row `image * n_variants + variant`. Each image has its own generator seeded with
    SeedSequence([seed, image]) and draws its variants row by row, so a row depends only on
    (seed, image, variant): adding images or variants never changes the rows already drawn.
    """
    if int(n_images) != n_images or n_images < 0:
        raise ValueError(f"n_images must be a non-negative integer, got {n_images!r}")
    if int(n_variants) != n_variants or n_variants < 1:
        raise ValueError(f"n_variants must be a positive integer, got {n_variants!r}")
    _check_ranges(max_shift, max_angle, scale)
    low = np.array([-max_shift, -max_shift, -max_angle, scale[0]])
    high = np.array([max_shift, max_shift, max_angle, scale[1]])
    out = np.empty((int(n_images) * int(n_variants), 4), dtype=np.float64)
    for image in range(int(n_images)):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), image]))
        # random() fills row-major: variant v uses draws 4v..4v+3 whatever n_variants is.
        u = rng.random((int(n_variants), 4))
        out[image * n_variants : (image + 1) * n_variants] = low + (high - low) * u
    return out


def variant_table(n_images: int, n_variants: int = 20, seed: int = 42, **ranges) -> pd.DataFrame:
    """`variant_params` as the small table stored beside the image cache.

    Columns image, variant, tx, ty, angle_deg, scale; `ranges` are variant_params' keywords.
    """
    params = variant_params(n_images, n_variants, seed, **ranges)
    table = pd.DataFrame(params, columns=list(PARAM_COLUMNS))
    table.insert(0, "variant", np.tile(np.arange(n_variants), n_images))
    table.insert(0, "image", np.repeat(np.arange(n_images), n_variants))
    return table


def table_params(table: pd.DataFrame, source: str = "variant table") -> np.ndarray:
    """The (n, 4) float64 parameters of a table written by `variant_table`, checked.

    `source` names the file in error messages. Rows must be sorted by (image, variant) so that
    row = image * n_variants + variant holds.
    """
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}; expected {list(TABLE_COLUMNS)}")
    image = table["image"].to_numpy()
    variant = table["variant"].to_numpy()
    n_variants = int(variant.max()) + 1 if len(variant) else 0
    n_images = len(table) // n_variants if n_variants else 0
    if (
        n_images * n_variants != len(table)
        or not np.array_equal(image, np.repeat(np.arange(n_images), n_variants))
        or not np.array_equal(variant, np.tile(np.arange(n_variants), n_images))
    ):
        raise ValueError(
            f"{source}: rows must be every (image, variant) pair sorted by image, "
            "then variant, with the same number of variants per image"
        )
    params = table[list(PARAM_COLUMNS)].to_numpy(dtype=np.float64)
    if not np.isfinite(params).all():
        raise ValueError(f"{source}: non-finite augmentation parameters")
    return params


# --------------------------------------------------------------------------------------------
# Matrices and points


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {size}")
    return int(h), int(w)


def affine_matrices(params: torch.Tensor, size: int | tuple[int, int] = 256) -> torch.Tensor:
    """Forward maps (n, 2, 3) in pixel coordinates for params (n, 4) = tx, ty, angle_deg, scale.

    Exactly OpenCV's getRotationMatrix2D(centre=(w // 2, h // 2), angle, scale) - with
    alpha = s cos(a), beta = s sin(a):
        [[ alpha, beta, (1 - alpha) cx - beta cy     + tx],
         [ -beta, alpha, beta cx + (1 - alpha) cy    + ty]]
    `size` is the side of a square image or (h, w). The dtype and device follow `params`
    (float64 keeps the matrices exact to rounding; they are cast down only when sampling).
    """
    params = torch.as_tensor(params)
    if params.ndim != 2 or params.shape[1] != 4:
        raise ValueError(f"params must have shape (n, 4) = tx, ty, angle_deg, scale; got {tuple(params.shape)}")
    if not params.is_floating_point():
        params = params.double()
    h, w = _hw(size)
    cx, cy = float(w // 2), float(h // 2)
    tx, ty, angle, scale = params.unbind(dim=1)
    rad = angle * (math.pi / 180.0)
    alpha, beta = scale * torch.cos(rad), scale * torch.sin(rad)
    row0 = torch.stack([alpha, beta, (1 - alpha) * cx - beta * cy + tx], dim=1)
    row1 = torch.stack([-beta, alpha, beta * cx + (1 - alpha) * cy + ty], dim=1)
    return torch.stack([row0, row1], dim=1)


def _check_matrices(matrices: torch.Tensor, n: int) -> None:
    if matrices.ndim != 3 or matrices.shape[1:] != (2, 3):
        raise ValueError(f"matrices must have shape (n, 2, 3), got {tuple(matrices.shape)}")
    if matrices.shape[0] != n:
        raise ValueError(f"{matrices.shape[0]} matrices for {n} items; need one per item")


def warp_points(points: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Apply the forward maps to points (n, ..., 2) given as (x, y); returns the same shape.

    Points are computed in the wider of the two dtypes and returned in the points' dtype.
    """
    points = torch.as_tensor(points)
    if points.ndim < 2 or points.shape[-1] != 2:
        raise ValueError(f"points must have shape (n, ..., 2), got {tuple(points.shape)}")
    _check_matrices(matrices, points.shape[0])
    dtype = torch.promote_types(points.dtype, matrices.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float64
    flat = points.reshape(points.shape[0], -1, 2).to(dtype)
    m = matrices.to(device=flat.device, dtype=dtype)
    # p' = A p + t for every point of item i: (n, P, 2) @ (n, 2, 2)^T + (n, 1, 2).
    moved = torch.baddbmm(m[:, None, :, 2], flat, m[:, :, :2].transpose(1, 2))
    out_dtype = points.dtype if points.is_floating_point() else dtype
    return moved.reshape(points.shape).to(out_dtype)


def invert_affine(matrices: torch.Tensor) -> torch.Tensor:
    """Inverse maps (n, 2, 3): [A | t]^-1 = [A^-1 | -A^-1 t], in closed form for 2x2 A.

    Singular maps raise on the CPU. On an accelerator the check is skipped, because reading the
    answer back would stall the device once per batch; a singular map there gives inf/NaN.
    """
    a, b, t0 = matrices[:, 0].unbind(dim=1)
    c, d, t1 = matrices[:, 1].unbind(dim=1)
    det = a * d - b * c
    if det.device.type == "cpu" and bool((det.abs() < 1e-12).any()):
        raise ValueError("singular affine matrix (zero scale) cannot be inverted")
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    row0 = torch.stack([ia, ib, -(ia * t0 + ib * t1)], dim=1)
    row1 = torch.stack([ic, id_, -(ic * t0 + id_ * t1)], dim=1)
    return torch.stack([row0, row1], dim=1)


# --------------------------------------------------------------------------------------------
# Images

_PIXEL_GRIDS: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def _pixel_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(h * w, 2) float32 pixel centres (x, y), row-major; cached per size and device."""
    key = (h, w, device)
    if key not in _PIXEL_GRIDS:
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=device),
            torch.arange(w, dtype=torch.float32, device=device),
            indexing="ij",
        )
        _PIXEL_GRIDS[key] = torch.stack([xs, ys], dim=-1).reshape(h * w, 2)
    return _PIXEL_GRIDS[key]


def sampling_theta(matrices: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(n, 2, 3): output *pixel* coordinates -> grid_sample's normalised *input* coordinates.

    grid_sample with align_corners=False reads normalised u = (2x + 1) / W - 1, i.e. u = -1 is
    the left edge of pixel 0 and pixel x's centre sits at integer x, as in OpenCV. Composing
    that normalisation with M^-1 in float64 keeps the whole map one exact-as-possible affine
    step; for power-of-two sizes and integer maps every coefficient is exact in float32 too, so
    such warps move pixels bit-exactly.
    """
    inv = invert_affine(matrices.double())
    norm = torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64, device=inv.device)
    offset = torch.tensor([1.0 / w - 1.0, 1.0 / h - 1.0], dtype=torch.float64, device=inv.device)
    theta = inv * norm[None, :, None]
    theta[:, :, 2] += offset
    return theta


def warp_images(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Warp images (n, C, H, W) by the forward maps (n, 2, 3), like cv2.warpAffine.

    Output pixel p = input sampled bilinearly at M^-1 p; input pixels outside the image count
    as 0 (so a sample half a pixel past the edge gets half the edge value, as in OpenCV's
    BORDER_CONSTANT). Computation is float32 (float64 inputs stay float64); integer and
    half-precision inputs come back float32. A channels-last input gives a channels-last output.
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (n, C, H, W), got {tuple(images.shape)}")
    n, _, h, w = images.shape
    _check_matrices(matrices, n)
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    channels_last = images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    theta = sampling_theta(matrices.to(images.device), h, w).to(dtype)
    base = _pixel_grid(h, w, images.device).to(dtype)
    # grid[i, p] = theta_i [x_p, y_p, 1]: one batched matmul, (n, HW, 2).
    grid = torch.baddbmm(theta[:, None, :, 2], base.expand(n, -1, -1), theta[:, :, :2].transpose(1, 2))
    out = F.grid_sample(
        images.to(dtype), grid.view(n, h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
