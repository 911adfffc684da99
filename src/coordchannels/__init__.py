"""Reproduction of signal intensity-weighted coordinate channels (arXiv 2511.03645) and CoordGate."""

__version__ = "0.1.0"
