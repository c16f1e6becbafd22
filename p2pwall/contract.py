"""The small types of the detector contract: what ``p2pwall_inspect`` is given besides
the packet (:class:`Context`) and what a packet's judgement is (:class:`Verdict`).

Kept apart from the engine so that ``import p2pwall`` (a detector's one import) loads
no engine, no tables and no numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from .packet import ip_bytes

if TYPE_CHECKING:  # pragma: no cover
    from .config import Settings
    from .engine import Engine


class Verdict(NamedTuple):
    """What the engine decided for one packet."""

    drop: bool
    detector: str | None = None
    reason: str = ""


ACCEPTED = Verdict(False)
UNPARSED = Verdict(False, None, "unparsed")


class Context:
    """What a detector may ask of the engine while inspecting, and the small, bounded,
    expiring memory the core keeps for it (so a detector keeps no tables of its own)."""

    __slots__ = ("_engine", "now", "detector")

    def __init__(self, engine: Engine):
        self._engine = engine
        self.now = 0.0
        self.detector = ""  # the detector being asked, set by the engine

    def requested(self, packet) -> bool:
        """For a reply towards the LAN: did this detector recognise the client's request
        on this same flow (and act on it)?"""
        from .evidence import flow_key

        return self.detector in self._engine.evidence.asked.get(flow_key(packet, False), ())

    def recognise(self, packet) -> None:
        """Say that ``packet``, a LAN client's own, is a request of this detector's
        protocol that is not enough to act on: the peer's reply on this same flow may then
        count as the peer's own answer (a ``Block`` of the request does this already)."""
        from .evidence import Refused
        from .packet import FROM_LAN

        if packet.direction != FROM_LAN:
            return
        evidence = self._engine.evidence
        try:
            evidence._genuine(packet)
        except Refused:
            return
        evidence.recognised(packet, self.detector)

    def note_for(self, client, peer, tag: str) -> bytes | None:
        """What this detector kept about ``client`` talking to ``peer`` (``keep_note``)."""
        return self._engine.evidence.note(self.detector, address_key(client), address_key(peer), tag, self.now)

    def keep_note(self, client, peer, tag: str, data: bytes, seconds: float) -> None:
        """Keep up to 64 bytes about ``client`` talking to ``peer`` for up to an hour
        (bounded by the core: the oldest notes go first)."""
        self._engine.evidence.keep_note(self.detector, address_key(client), address_key(peer), tag,
                                        bytes(data[:64]), min(max(seconds, 0.0), 3600.0), self.now)

    def is_blocked(self, addr) -> bool:
        return self._engine.peers.live(address_key(addr), self.now)

    def is_locked(self, addr) -> bool:
        return self._engine.locks.live(address_key(addr), self.now)

    def in_lan(self, addr) -> bool:
        return address_key(addr) in self._engine.lan

    @property
    def settings(self) -> Settings:
        return self._engine.settings


def address_key(addr) -> bytes:
    if isinstance(addr, bytes) and len(addr) in (4, 16):
        return addr
    return ip_bytes(addr)
