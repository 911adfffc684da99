"""The extra input channels that define an arm (SPEC section 3), for 1-D signals and 2-D images.

A channel kind names what is appended after the signal channels:
- coords: raw coordinates (CoordConv control). 1-D t = linspace(0, 20, L) seconds; 2-D x = column
  index, y = row index, 0..W-1 / 0..H-1, not normalised.
- intensity_weighted_coords (study): the coordinates multiplied by the mean signal intensity.
- coords_norm: coordinates in [-1, 1] as in Liu et al. 2018.
- intensity: the mean intensity alone.
- none: nothing appended.
Both functions work on torch tensors so that 2-D channels are built per batch on the device.
"""

from __future__ import annotations

import torch

KINDS = ("coords", "intensity_weighted_coords", "coords_norm", "intensity", "none")
N_EXTRA = {
    "1d": {"coords": 1, "intensity_weighted_coords": 1, "coords_norm": 1, "intensity": 1, "none": 0},
    "2d": {"coords": 2, "intensity_weighted_coords": 2, "coords_norm": 2, "intensity": 1, "none": 0},
}


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown channel kind {kind!r}; expected one of {KINDS}")


def extra_channels_1d(signal: torch.Tensor, kind: str, duration_s: float = 20.0) -> torch.Tensor:
    """Extra channels for signals of shape (N, leads, L): returns (N, k, L), k = N_EXTRA['1d'][kind]."""
    _check(kind)
    n, _, length = signal.shape
    if kind == "none":
        return signal.new_zeros((n, 0, length))
    intensity = signal.mean(dim=1, keepdim=True)
    if kind == "intensity":
        return intensity
    lo, hi = (-1.0, 1.0) if kind == "coords_norm" else (0.0, duration_s)
    t = torch.linspace(lo, hi, length, dtype=signal.dtype, device=signal.device).expand(n, 1, length)
    return t * intensity if kind == "intensity_weighted_coords" else t.clone()


def extra_channels_2d(image: torch.Tensor, kind: str) -> torch.Tensor:
    """Extra channels for images of shape (N, C, H, W): returns (N, k, H, W), k = N_EXTRA['2d'][kind]."""
    _check(kind)
    n, _, h, w = image.shape
    if kind == "none":
        return image.new_zeros((n, 0, h, w))
    intensity = image.mean(dim=1, keepdim=True)
    if kind == "intensity":
        return intensity
    if kind == "coords_norm":
        ys = torch.linspace(-1.0, 1.0, h, dtype=image.dtype, device=image.device)
        xs = torch.linspace(-1.0, 1.0, w, dtype=image.dtype, device=image.device)
    else:
        ys = torch.arange(h, dtype=image.dtype, device=image.device)
        xs = torch.arange(w, dtype=image.dtype, device=image.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([grid_x, grid_y]).expand(n, 2, h, w)
    return coords * intensity if kind == "intensity_weighted_coords" else coords.clone()
