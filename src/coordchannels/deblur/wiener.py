"""Wiener deconvolution in torch (FFT), the first step of MultiWienerNet (Yanny et al. 2022).

For a blur y = h * x + n with a shift-invariant PSF h, the Wiener estimate is
X = conj(H) Y / (|H|^2 + NSR), NSR the noise-to-signal power ratio (0: the plain inverse filter).
The FFT treats the image as periodic; `wiener_deconvolve` pads it by reflection first so that the
image's edges do not wrap around.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def otf(psf: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(..., H, W//2+1) transfer function of (..., K, K) centred kernels for (H, W) images:
    each kernel is zero-padded and rolled so that its centre sits at pixel (0, 0)."""
    k = psf.shape[-1]
    padded = psf.new_zeros((*psf.shape[:-2], *shape))
    padded[..., :k, :k] = psf
    padded = torch.roll(padded, shifts=(-(k // 2), -(k // 2)), dims=(-2, -1))
    return torch.fft.rfft2(padded)


def blur_circular(x: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) images blurred periodically by one (K, K) kernel (the model Wiener inverts)."""
    h = otf(psf, x.shape[-2:])
    return torch.fft.irfft2(torch.fft.rfft2(x) * h, s=x.shape[-2:])


def wiener_filter(y: torch.Tensor, psfs: torch.Tensor, nsr: float | torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) periodic images deconvolved with each of (P, K, K) kernels: (B, P, H, W)."""
    h = otf(psfs, y.shape[-2:])  # (P, H, W//2+1)
    filt = torch.conj(h) / (h.abs() ** 2 + nsr)
    return torch.fft.irfft2(torch.fft.rfft2(y) * filt, s=y.shape[-2:])


def wiener_deconvolve(y: torch.Tensor, psfs: torch.Tensor, nsr: float | torch.Tensor) -> torch.Tensor:
    """As `wiener_filter`, for non-periodic images: reflect-padded by the kernel size, then cropped."""
    pad = min(psfs.shape[-1], y.shape[-1] - 1, y.shape[-2] - 1)
    padded = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    out = wiener_filter(padded, psfs, nsr)
    return out[..., pad:-pad, pad:-pad]
