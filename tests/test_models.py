"""NimeshaNet and LakshyaNet match SPEC section 4: shapes, parameter counts, output range."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from coordchannels.models import LakshyaNet, NimeshaNet, PairAverage1D


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_blocks(in_channels: int, kernel_positions: int) -> int:
    """Parameters of the four conv blocks: conv weights + biases, batch-norm weight + bias."""
    total, c_in = 0, in_channels
    for c_out in (16, 32, 64, 128):
        total += c_in * c_out * kernel_positions + c_out + 2 * c_out
        c_in = c_out
    return total


# Worked out by hand from the layer list, 1-D with 3 input channels:
#   blocks 192 + 1632 + 6336 + 24960 = 33120; weighted average 128 x 31 = 3968; Linear 128 + 1.
NIMESHA_PARAMS = 33120 + 128 * 31 + 129
NIMESHA_REDUCED_PARAMS = 33120 + 128 * 15 + 129
# 2-D with 5 input channels: blocks 768 + 4704 + 18624 + 74112 = 98208; depthwise pooling
# 128 x k x k weights + 128 biases; Linear 128 x 2 + 2.
LAKSHYA_PARAMS = 98208 + 128 * 32 * 32 + 128 + 258
LAKSHYA_REDUCED_PARAMS = 98208 + 128 * 16 * 16 + 128 + 258


def test_hand_counts_agree_with_block_formula():
    assert conv_blocks(3, 3) == 33120 and conv_blocks(5, 9) == 98208
    assert (NIMESHA_PARAMS, NIMESHA_REDUCED_PARAMS) == (37217, 35169)
    assert (LAKSHYA_PARAMS, LAKSHYA_REDUCED_PARAMS) == (229666, 131362)


@pytest.mark.parametrize("reduced, pooled, params", [(False, 31, NIMESHA_PARAMS), (True, 15, NIMESHA_REDUCED_PARAMS)])
def test_nimeshanet_shape_and_parameters(reduced, pooled, params):
    torch.manual_seed(0)
    net = NimeshaNet(3, reduced=reduced)
    assert net.pooled_length == pooled
    assert tuple(net.pool.weight.shape) == (128, pooled)
    assert n_params(net) == params
    out = net(torch.randn(4, 3, 500))
    assert out.shape == (4, 1)


def test_nimeshanet_pooling_weights_start_standard_normal():
    torch.manual_seed(0)
    w = NimeshaNet(3).pool.weight.detach()
    assert abs(w.mean().item()) < 0.1 and abs(w.std().item() - 1.0) < 0.1


@pytest.mark.parametrize("reduced, pooled, params", [(False, 32, LAKSHYA_PARAMS), (True, 16, LAKSHYA_REDUCED_PARAMS)])
def test_lakshyanet_full_size_shape_and_parameters(reduced, pooled, params):
    torch.manual_seed(0)
    net = LakshyaNet(5, reduced=reduced)
    assert net.pooled_size == pooled
    assert tuple(net.pool.weight.shape) == (128, 1, pooled, pooled)
    assert n_params(net) == params
    out = net(torch.randn(2, 5, 256, 256))
    assert out.shape == (2, 2)


def test_reduced_lakshyanet_has_75_percent_fewer_pooling_weights():
    full, reduced = LakshyaNet(5).pool.weight.numel(), LakshyaNet(5, reduced=True).pool.weight.numel()
    assert reduced == full // 4 == 32768


def test_lakshyanet_is_size_agnostic():
    net = LakshyaNet(5, size=32)
    assert net.pooled_size == 4
    assert n_params(net) == 98208 + 128 * 4 * 4 + 128 + 258
    assert net(torch.randn(3, 5, 32, 32)).shape == (3, 2)
    assert LakshyaNet(5, size=32, reduced=True)(torch.randn(3, 5, 32, 32)).shape == (3, 2)


def test_in_channels_follow_the_arm():
    assert NimeshaNet(2).features[0].in_channels == 2
    assert LakshyaNet(3, size=32).features[0].in_channels == 3
    assert n_params(NimeshaNet(2)) == NIMESHA_PARAMS - 16 * 3  # one input channel fewer


@pytest.mark.parametrize(
    "make, shape, scale",
    [
        (lambda s: NimeshaNet(3, out_scale=s), (64, 3, 500), 20.0),
        (lambda s: LakshyaNet(5, out_scale=s, size=32), (64, 5, 32, 32), 255.0),
    ],
)
def test_outputs_lie_inside_the_scaled_sigmoid_range(make, shape, scale):
    torch.manual_seed(1)
    net = make(scale).eval()
    with torch.no_grad():
        out = net(torch.randn(shape) * 5)
    assert torch.all(out > 0) and torch.all(out < scale)
    # Not collapsed onto one value: the network's output depends on its input.
    assert out.std() > 0


def test_too_small_inputs_are_a_clear_error():
    with pytest.raises(ValueError, match="too small"):
        NimeshaNet(3, length=8)
    with pytest.raises(ValueError, match="too small"):
        LakshyaNet(5, size=8, reduced=True)


@pytest.mark.parametrize("length", [500, 125, 31])
def test_pair_average_is_exactly_avgpool1d(length):
    torch.manual_seed(2)
    x = torch.randn(4, 8, length, requires_grad=True)
    ref_x = x.detach().clone().requires_grad_(True)
    ours, ref = PairAverage1D()(x), nn.AvgPool1d(2)(ref_x)
    assert torch.equal(ours, ref)
    grad = torch.randn_like(ref)
    ours.backward(grad)
    ref.backward(grad)
    assert torch.equal(x.grad, ref_x.grad)


def test_coordgate_follows_each_convolution():
    coordgate = pytest.importorskip("coordchannels.coordgate")
    net1 = NimeshaNet(3, coordgate=True)
    gates1 = [m for m in net1.features if isinstance(m, coordgate.CoordGate)]
    # Gates sit right after each convolution, at that block's length 500, 250, 125, 62.
    convs = [i for i, m in enumerate(net1.features) if isinstance(m, nn.Conv1d)]
    assert all(isinstance(net1.features[i + 1], coordgate.CoordGate) for i in convs)
    assert [g.size for g in gates1] == [(500,), (250,), (125,), (62,)]
    expected = NIMESHA_PARAMS + sum(
        n_params(coordgate.CoordGate(c, n)) for c, n in zip((16, 32, 64, 128), (500, 250, 125, 62))
    )
    assert n_params(net1) == expected
    assert net1(torch.randn(2, 3, 500)).shape == (2, 1)

    net2 = LakshyaNet(5, size=32, coordgate=True, reduced=True)
    gates2 = [m for m in net2.features if isinstance(m, coordgate.CoordGate)]
    assert [g.size for g in gates2] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    out = net2(torch.randn(2, 5, 32, 32))
    assert out.shape == (2, 2) and torch.all((out > 0) & (out < 255))


@pytest.mark.parametrize("task, model", [("ecg", "nimeshanet"), ("sipakmed", "lakshyanet")])
def test_coordgate_arm_options_reach_every_gate(task, model):
    """conf/arm/coordgate.yaml's coordgate_options set every gate's encoder (here 3 layers, 8 units)."""
    from coordchannels.coordgate import CoordGate
    from coordchannels.train import build_model
    from tests.conftest import compose_config

    cfg = compose_config(
        [
            f"task={task}",
            "arms.coordgate.model_kwargs.coordgate_options.n_layers=3",
            "arms.coordgate.model_kwargs.coordgate_options.hidden=8",
        ]
    )
    net = build_model(cfg.task.models[model], cfg.arms.coordgate, n_channels=3)
    gates = [m for m in net.modules() if isinstance(m, CoordGate)]
    assert len(gates) == 4
    for gate in gates:
        convs = [m for m in gate.encoder if isinstance(m, (nn.Conv1d, nn.Conv2d))]
        assert len(convs) == 3 and convs[0].out_channels == 8
