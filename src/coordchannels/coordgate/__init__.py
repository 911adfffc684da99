"""CoordGate: the coordinate-gating layer (`layer`) and its 1-D experiment, learning a
spatially-varying convolution (`data` -> `nets` -> `fit` -> `summary`, run by `stage`)."""

from coordchannels.coordgate.layer import CoordGate, GatedConv1d, GatedConv2d, coordinate_map

__all__ = ["CoordGate", "GatedConv1d", "GatedConv2d", "coordinate_map"]
