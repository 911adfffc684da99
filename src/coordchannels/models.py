"""The two localisation networks of the paper (SPEC section 4), optionally with CoordGate.

NimeshaNet (1-D) and LakshyaNet (2-D) share one design: four convolution blocks
(conv -> batch norm -> ReLU, with average pooling), a *learnable* pooling that collapses the
remaining positions into one vector of 128 features, a linear layer and a sigmoid scaled to the
target range (20 s for the ECG window, 255 px for the image). The learnable pooling is what lets
the network read position: every remaining position has its own weights.

The "reduced parameter" variants pool once more after block 4, so the learnable pooling has a
quarter (2-D) or about half (1-D) of the weights.

`coordgate=True` puts a CoordGate (SPEC section 8) right after each block's convolution, so each
block's output channels are multiplied by a learned function of position; `coordgate_options`
(hidden, n_layers, pointwise) go to every CoordGate (conf/arm/coordgate.yaml sets them).

`head="softargmax"` replaces the learnable pooling, linear layer and scaled sigmoid (`"dense"`, the
paper's and the default) with a soft-argmax heatmap head (coordchannels.heads,
conf/arm/softargmax.yaml). The dense head's layers are built in the same order as before, so its
initial weights, and every number of the paper's networks, do not change.
"""

from __future__ import annotations

import torch
from torch import nn

from coordchannels.heads import SoftArgmaxHead, check_head

# Output channels of the four convolution blocks.
WIDTHS = (16, 32, 64, 128)


class WeightedAverage1D(nn.Module):
    """Learnable per-channel, per-position weights summed over time: (B, C, L) -> (B, C).

    The weights start standard normal and are not normalised, as in the authors' scripts.
    """

    def __init__(self, channels: int, length: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).sum(dim=-1)


class PairAverage1D(nn.Module):
    """Average of neighbouring pairs along time, (B, C, L) -> (B, C, L // 2).

    Gives exactly the numbers of nn.AvgPool1d(2) (a trailing odd sample is dropped the same way),
    but as two strided views it runs about ten times faster on a CPU, where AvgPool1d goes through
    the generic 2-D pooling kernel; pooling was a third of NimeshaNet's CPU training time.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        end = x.shape[-1] // 2 * 2
        return (x[..., 0:end:2] + x[..., 1:end:2]) * 0.5


def _coordgate(n_channels: int, size: int | tuple[int, int], options: dict | None) -> nn.Module:
    """A CoordGate for feature maps of `size`; imported here so the models work without it."""
    from coordchannels.coordgate import CoordGate

    return CoordGate(n_channels, size, **(options or {}))


def _check_size(name: str, size: int, n_halvings: int) -> None:
    if size // 2**n_halvings < 1:
        raise ValueError(f"{name}: input size {size} is too small for {n_halvings} poolings by 2")


class NimeshaNet(nn.Module):
    """1-D CNN for a scalar position in (0, out_scale): (B, in_channels, length) -> (B, 1)."""

    def __init__(
        self,
        in_channels: int,
        reduced: bool = False,
        out_scale: float = 20.0,
        length: int = 500,
        coordgate: bool = False,
        coordgate_options: dict | None = None,
        head: str = "dense",
    ):
        super().__init__()
        check_head(head, "NimeshaNet")
        n_pools = 5 if reduced else 4
        _check_size("NimeshaNet", length, n_pools)
        layers: list[nn.Module] = []
        size = length
        for c_in, c_out in zip((in_channels, *WIDTHS[:-1]), WIDTHS):
            layers.append(nn.Conv1d(c_in, c_out, kernel_size=3, padding=1))
            if coordgate:
                layers.append(_coordgate(c_out, size, coordgate_options))
            layers += [nn.BatchNorm1d(c_out), nn.ReLU(), PairAverage1D()]
            size //= 2
        if reduced:
            layers.append(PairAverage1D())
            size //= 2
        self.features = nn.Sequential(*layers)
        self.pooled_length = size
        self.head = head
        self.out_scale = float(out_scale)
        if head == "softargmax":
            self.softargmax = SoftArgmaxHead(WIDTHS[-1], 1, out_scale)
        else:
            self.pool = WeightedAverage1D(WIDTHS[-1], size)
            self.fc = nn.Linear(WIDTHS[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head == "softargmax":
            return self.softargmax(self.features(x))
        return torch.sigmoid(self.fc(self.pool(self.features(x)))) * self.out_scale


class LakshyaNet(nn.Module):
    """2-D CNN for an (h, k) = (x, y) position in (0, out_scale)^2: (B, C, size, size) -> (B, 2).

    `size` is the side of the square input (256 for SiPaKMeD); the depthwise pooling kernel covers
    the whole final feature map, size // 8 (size // 16 when reduced).
    """

    def __init__(
        self,
        in_channels: int,
        reduced: bool = False,
        out_scale: float = 255.0,
        size: int = 256,
        coordgate: bool = False,
        coordgate_options: dict | None = None,
        head: str = "dense",
    ):
        super().__init__()
        check_head(head, "LakshyaNet")
        n_pools = 4 if reduced else 3
        _check_size("LakshyaNet", size, n_pools)
        layers: list[nn.Module] = []
        side = size
        for i, (c_in, c_out) in enumerate(zip((in_channels, *WIDTHS[:-1]), WIDTHS)):
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
            if coordgate:
                layers.append(_coordgate(c_out, (side, side), coordgate_options))
            layers += [nn.BatchNorm2d(c_out), nn.ReLU()]
            if i < 3 or reduced:  # blocks 1-3 pool; the reduced net pools after block 4 too
                layers.append(nn.AvgPool2d(2))
                side //= 2
        self.features = nn.Sequential(*layers)
        self.pooled_size = side
        self.head = head
        self.out_scale = float(out_scale)
        if head == "softargmax":
            self.softargmax = SoftArgmaxHead(WIDTHS[-1], 2, out_scale)
            return
        # Depthwise convolution over the whole map: one learned weight per channel and position.
        self.pool = nn.Conv2d(WIDTHS[-1], WIDTHS[-1], kernel_size=side, groups=WIDTHS[-1])
        self.fc = nn.Linear(WIDTHS[-1], 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head == "softargmax":
            return self.softargmax(self.features(x))
        pooled = self.pool(self.features(x)).flatten(1)
        return torch.sigmoid(self.fc(pooled)) * self.out_scale
