"""p2pwall: a pluggable P2P-traffic filter for Linux gateways."""

__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402  (the marker detectors decorate hooks with)

__all__ = ["hookimpl", "__version__"]
