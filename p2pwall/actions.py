"""What a detector may ask the engine to do.

Detectors return these from ``p2pwall_inspect``; only the engine carries them out, and
only after ``check`` has accepted them.  Addresses may be given as text
(``"198.51.100.7"``) or packed bytes (``Packet.src``).  ``seconds=None`` means the
configured default (``[peers] seconds`` / ``[lock] seconds``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .records import MAX_NOTE, MAX_SECONDS  # noqa: F401  (the longest an entry may live; a note's bytes)
MAX_PAYLOAD = 1400  # bytes of a spoof or probe: one datagram, never fragmented
MAX_REASON = 200


@dataclass(frozen=True, slots=True)
class Drop:
    """Drop the packet being inspected."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Block:
    """Evidence against ``peer``: the core decides what it earns (see
    :mod:`p2pwall.evidence`).  Seen in the client's own packet to ``peer``, it blocks the
    peer for that client; in the peer's own reply, for the whole LAN; an address named
    in a reply or a request, for the client concerned.  A detector only says what it saw:
    ``evidence="named"`` marks an address it read out of a payload when the engine
    could not tell (the default is inferred from the packet).

    ``note`` (bytes, at most 512) is kept with the entry and handed to this detector's
    ``p2pwall_make_probe`` when a SYN to the peer locks a client."""

    peer: str | bytes
    seconds: float | None = None
    reason: str = ""
    note: bytes | None = None
    evidence: str | None = None


@dataclass(frozen=True, slots=True)
class Lock:
    """Time-lock LAN host ``client``: its TCP SYNs are dropped until the lock expires.

    A lock that already exists is restarted (its note kept unless a new one is given).
    The detector that requested it is asked for probes (``p2pwall_make_probe``, with
    ``note``) while it lasts.
    """

    client: str | bytes
    seconds: float | None = None
    reason: str = ""
    note: bytes | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """Something worth an event but not evidence: the request looked like P2P but came
    from a browser (which a web page can make send anything).  Blocks and locks nothing;
    pair it with ``Drop`` to stop the request itself."""

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


def _seconds(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"seconds must be a number, got {value!r}"
    if not math.isfinite(value) or not 0 < value <= MAX_SECONDS:
        return f"seconds must be above 0 and at most {MAX_SECONDS:g}, got {value!r}"
    return None


def _port(value, name: str, zero: bool = False) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not (0 if zero else 1) <= value <= 65535:
        return f"{name} must be a port number, got {value!r}"
    return None


def _bytes(value, name: str, limit: int, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, (bytes, bytearray)) or len(value) > limit:
        return f"{name} must be bytes of at most {limit}, got {type(value).__name__} of {len(value) if hasattr(value, '__len__') else '?'}"
    return None


def _reason(value) -> str | None:
    if not isinstance(value, str) or len(value) > MAX_REASON:
        return f"reason must be a string of at most {MAX_REASON} characters"
    return None


def check(action) -> str | None:
    """Why ``action`` cannot be carried out, or None when it is well formed.  Addresses
    are checked by the engine, which also knows the LAN."""
    if isinstance(action, (Drop, Report)):
        return _reason(action.reason)
    if isinstance(action, Block) and action.evidence not in (None, "named"):
        return f"evidence must be None or \"named\", got {action.evidence!r}"
    if isinstance(action, (Block, Lock)):
        return (_seconds(action.seconds) or _reason(action.reason)
                or _bytes(action.note, "note", MAX_NOTE, optional=True))
    if isinstance(action, Spoof):
        return (_port(action.sport, "sport") or _port(action.dport, "dport")
                or _bytes(action.payload, "payload", MAX_PAYLOAD) or _reason(action.reason))
    if isinstance(action, Probe):
        return (_port(action.dport, "dport") or _port(action.sport, "sport", zero=True)
                or _bytes(action.payload, "payload", MAX_PAYLOAD) or _reason(action.reason))
    return f"not an action: {type(action).__name__}"
