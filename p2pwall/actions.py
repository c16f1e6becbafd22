"""What a detector may ask the engine to do.

Detectors return these from ``p2pwall_inspect``; only the engine carries them out.
Addresses may be given as text (``"198.51.100.7"``) or packed bytes (``Packet.src``).
``seconds=None`` means the configured default (``[peers] seconds`` / ``[lock] seconds``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Drop:
    """Drop the packet being inspected."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Block:
    """Note ``peer`` as a P2P peer: LAN packets to it are dropped until it expires."""

    peer: str | bytes
    seconds: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Lock:
    """Time-lock LAN host ``client``: its TCP SYNs are dropped until the lock expires.

    A lock that already exists is restarted.  The detector that requested it is asked
    for probes (``p2pwall_make_probe``) while it lasts.
    """

    client: str | bytes
    seconds: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Spoof:
    """Send a UDP datagram to a LAN client that seems to come from ``src``:``sport``.

    Used to answer a client as if the peer had replied.  The engine sends it only when
    ``dst`` is inside the LAN, and rate-limits it.
    """

    src: str | bytes
    sport: int
    dst: str | bytes
    dport: int
    payload: bytes
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Probe:
    """Send a UDP datagram from the firewall's own LAN address to LAN host ``client``.

    A probe asks a locked client whether its P2P program still runs; its answer comes
    back through the INPUT chain (direction ``to_firewall``).  ``sport`` 0 lets the
    engine pick the firewall's port.
    """

    client: str | bytes
    dport: int
    payload: bytes
    sport: int = 0
    reason: str = ""


ACTION_TYPES = (Drop, Block, Lock, Spoof, Probe)
