"""The soft-argmax (heatmap) head: the field's usual alternative to regressing a coordinate.

Localisation networks usually predict a heatmap and take its expectation instead of mapping
features to a number through a dense layer: the differentiable spatial-to-numerical transform
(DSNT) of Nibali et al. 2018, "soft-argmax". Here, at the last feature resolution:

    logits = conv_1x1(features)              one channel, (B, 1, L) or (B, 1, H, W)
    p      = softmax(logits) over positions  (2-D: over the whole map)
    output = sum_i p_i * centre_i            centre of cell i, scaled to the target range

with cell centres at (i + 0.5) / n * out_scale (DSNT's pixel-centre convention, scaled to the
range (0, out_scale) of the paper's scaled sigmoid). The expectation is a convex combination of
the centres, so the output always lies in [centre_0, centre_{n-1}], inside the target range, and a
one-hot heatmap gives exactly its cell's centre. Unlike the paper's head (learnable pooling, one
weight per channel and position, then a linear layer) it has no weight tied to a position: where
the network looks is where it answers. DSNT's optional heatmap regulariser is not used, so the
loss is the trainer's, the same as for every other arm.
"""

from __future__ import annotations

import torch
from torch import nn

HEADS = ("dense", "softargmax")


def check_head(head: str, model: str) -> None:
    if head not in HEADS:
        raise ValueError(f"{model}: head={head!r}; expected one of {', '.join(HEADS)} (an arm's model_kwargs.head)")


def cell_centres(n: int, out_scale: float, like: torch.Tensor) -> torch.Tensor:
    """Centres of n equal cells covering (0, out_scale), on the device and dtype of `like`."""
    return (torch.arange(n, device=like.device, dtype=like.dtype) + 0.5) * (out_scale / n)


def expected_position(logits: torch.Tensor, out_scale: float) -> torch.Tensor:
    """Soft-argmax of heatmap logits (B, 1, L) -> (B, 1), or (B, 1, H, W) -> (B, 2) as (x, y) =
    (column, row), the order of the 2-D targets; positions are cell centres scaled to out_scale."""
    if logits.dim() == 3:
        p = torch.softmax(logits.flatten(1), dim=1)
        return (p * cell_centres(logits.shape[-1], out_scale, p)).sum(dim=1, keepdim=True)
    if logits.dim() == 4:
        b, _, h, w = logits.shape
        p = torch.softmax(logits.flatten(1), dim=1).view(b, h, w)
        x = (p.sum(dim=1) * cell_centres(w, out_scale, p)).sum(dim=1)  # marginal over columns
        y = (p.sum(dim=2) * cell_centres(h, out_scale, p)).sum(dim=1)  # marginal over rows
        return torch.stack([x, y], dim=1)
    raise ValueError(f"soft-argmax needs (B, 1, L) or (B, 1, H, W) logits; got shape {tuple(logits.shape)}")


class SoftArgmaxHead(nn.Module):
    """1x1 convolution to one heatmap channel, softmax over positions, expected position."""

    def __init__(self, channels: int, dims: int, out_scale: float):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
        self.heatmap = conv(channels, 1, kernel_size=1)
        self.out_scale = float(out_scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return expected_position(self.heatmap(features), self.out_scale)
