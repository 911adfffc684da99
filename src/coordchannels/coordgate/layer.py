"""CoordGate (Howard, Norreys & Döpp 2024; SPEC section 8): a coordinate-driven multiplicative gate.

A convolution applies the same kernel everywhere. CoordGate makes the *amplitude* of each output
channel depend on position: a fixed map of coordinates in [-1, 1] goes through a small pixel-wise
MLP (1x1 convolutions) to a gate of shape (C, *size), and the C channels of a convolution are
multiplied by it. With C kernels spanning a basis, "conv -> gate -> sum of channels" can express any
locally connected layer, i.e. any spatially-varying convolution of that kernel size.

The gate does not depend on the input, so at inference it is a constant: in eval mode it is
computed once and cached, and the layer costs one element-wise product (plus the optional 1x1
convolution). The cache is dropped whenever it could be stale: on train()/eval(), on a device or
dtype move, and when any encoder parameter is modified in place (tracked by tensor versions).
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

__all__ = ["CoordGate", "GatedConv1d", "GatedConv2d", "coordinate_map"]


def _normalise_size(size: int | tuple[int, ...]) -> tuple[int, ...]:
    """(L,) for 1-D, (H, W) for 2-D; anything else is a clear error."""
    dims = (size,) if isinstance(size, numbers.Integral) else tuple(size)
    if not 1 <= len(dims) <= 2 or not all(isinstance(d, numbers.Integral) and d > 0 for d in dims):
        raise ValueError(f"CoordGate size must be a positive int (1-D) or a pair of them (2-D), got {size!r}")
    return tuple(int(d) for d in dims)


def coordinate_map(size: tuple[int, ...]) -> torch.Tensor:
    """Coordinates in [-1, 1]: (1, L) for 1-D; (2, H, W) for 2-D (channel 0 = row, 1 = column)."""
    if len(size) == 1:
        return torch.linspace(-1.0, 1.0, size[0]).unsqueeze(0)
    rows, cols = torch.meshgrid(torch.linspace(-1.0, 1.0, size[0]), torch.linspace(-1.0, 1.0, size[1]), indexing="ij")
    return torch.stack([rows, cols])


def _encoder(dims: int, n_in: int, n_out: int, hidden: int, n_layers: int) -> nn.Sequential:
    """Pixel-wise MLP as 1x1 convolutions: n_layers layers, ReLU between them, linear output.

    The output is left linear (no sigmoid) so that the gate can be negative or above one, which a
    general locally connected layer needs.
    """
    if n_layers < 1 or hidden < 1:
        raise ValueError(f"CoordGate needs n_layers >= 1 and hidden >= 1, got {n_layers=}, {hidden=}")
    conv = nn.Conv1d if dims == 1 else nn.Conv2d
    widths = [n_in] + [hidden] * (n_layers - 1) + [n_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if i > 0:
            layers.append(nn.ReLU())
        layers.append(conv(a, b, kernel_size=1))
    return nn.Sequential(*layers)


class CoordGate(nn.Module):
    """Multiply (B, n_channels, *size) features by a learned, position-dependent gate.

    n_channels: channels of the features to gate (the gate has one map per channel).
    size: L (1-D) or (H, W) (2-D): the only input size accepted, since the gate is per position.
    hidden, n_layers: width and depth of the coordinate encoder (1x1 convolutions).
    pointwise: follow the gate with a 1x1 convolution n_channels -> n_channels.
    """

    def __init__(
        self, n_channels: int, size: int | tuple[int, int], hidden: int = 32, n_layers: int = 2, pointwise: bool = False
    ):
        super().__init__()
        if n_channels < 1:
            raise ValueError(f"CoordGate needs n_channels >= 1, got {n_channels}")
        self.n_channels = n_channels
        self.size = _normalise_size(size)
        dims = len(self.size)
        # Not persistent: the coordinates are a pure function of `size`, not learned state, and the
        # encoder weights do not depend on the size, so checkpoints stay size-agnostic.
        self.register_buffer("coords", coordinate_map(self.size), persistent=False)
        self.encoder = _encoder(dims, dims, n_channels, hidden, n_layers)
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.pointwise = conv(n_channels, n_channels, kernel_size=1) if pointwise else None
        self._cached_gate: torch.Tensor | None = None
        self._cache_key: tuple | None = None

    # --- the gate -------------------------------------------------------------------------------
    def compute_gate(self) -> torch.Tensor:
        """Run the encoder on the coordinate map: (n_channels, *size), differentiable."""
        return self.encoder(self.coords.unsqueeze(0)).squeeze(0)

    def _state_key(self) -> tuple:
        """Changes whenever a tensor the gate depends on is replaced or modified in place."""
        tensors = [self.coords, *self.encoder.parameters()]
        return tuple((t.device, t.dtype, t.data_ptr(), t._version) for t in tensors)

    def gate(self) -> torch.Tensor:
        """The gate; in eval mode a cached constant (no gradient), recomputed only when stale."""
        if self.training:
            return self.compute_gate()
        key = self._state_key()
        if self._cached_gate is None or self._cache_key != key:
            # A plain tensor even when first called under torch.inference_mode, so that the
            # cached gate can later be used in ordinary (autograd-recording) code too.
            with torch.inference_mode(False), torch.no_grad():
                self._cached_gate = self.compute_gate()
            self._cache_key = key
        return self._cached_gate

    def invalidate_gate(self) -> None:
        """Drop the cached gate (only needed after changing weights through `.data`)."""
        self._cached_gate = None
        self._cache_key = None

    # --- cache invalidation on mode changes and moves ------------------------------------------
    def train(self, mode: bool = True) -> CoordGate:
        self.invalidate_gate()
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        # .to(), .cuda(), .double(), ... all go through _apply: the old cache is on the old device.
        self.invalidate_gate()
        return super()._apply(fn, recurse)

    # --- forward --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.n_channels, *self.size)
        if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"CoordGate was built for inputs of shape (batch, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}"
            )
        out = x * self.gate()
        return self.pointwise(out) if self.pointwise is not None else out

    def extra_repr(self) -> str:
        return f"n_channels={self.n_channels}, size={self.size}"


class _GatedConv(nn.Module):
    """A 'same'-padded convolution followed by a CoordGate on its output channels."""

    conv_cls: type[nn.Module]

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        size,
        hidden: int = 32,
        n_layers: int = 2,
        pointwise: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"GatedConv needs an odd kernel size so that 'same' padding is symmetric, got {kernel}")
        # Zero padding of kernel // 2 keeps the spatial size, which the gate requires.
        self.conv = self.conv_cls(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias)
        self.gate = CoordGate(out_ch, size, hidden=hidden, n_layers=n_layers, pointwise=pointwise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.conv(x))


class GatedConv1d(_GatedConv):
    """Conv1d(in_ch, out_ch, kernel, padding='same') -> CoordGate(out_ch, size)."""

    conv_cls = nn.Conv1d

    def __init__(self, in_ch: int, out_ch: int, kernel: int, size: int, **kwargs):
        if len(_normalise_size(size)) != 1:
            raise ValueError(f"GatedConv1d needs a 1-D size (an int), got {size!r}")
        super().__init__(in_ch, out_ch, kernel, size, **kwargs)


class GatedConv2d(_GatedConv):
    """Conv2d(in_ch, out_ch, kernel, padding='same') -> CoordGate(out_ch, (H, W))."""

    conv_cls = nn.Conv2d

    def __init__(self, in_ch: int, out_ch: int, kernel: int, size: tuple[int, int], **kwargs):
        if len(_normalise_size(size)) != 2:
            raise ValueError(f"GatedConv2d needs a 2-D size (H, W), got {size!r}")
        super().__init__(in_ch, out_ch, kernel, size, **kwargs)
