"""The soft-argmax (heatmap) head: exact on a one-hot heatmap, differentiable, in range, and a
model option of both networks that leaves the paper's dense head untouched."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from coordchannels.components import group_files
from coordchannels.heads import SoftArgmaxHead, cell_centres, expected_position
from coordchannels.models import LakshyaNet, NimeshaNet
from coordchannels.sipakmed.synthetic import synthetic_cells

# A one-hot heatmap: logits this far apart give a softmax of exactly 1.0 and 0.0 in float64.
PEAK = 1e4


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("n, scale, i", [(31, 20.0, 0), (31, 20.0, 17), (31, 20.0, 30), (15, 20.0, 7)])
def test_one_hot_heatmap_gives_its_cell_centre_1d(n, scale, i):
    logits = torch.full((1, 1, n), -PEAK, dtype=torch.float64)
    logits[0, 0, i] = 0.0
    out = expected_position(logits, scale)
    assert out.shape == (1, 1)
    assert out.item() == pytest.approx((i + 0.5) * scale / n, abs=1e-12)


@pytest.mark.parametrize("row, col", [(0, 0), (3, 29), (31, 5), (31, 31)])
def test_one_hot_heatmap_gives_column_then_row_2d(row, col):
    logits = torch.full((2, 1, 32, 32), -PEAK, dtype=torch.float64)
    logits[:, 0, row, col] = 0.0
    out = expected_position(logits, 255.0)
    assert out.shape == (2, 2)
    expected = torch.tensor([(col + 0.5) * 255 / 32, (row + 0.5) * 255 / 32], dtype=torch.float64)
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-9)


def test_uniform_heatmap_gives_the_middle_of_the_range():
    assert expected_position(torch.zeros(1, 1, 31), 20.0).item() == pytest.approx(10.0, abs=1e-5)
    torch.testing.assert_close(expected_position(torch.zeros(1, 1, 8, 8), 255.0), torch.tensor([[127.5, 127.5]]))


def test_cell_centres_cover_the_target_range():
    c = cell_centres(4, 20.0, torch.zeros(1))
    torch.testing.assert_close(c, torch.tensor([2.5, 7.5, 12.5, 17.5]))


@pytest.mark.parametrize("shape", [(2, 1, 9), (2, 1, 5, 6)])
def test_soft_argmax_is_differentiable(shape):
    torch.manual_seed(0)
    logits = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: expected_position(z, 20.0), (logits,))


def test_head_gradients_reach_the_features_and_the_1x1_convolution():
    torch.manual_seed(0)
    head = SoftArgmaxHead(8, 1, 20.0)
    feats = torch.randn(3, 8, 11, requires_grad=True)
    head(feats).sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert head.heatmap.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dims, shape, n", [(1, (64, 8, 31), 31), (2, (16, 8, 32, 32), 32)])
def test_outputs_stay_inside_the_target_range_for_extreme_logits(dims, shape, n):
    torch.manual_seed(1)
    scale = 20.0 if dims == 1 else 255.0
    head = SoftArgmaxHead(8, dims, scale)
    out = head(torch.randn(*shape) * 1e3)  # near one-hot heatmaps anywhere
    lo, hi = 0.5 * scale / n, (n - 0.5) * scale / n
    assert out.min() >= lo - 1e-3 and out.max() <= hi + 1e-3
    assert 0 < out.min() and out.max() < scale


def test_nimeshanet_softargmax_head_shape_and_parameter_count():
    torch.manual_seed(0)
    dense, soft = NimeshaNet(2), NimeshaNet(2, head="softargmax")
    # The features are the same layers; the heads: learnable pooling 128 x 31 + Linear 128 + 1,
    # against a 1x1 convolution 128 + 1.
    features = n_params(dense.features)
    assert n_params(dense) == features + 128 * 31 + 129
    assert n_params(soft) == features + 129
    out = soft(torch.randn(4, 2, 500))
    assert out.shape == (4, 1) and torch.all((out > 0) & (out < 20))
    assert NimeshaNet(2, reduced=True, head="softargmax")(torch.randn(2, 2, 500)).shape == (2, 1)


def test_lakshyanet_head_parameter_counts_at_full_size():
    dense, soft = LakshyaNet(5), LakshyaNet(5, head="softargmax")
    # depthwise pooling 128 x 32 x 32 + 128, Linear 128 x 2 + 2; against a 1x1 convolution 128 + 1
    assert n_params(dense) - n_params(dense.features) == 131_458
    assert n_params(soft) - n_params(soft.features) == 129
    assert n_params(soft.features) == n_params(dense.features)


def test_dense_head_default_keeps_the_papers_network():
    torch.manual_seed(3)
    default = NimeshaNet(3)
    torch.manual_seed(3)
    dense = NimeshaNet(3, head="dense")
    assert default.state_dict().keys() == dense.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), dense.state_dict().values()))
    assert {"pool.weight", "fc.weight", "fc.bias"} <= set(default.state_dict())


def test_lakshyanet_softargmax_head_on_a_generated_sipakmed_batch():
    """Generated SiPaKMeD-like cells at the task's size (RGB, 256 x 256) through LakshyaNet."""
    images, _ = synthetic_cells(2, 256, seed=0)
    images = images.float() / 255
    torch.manual_seed(0)
    net = LakshyaNet(3, size=256, head="softargmax")
    assert n_params(net) == n_params(net.features) + 129
    out = net(images)
    assert out.shape == (2, 2) and torch.all((out > 0) & (out < 255))
    out.sum().backward()
    assert net.softargmax.heatmap.weight.grad.abs().sum() > 0


def test_unknown_head_is_a_clear_error():
    with pytest.raises(ValueError, match="head='heatmap'.*dense, softargmax"):
        NimeshaNet(2, head="heatmap")
    with pytest.raises(ValueError, match="LakshyaNet"):
        LakshyaNet(3, size=32, head="")


@pytest.mark.parametrize(
    "model, in_channels, shape", [("nimeshanet", 2, (2, 2, 500)), ("lakshyanet", 3, (2, 3, 32, 32))]
)
def test_softargmax_arm_selects_the_head(model, in_channels, shape):
    arm, net_cfg = group_files("arm")["softargmax"], group_files("model")[model].net
    assert arm.channels == "none"
    kwargs = {"size": 32} if model == "lakshyanet" else {}
    net = instantiate(net_cfg, in_channels=in_channels, **kwargs, **arm.model_kwargs)
    assert net.head == "softargmax" and not hasattr(net, "fc")
    assert net(torch.randn(*shape)).shape[0] == 2


def test_nimeshanet_with_the_softargmax_head_learns_where_a_bump_is():
    """60 Adam steps on signals with one bump at a random time: the expected position follows it."""
    torch.manual_seed(0)
    n, length = 128, 128
    where = torch.rand(n) * 18 + 1
    t = torch.linspace(0, 20, length)
    x = torch.exp(-((t[None, :] - where[:, None]) ** 2) / 0.5)[:, None, :].repeat(1, 2, 1)
    x = x + 0.05 * torch.randn(n, 2, length)
    net = NimeshaNet(2, length=length, head="softargmax")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(60):
        idx = torch.randint(0, n, (16,))
        loss = ((net(x[idx])[:, 0] - where[idx]) / 5).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(x)[:, 0]
    r2 = 1 - ((pred - where) ** 2).sum() / ((where - where.mean()) ** 2).sum()
    assert r2 > 0.9
