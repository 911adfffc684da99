"""The lens: a spatially varying point-spread function, in focus at the centre of the field and
increasingly defocused towards its edge, and how it blurs an image.

The PSF of a point at position q is a normalised Gaussian whose width grows with the distance r of q
from the centre (r = 1 at the corners): sigma(r) = sigma_centre + (sigma_edge - sigma_centre) r^power.
With `anisotropy` a > 0 it is stretched along the radial direction (sigma_radial = (1 + a) sigma),
as defocus with field curvature and astigmatism does. Blurring is *exact*: each source pixel spreads
its light with its own PSF (a scatter), `blur_direct`. `PSFBasis` approximates the field by a few
basis kernels weighted per pixel (the PSFs' principal components), cheaper on large images; its error
against the exact blur is measured and recorded by the data stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from coordchannels.coordgate import coordinate_map


@dataclass(frozen=True)
class Lens:
    """task.data.psf: widths in pixels at the centre and at the corners, how fast it grows, the
    radial stretch, and how far (in widths) the kernel reaches."""

    sigma_centre: float = 0.0
    sigma_edge: float = 4.0
    power: float = 1.5
    anisotropy: float = 0.0
    truncate: float = 3.0

    @classmethod
    def from_config(cls, node) -> Lens:
        values = {k: float(v) for k, v in dict(node).items() if k in cls.__dataclass_fields__}
        lens = cls(**values)
        if lens.sigma_centre < 0 or lens.sigma_edge < lens.sigma_centre:
            raise ValueError(
                f"task.data.psf: need 0 <= sigma_centre <= sigma_edge, got {lens.sigma_centre}, {lens.sigma_edge}"
            )
        if lens.power <= 0 or lens.anisotropy < 0 or lens.truncate <= 0:
            raise ValueError("task.data.psf: power and truncate must be > 0, anisotropy >= 0")
        return lens

    @property
    def kernel_size(self) -> int:
        """Odd size that holds the widest PSF to `truncate` widths."""
        widest = self.sigma_edge * (1.0 + self.anisotropy)
        return 2 * max(1, math.ceil(self.truncate * widest)) + 1

    def sigma(self, r: np.ndarray) -> np.ndarray:
        return self.sigma_centre + (self.sigma_edge - self.sigma_centre) * np.clip(r, 0, 1) ** self.power


def psf_field(size: int, lens: Lens) -> np.ndarray:
    """(size, size, K, K) float64: the PSF of every pixel; kernel[i, j] is the light sent to the
    displacement (i - K//2, j - K//2). Each PSF sums to 1."""
    coords = coordinate_map((size, size)).double().numpy()  # (2, H, W): row, column in [-1, 1]
    ry, rx = coords
    r = np.sqrt(ry**2 + rx**2) / math.sqrt(2.0)
    sigma = lens.sigma(r)
    k = lens.kernel_size
    d = np.arange(k) - k // 2
    dy, dx = np.meshgrid(d, d, indexing="ij")  # (K, K)
    norm = np.sqrt(ry**2 + rx**2)
    at_centre = norm < 1e-12
    # Radial unit vector; at the exact centre (odd sizes) any direction will do, the PSF is round there.
    uy = np.where(at_centre, 1.0, ry / np.where(at_centre, 1.0, norm))
    ux = np.where(at_centre, 0.0, rx / np.where(at_centre, 1.0, norm))
    radial = dy[None, None] * uy[..., None, None] + dx[None, None] * ux[..., None, None]
    tangential = -dy[None, None] * ux[..., None, None] + dx[None, None] * uy[..., None, None]
    # A floor on the width keeps an in-focus PSF a (numerically exact) delta without dividing by 0.
    s_t = np.maximum(sigma, 1e-3)[..., None, None]
    s_r = s_t * (1.0 + lens.anisotropy)
    kernels = np.exp(-0.5 * ((radial / s_r) ** 2 + (tangential / s_t) ** 2))
    return kernels / kernels.sum(axis=(-2, -1), keepdims=True)


def sigma_map(size: int, lens: Lens) -> np.ndarray:
    """(size, size) tangential PSF width in pixels at every pixel."""
    ry, rx = coordinate_map((size, size)).double().numpy()
    return lens.sigma(np.sqrt(ry**2 + rx**2) / math.sqrt(2.0))


def blur_direct(images: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Exact spatially varying blur of (N, H, W) images: every pixel q spreads x(q) with its own PSF
    field[q] (a scatter, so light is conserved except what leaves the frame)."""
    n, h, w = images.shape
    k = field.shape[-1]
    weights = field.reshape(h * w, k * k).T.to(images.dtype)  # (K*K, H*W)
    patches = images.reshape(n, 1, h * w) * weights  # (N, K*K, H*W)
    return F.fold(patches, (h, w), k, padding=k // 2).reshape(n, h, w)


@dataclass(frozen=True)
class PSFBasis:
    """field[q] ~ sum_k coefficients[q, k] kernels[k]: the field's leading principal components."""

    kernels: np.ndarray  # (R, K, K)
    coefficients: np.ndarray  # (H, W, R)

    @classmethod
    def fit(cls, field: np.ndarray, tolerance: float) -> PSFBasis:
        """The smallest rank whose relative Frobenius error on the field is at most `tolerance`."""
        h, w, k, _ = field.shape
        flat = field.reshape(h * w, k * k)
        u, s, vt = np.linalg.svd(flat, full_matrices=False)
        energy = np.sqrt(np.maximum(0.0, 1.0 - np.cumsum(s**2) / np.sum(s**2)))  # error of rank i+1
        rank = int(np.argmax(energy <= tolerance)) + 1 if np.any(energy <= tolerance) else len(s)
        return cls(vt[:rank].reshape(rank, k, k), (u[:, :rank] * s[:rank]).reshape(h, w, rank))

    @property
    def rank(self) -> int:
        return len(self.kernels)

    def field(self) -> np.ndarray:
        return np.einsum("hwr,rij->hwij", self.coefficients, self.kernels)

    def blur(self, images: torch.Tensor) -> torch.Tensor:
        """sum_k scatter(x * c_k, B_k): a scatter with one fixed kernel is a transposed convolution."""
        k = self.kernels.shape[-1]
        coeff = torch.as_tensor(self.coefficients, dtype=images.dtype).permute(2, 0, 1)  # (R, H, W)
        weighted = images[:, None] * coeff[None]  # (N, R, H, W)
        kernels = torch.as_tensor(self.kernels, dtype=images.dtype)[:, None]  # (R, 1, K, K)
        return F.conv_transpose2d(weighted, kernels, padding=k // 2, groups=1).squeeze(1)


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """||approx - exact|| / ||exact|| over the whole set."""
    return float(torch.linalg.vector_norm(approx - exact) / torch.linalg.vector_norm(exact))


def psf_at(field: np.ndarray, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """The PSFs 'measured' at a positions x positions grid of the field (cell centres): (P, K, K)
    kernels and their (row, column) pixels, as MultiWienerNet takes them."""
    h, w = field.shape[:2]
    rows = ((np.arange(positions) + 0.5) * h / positions).astype(int)
    cols = ((np.arange(positions) + 0.5) * w / positions).astype(int)
    where = np.array([(r, c) for r in rows for c in cols])
    return field[where[:, 0], where[:, 1]], where
