"""CoordGate module: shapes, identity gate, eval caching, moves, and locally connected layers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from coordchannels.coordgate import CoordGate, GatedConv1d, GatedConv2d, coordinate_map


def make_gate_one(gate: CoordGate) -> None:
    """Last encoder layer: zero weights, bias one, so the gate is exactly 1 everywhere."""
    last = gate.encoder[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(1.0)


def count_encoder_calls(gate: CoordGate) -> list[int]:
    calls = [0]
    gate.encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# --- shapes and coordinates ---------------------------------------------------------------------
def test_coordinate_maps_span_minus_one_to_one():
    one_d = coordinate_map((5,))
    assert one_d.shape == (1, 5)
    assert torch.allclose(one_d[0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    two_d = coordinate_map((3, 4))
    assert two_d.shape == (2, 3, 4)
    assert torch.allclose(two_d[0, :, 0], torch.tensor([-1.0, 0.0, 1.0]))  # rows vary down
    assert torch.allclose(two_d[1, 0], torch.linspace(-1, 1, 4))  # columns across


@pytest.mark.parametrize("size, shape", [(12, (3, 4, 12)), ((6, 7), (3, 4, 6, 7))])
def test_gate_and_output_shapes(size, shape):
    gate = CoordGate(4, size)
    x = torch.randn(shape)
    assert gate.compute_gate().shape == shape[1:]
    assert gate(x).shape == shape
    assert CoordGate(4, size, pointwise=True)(x).shape == shape


@pytest.mark.parametrize("n_layers, n_convs", [(1, 1), (2, 2), (4, 4)])
def test_encoder_depth_follows_n_layers(n_layers, n_convs):
    gate = CoordGate(3, 10, hidden=8, n_layers=n_layers)
    convs = [m for m in gate.encoder if isinstance(m, nn.Conv1d)]
    assert len(convs) == n_convs
    assert convs[-1].out_channels == 3
    assert sum(isinstance(m, nn.ReLU) for m in gate.encoder) == n_convs - 1


def test_wrong_input_size_is_a_clear_error():
    gate = CoordGate(4, 12)
    with pytest.raises(ValueError, match=r"built for inputs of shape \(batch, 4, 12\).*\(2, 4, 13\)"):
        gate(torch.randn(2, 4, 13))
    with pytest.raises(ValueError, match="built for inputs"):
        gate(torch.randn(2, 3, 12))
    with pytest.raises(ValueError, match="size must be"):
        CoordGate(4, (2, 3, 4))
    with pytest.raises(ValueError, match="odd kernel"):
        GatedConv1d(1, 4, 4, 12)


def test_gated_conv_shapes():
    assert GatedConv1d(2, 5, 3, 20)(torch.randn(3, 2, 20)).shape == (3, 5, 20)
    assert GatedConv2d(3, 4, 5, (9, 11), pointwise=True)(torch.randn(2, 3, 9, 11)).shape == (2, 4, 9, 11)
    with pytest.raises(ValueError, match="2-D size"):
        GatedConv2d(3, 4, 3, 9)


# --- an all-ones gate is the plain convolution ------------------------------------------------
@pytest.mark.parametrize("cls, size, x_shape", [(GatedConv1d, 16, (2, 3, 16)), (GatedConv2d, (8, 9), (2, 3, 8, 9))])
def test_gate_of_ones_reduces_to_the_plain_convolution(cls, size, x_shape):
    torch.manual_seed(0)
    layer = cls(3, 5, 3, size)
    make_gate_one(layer.gate)
    x = torch.randn(x_shape)
    assert torch.equal(layer.gate.compute_gate(), torch.ones(5, *layer.gate.size))
    for mode in (True, False):
        layer.train(mode)
        torch.testing.assert_close(layer(x), layer.conv(x), rtol=0, atol=0)


# --- eval caching ------------------------------------------------------------------------------
def test_eval_mode_computes_the_gate_once():
    gate = CoordGate(4, 12)
    calls = count_encoder_calls(gate)
    x = torch.randn(2, 4, 12)
    gate.eval()
    with torch.inference_mode():
        first = gate(x)
        for _ in range(5):
            again = gate(x)
    assert calls[0] == 1
    assert torch.equal(first, again)
    gate(x)  # the cache made under inference_mode also serves ordinary code
    assert calls[0] == 1


def test_training_mode_recomputes_the_gate_at_every_forward():
    gate = CoordGate(4, 12).train()
    calls = count_encoder_calls(gate)
    x = torch.randn(2, 4, 12)
    gate(x).sum().backward()
    gate(x)
    assert calls[0] == 2


def test_the_gate_depends_on_position_and_scales_each_position():
    torch.manual_seed(0)
    gate = CoordGate(4, 12).double()
    g = gate.compute_gate()
    assert (g.std(dim=1) > 1e-3).all()  # every channel's gate varies along the signal
    # The same input value at every position comes out multiplied by that position's gate.
    torch.testing.assert_close(gate(torch.full((1, 4, 12), 2.0, dtype=torch.float64))[0], 2 * g)


def test_gradient_through_the_gate_matches_finite_differences():
    torch.manual_seed(0)
    gate = CoordGate(3, 10, hidden=6).double().train()
    x = torch.randn(2, 3, 10, dtype=torch.float64)
    target = torch.randn(2, 3, 10, dtype=torch.float64)

    def loss() -> torch.Tensor:
        return (gate(x) - target).pow(2).sum()

    loss().backward()
    eps = 1e-6
    for name, param in gate.encoder.named_parameters():
        numeric = torch.zeros_like(param).view(-1)
        flat = param.data.view(-1)  # in place: training mode recomputes the gate at every call
        with torch.no_grad():
            for i in range(flat.numel()):
                original = flat[i].item()
                flat[i] = original + eps
                plus = loss()
                flat[i] = original - eps
                minus = loss()
                flat[i] = original
                numeric[i] = (plus - minus) / (2 * eps)
        assert param.grad.abs().sum() > 0, name
        torch.testing.assert_close(param.grad.view(-1), numeric, rtol=1e-5, atol=1e-7, msg=name)


def test_cache_is_invalidated_by_train_and_by_parameter_updates():
    gate = CoordGate(4, 12)
    calls = count_encoder_calls(gate)
    x = torch.randn(2, 4, 12)
    gate.eval()
    before = gate(x)
    gate.train()
    gate.eval()
    gate(x)
    assert calls[0] == 2
    # An optimiser step changes the weights in place: the cached gate must not survive it.
    opt = torch.optim.SGD(gate.parameters(), lr=0.1)
    gate.train()
    gate(x).pow(2).sum().backward()
    gate.eval()
    gate(x)
    opt.step()
    after = gate(x)
    assert calls[0] == 5
    assert not torch.allclose(before, after)
    # load_state_dict copies in place too.
    fresh = CoordGate(4, 12).eval()
    fresh(x)
    fresh.load_state_dict(gate.state_dict())
    torch.testing.assert_close(fresh(x), after)


def test_dtype_and_device_moves_carry_the_coordinates_and_drop_the_cache():
    gate = CoordGate(3, (5, 6)).eval()
    x = torch.randn(2, 3, 5, 6)
    ref = gate(x)
    gate.double()
    assert gate.coords.dtype == torch.float64
    out = gate(x.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), ref)
    assert "coords" not in gate.state_dict()  # the map is a function of size, not learned state
    clone = copy.deepcopy(gate)
    torch.testing.assert_close(clone(x.double()), out)
    devices = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        moved = copy.deepcopy(gate).to(device)
        assert moved.coords.device.type == device
        assert moved(x.double().to(device)).device.type == device


# --- CoordGate represents a locally connected layer -------------------------------------------
L, K = 12, 3


def locally_connected(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """y[i] = sum_j weights[i, j] * x[i + j - K//2], zero padded; x (B, 1, L), weights (L, K)."""
    padded = nn.functional.pad(x, (K // 2, K // 2))
    return sum(weights[:, j] * padded[:, :, j : j + L] for j in range(K))


def basis_conv() -> nn.Conv1d:
    """K output channels whose kernels are the K unit vectors: channel j holds x[i + j - K//2]."""
    conv = nn.Conv1d(1, K, K, padding=K // 2, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.eye(K, dtype=torch.float64).unsqueeze(1))
    return conv.requires_grad_(False)


def set_exact_gate(gate: CoordGate, target: torch.Tensor) -> None:
    """Weights of a 2-layer encoder whose output at the L grid points is exactly `target` (K, L).

    Hidden unit k is ReLU(t - t_k + delta), delta half the grid spacing: on the grid points these
    units form a lower-triangular matrix H with a non-zero diagonal, so the output layer V solving
    V H^T = target interpolates any values exactly (a piecewise-linear spline through them).
    """
    t = gate.coords[0].double()
    delta = (t[1] - t[0]) / 2
    first, last = gate.encoder[0], gate.encoder[-1]
    h = torch.relu(t[:, None] - t[None, :] + delta)  # H[i, k], unit k at point i
    with torch.no_grad():
        first.weight.fill_(1.0)
        first.bias.copy_(-t + delta)
        last.weight.copy_(torch.linalg.solve(h, target.T).T.unsqueeze(-1))
        last.bias.zero_()


def test_exact_coordgate_weights_give_any_locally_connected_layer():
    torch.manual_seed(0)
    weights = torch.randn(L, K, dtype=torch.float64)
    gate = CoordGate(K, L, hidden=L, n_layers=2).double()
    set_exact_gate(gate, weights.T)
    x = torch.randn(16, 1, L, dtype=torch.float64)
    y = gate(basis_conv()(x)).sum(dim=1, keepdim=True)  # the 1x1 conv summing channels
    torch.testing.assert_close(y, locally_connected(x, weights), rtol=1e-10, atol=1e-10)


def test_trained_coordgate_fits_a_random_locally_connected_layer():
    torch.manual_seed(0)
    weights = torch.randn(L, K, dtype=torch.float64)
    x = torch.randn(128, 1, L, dtype=torch.float64)
    y = locally_connected(x, weights)
    features = basis_conv()(x)
    gate = CoordGate(K, L, hidden=64, n_layers=4).double()
    steps = 2000
    opt = torch.optim.Adam(gate.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        loss = (gate(features).sum(dim=1, keepdim=True) - y).pow(2).mean()
        loss.backward()
        opt.step()
        schedule.step()
    gate.eval()
    with torch.no_grad():
        rel_err = (gate(features).sum(dim=1, keepdim=True) - y).pow(2).mean() / y.var()
        # Identifiable gate entries: all but those that only ever multiply the zero padding.
        learned, true = gate.gate(), weights.T
        mask = torch.ones_like(true, dtype=torch.bool)
        mask[0, 0] = mask[K - 1, L - 1] = False
    assert rel_err < 1e-8
    torch.testing.assert_close(learned[mask], true[mask], rtol=0, atol=1e-3)
