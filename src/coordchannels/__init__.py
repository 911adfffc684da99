"""Reproduction of signal intensity-weighted coordinate channels (arXiv 2511.03645) and CoordGate."""

from coordchannels.settings import register_resolvers

__version__ = "0.1.0"

register_resolvers()  # the config's own interpolations (`${cc.sum:...}`), before any config is read
