"""CoordGate's 1-D experiment, its models: plain and CoordConv CNNs, CoordGate networks and their
random-map controls, and the grids of them the experiment trains."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from coordchannels.coordgate.layer import GatedConv1d

log = logging.getLogger(__name__)

CNN_FAMILIES = ("plain", "coordconv")


def _check_kernel(kernel: int) -> None:
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel sizes must be odd (symmetric 'same' zero padding), got {kernel}")


CNN_OUTPUTS = ("last_layer", "pointwise")


class CNN1d(nn.Module):
    """A plain (or CoordConv) CNN of `layers` conv layers of kernel `kernel`, zero 'same' padding.

    output="last_layer" (the paper's CNN(n, k, c)): (layers - 1) x (conv(kernel, channels) -> ReLU)
    -> conv(kernel, 1 channel), linear; the 1-channel output layer is the n-th layer.
    output="pointwise" (our extended grid): layers x (conv(kernel, channels) -> ReLU) -> 1x1 conv to 1.
    coordconv=True appends a linspace(-1, 1, L) channel to the input (CoordConv, Liu et al. 2018).
    """

    def __init__(
        self, layers: int, kernel: int, channels: int, length: int, coordconv: bool = False, output: str = "pointwise"
    ):
        super().__init__()
        _check_kernel(kernel)
        if layers < 1 or channels < 1:
            raise ValueError(f"a CNN needs layers >= 1 and channels >= 1, got {layers=}, {channels=}")
        if output not in CNN_OUTPUTS:
            raise ValueError(f"cnn_output must be one of {', '.join(CNN_OUTPUTS)}, got {output!r}")
        self.coordconv = coordconv
        self.register_buffer("coords", torch.linspace(-1.0, 1.0, length).view(1, 1, length), persistent=False)
        n_in = 2 if coordconv else 1
        n_hidden = layers - 1 if output == "last_layer" else layers
        body: list[nn.Module] = []
        for i in range(n_hidden):
            body += [nn.Conv1d(n_in if i == 0 else channels, channels, kernel, padding=kernel // 2), nn.ReLU()]
        self.body = nn.Sequential(*body)
        head_in = channels if n_hidden > 0 else n_in
        if output == "last_layer":
            self.head = nn.Conv1d(head_in, 1, kernel, padding=kernel // 2)
        else:
            self.head = nn.Conv1d(head_in, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.coordconv:
            x = torch.cat([x, self.coords.expand(x.shape[0], 1, x.shape[2])], dim=1)
        return self.head(self.body(x))


def random_map(length: int, seed: int) -> torch.Tensor:
    """The random-map control's static map: (1, L) numbers from U(-1, 1), fixed by `seed`.

    Same shape and range as CoordGate's coordinate map linspace(-1, 1, L), but with no order: the
    value at a position says nothing about where its neighbours are.
    """
    gen = torch.Generator().manual_seed(int(seed))
    return torch.rand(1, length, generator=gen) * 2.0 - 1.0


class CoordGateNet(nn.Module):
    """One convolution (1 -> channels), CoordGate on its channels, then a 1x1 conv to 1 channel.

    map_seed: if given, the gate's coordinate map is replaced by `random_map(length, map_seed)` (the
    paper's control): the same encoder, fed a static map of random numbers instead of coordinates.
    """

    def __init__(
        self, kernel: int, channels: int, length: int, hidden: int, n_layers: int, map_seed: int | None = None
    ):
        super().__init__()
        _check_kernel(kernel)
        self.gated = GatedConv1d(1, channels, kernel, length, hidden=hidden, n_layers=n_layers)
        if map_seed is not None:
            # Replaces the (non-persistent) buffer: it moves with the module, stays out of state_dict.
            self.gated.gate.coords = random_map(length, map_seed)
            self.gated.gate.invalidate_gate()
        self.head = nn.Conv1d(channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gated(x))


GATE_FAMILIES = ("coordgate", "random_map")
FAMILY_NAMES = {"plain": "CNN", "coordconv": "CoordConv", "coordgate": "CoordGate", "random_map": "RandomMapGate"}


@dataclass(frozen=True)
class ModelSpec:
    family: str
    layers: int
    kernel: int
    channels: int
    output: str = "pointwise"  # CNNs only: see CNN1d

    @property
    def name(self) -> str:
        return f"{self.family}_n{self.layers}_k{self.kernel}_c{self.channels}"

    @property
    def label(self) -> str:
        """The paper's notation: CNN(n, k, c), CoordConv(n, k, c), CoordGate(1, k, c); our extended
        grid's CNNs, with a 1x1 output layer after the n layers, get "+1x1"."""
        tail = "+1x1" if self.family in CNN_FAMILIES and self.output == "pointwise" else ""
        return f"{FAMILY_NAMES[self.family]}({self.layers},{self.kernel},{self.channels}){tail}"


def grid_config(exp_cfg: DictConfig, grid: str | None = None) -> DictConfig:
    """The entry of experiment.grids named by `grid` (default experiment.grid)."""
    grid = exp_cfg.grid if grid is None else grid
    grids = exp_cfg.grids
    if not isinstance(grid, str) or grid not in grids:
        raise ValueError(f"experiment.grid must name one of experiment.grids ({', '.join(grids)}), got {grid!r}")
    g = grids[grid]
    if g.get("cnn_output") not in CNN_OUTPUTS:
        raise ValueError(
            f"experiment.grids.{grid}.cnn_output must be one of {', '.join(CNN_OUTPUTS)}, got {g.get('cnn_output')!r}"
        )
    return g


def model_grid(exp_cfg: DictConfig) -> list[ModelSpec]:
    """Every model to train: each CNN of the grid once per CNN family, then each CoordGate entry once
    per gate family (CoordGate and its random-map control)."""
    g = grid_config(exp_cfg)
    specs = []
    for family in exp_cfg.cnn_families:
        if family not in CNN_FAMILIES:
            raise ValueError(f"experiment.cnn_families: unknown family {family!r}; expected plain or coordconv")
        specs += [ModelSpec(family, int(e.layers), int(e.kernel), int(e.channels), str(g.cnn_output)) for e in g.cnn]
    for family in exp_cfg.coordgate_families:
        if family not in GATE_FAMILIES:
            raise ValueError(
                f"experiment.coordgate_families: unknown family {family!r}; expected {' or '.join(GATE_FAMILIES)}"
            )
        specs += [ModelSpec(family, 1, int(e.kernel), int(e.channels)) for e in g.coordgate]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"experiment grid lists a model twice: {sorted(n for n in names if names.count(n) > 1)}")
    return specs


def build_model(spec: ModelSpec, length: int, exp_cfg: DictConfig) -> nn.Module:
    if spec.family in GATE_FAMILIES:
        gate = exp_cfg.coordgate
        map_seed = None
        if spec.family == "random_map":
            map_seed = exp_cfg.random_map_seed
            if not isinstance(map_seed, int) or isinstance(map_seed, bool):
                raise ValueError(f"experiment.random_map_seed must be an integer, got {map_seed!r}")
        return CoordGateNet(spec.kernel, spec.channels, length, int(gate.hidden), int(gate.n_layers), map_seed)
    return CNN1d(
        spec.layers, spec.kernel, spec.channels, length, coordconv=spec.family == "coordconv", output=spec.output
    )


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
