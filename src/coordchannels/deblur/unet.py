"""The networks of the deblurring experiment: U-Net(d), with a CoordGate at every down- and
up-sampling point or with coordinates concatenated (CoordConv), and MultiWienerNet.

U-Net(d) has d down-sampling steps (d + 1 levels). Each level is two 3x3 convolutions with ReLU;
channels double per level from `base_channels` (capped at `max_channels` when set); down-sampling is
2x2 max pooling, up-sampling a 2x2 transposed convolution followed by concatenation with the skip
connection; a 1x1 convolution gives the image. With `residual` the network predicts the correction
to its input image (output = input + U-Net), which trains much faster on a CPU budget.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from coordchannels.coordgate import CoordGate, coordinate_map
from coordchannels.deblur.wiener import wiener_deconvolve


def check_size(size: int, depth: int) -> None:
    """U-Net(depth) halves the image `depth` times: the side must be a positive multiple of 2^depth."""
    if depth < 1:
        raise ValueError(f"U-Net depth must be >= 1, got {depth}")
    if size < 1 or size % 2**depth:
        raise ValueError(
            f"U-Net({depth}) needs an image side that is a multiple of 2^{depth} = {2**depth} "
            f"(task.data.patch_size), got {size}"
        )


def widths(depth: int, base_channels: int, max_channels: int | None) -> list[int]:
    """Channels of levels 0..depth."""
    return [min(base_channels * 2**level, max_channels or base_channels * 2**level) for level in range(depth + 1)]


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU()
    )


class UNet(nn.Module):
    """U-Net(depth) for (B, in_channels, size, size) images; see the module docstring.

    coordgate: a CoordGate on the features at every down-sampling point (before each pooling) and
    every up-sampling point (after each transposed convolution), gate_hidden x gate_layers encoder.
    coordconv: two coordinate channels (row, column in [-1, 1]) concatenated to the input.
    """

    def __init__(
        self,
        in_channels: int = 1,
        depth: int = 1,
        size: int = 64,
        base_channels: int = 8,
        max_channels: int | None = None,
        residual: bool = True,
        coordgate: bool = False,
        coordconv: bool = False,
        gate_hidden: int = 32,
        gate_layers: int = 2,
    ):
        super().__init__()
        check_size(size, depth)
        self.depth, self.size, self.residual = depth, size, residual
        w = widths(depth, base_channels, max_channels)
        first = in_channels + (2 if coordconv else 0)
        self.encoders = nn.ModuleList(double_conv(first if lv == 0 else w[lv - 1], w[lv]) for lv in range(depth + 1))
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(w[lv + 1], w[lv], 2, stride=2) for lv in range(depth))
        self.decoders = nn.ModuleList(double_conv(2 * w[lv], w[lv]) for lv in range(depth))
        self.head = nn.Conv2d(w[0], 1, 1)
        if coordconv:
            self.register_buffer("coords", coordinate_map((size, size)), persistent=False)
        else:
            self.coords = None
        sides = [size // 2**lv for lv in range(depth)]
        gate = lambda lv: CoordGate(w[lv], (sides[lv], sides[lv]), hidden=gate_hidden, n_layers=gate_layers)  # noqa: E731
        self.down_gates = nn.ModuleList(gate(lv) for lv in range(depth)) if coordgate else None
        self.up_gates = nn.ModuleList(gate(lv) for lv in range(depth)) if coordgate else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            raise ValueError(f"this U-Net was built for {self.size}x{self.size} images, got {tuple(x.shape[-2:])}")
        h = x if self.coords is None else torch.cat([x, self.coords.expand(len(x), -1, -1, -1)], dim=1)
        skips = []
        for lv in range(self.depth):
            h = self.encoders[lv](h)
            if self.down_gates is not None:
                h = self.down_gates[lv](h)
            skips.append(h)
            h = self.pool(h)
        h = self.encoders[self.depth](h)
        for lv in reversed(range(self.depth)):
            h = self.ups[lv](h)
            if self.up_gates is not None:
                h = self.up_gates[lv](h)
            h = self.decoders[lv](torch.cat([h, skips[lv]], dim=1))
        out = self.head(h)
        return out + x.mean(dim=1, keepdim=True) if self.residual else out


def unet_parameter_count(in_channels: int, depth: int, base_channels: int, max_channels: int | None) -> int:
    """Parameters of a plain U-Net(depth), in closed form (an independent check of the network)."""
    w = widths(depth, base_channels, max_channels)
    conv = lambda a, b, k: a * b * k * k + b  # noqa: E731
    total = 0
    for lv in range(depth + 1):
        total += conv(in_channels if lv == 0 else w[lv - 1], w[lv], 3) + conv(w[lv], w[lv], 3)
    for lv in range(depth):
        total += conv(w[lv + 1], w[lv], 2) + conv(2 * w[lv], w[lv], 3) + conv(w[lv], w[lv], 3)
    return total + conv(w[0], 1, 1)


class MultiWienerNet(nn.Module):
    """Wiener deconvolution with the PSFs measured at a grid of field positions, then a U-Net that
    refines the deconvolved maps into one image (with `residual`: their mean plus the correction).

    psf_file: the data stage's per-pixel PSF field (.npy, (H, W, K, K)); positions: the grid side
    (positions^2 PSFs); nsr: the Wiener noise-to-signal ratio, learned (as a log) when learn_nsr.
    """

    def __init__(
        self,
        in_channels: int = 1,
        psf_file: str = "",
        positions: int = 3,
        nsr: float = 1e-2,
        learn_nsr: bool = True,
        residual: bool = True,
        **unet_kwargs,
    ):
        super().__init__()
        from coordchannels.deblur.psf import psf_at  # the field's sampling belongs to the lens

        field = np.load(psf_file, mmap_mode="r")
        psfs, self.where = psf_at(np.asarray(field), int(positions))
        self.register_buffer("psfs", torch.as_tensor(psfs, dtype=torch.float32))
        log_nsr = torch.tensor(float(np.log(nsr)))
        self.log_nsr = nn.Parameter(log_nsr) if learn_nsr else None
        if not learn_nsr:
            self.register_buffer("fixed_log_nsr", log_nsr)
        self.residual = residual
        self.unet = UNet(in_channels=in_channels * len(psfs), residual=False, **unet_kwargs)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        log_nsr = self.log_nsr if self.log_nsr is not None else self.fixed_log_nsr
        maps = wiener_deconvolve(y, self.psfs, log_nsr.exp())
        out = self.unet(maps)
        return out + maps.mean(dim=1, keepdim=True) if self.residual else out


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
