"""p2pwall: a pluggable P2P-traffic filter for Linux gateways.

This module is the detector author's one import: the hook marker, the description a
detector returns, the actions it may request, the packet view and its constants, and
the error to raise from ``p2pwall_configure``.  See :mod:`p2pwall.hookspecs`.
"""

__version__ = "0.2.0"

from .actions import Block, Drop, Lock, Probe, Report, Spoof  # noqa: E402
from .http import browser_shaped, header_block  # noqa: E402
from .config import ConfigError, Settings  # noqa: E402
from .contract import Context, DetectorInfo, Verdict  # noqa: E402
from .events import Event  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402  (the marker detectors decorate hooks with)
from .packet import FROM_LAN, TCP, TO_FIREWALL, TO_LAN, UDP, UNKNOWN, Packet, ip_bytes, ip_text  # noqa: E402
from .plugins import SERVICE_PORTS  # noqa: E402

__all__ = [
    "__version__", "hookimpl", "DetectorInfo", "ConfigError", "Settings", "Context", "Verdict",
    "Drop", "Block", "Lock", "Spoof", "Probe", "Report", "Event", "browser_shaped", "header_block",
    "SERVICE_PORTS", "Packet", "FROM_LAN", "TO_LAN", "TO_FIREWALL", "UNKNOWN", "TCP", "UDP", "ip_bytes", "ip_text",
]
