"""The small types of the detector contract: what a detector says about itself
(:class:`DetectorInfo`), what ``p2pwall_inspect`` is given besides the packet
(:class:`Context`) and what a packet's judgement is (:class:`Verdict`).

Kept apart from the engine so that ``import p2pwall`` (a detector's one import) loads
no engine, no tables and no numpy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from .packet import ip_bytes

if TYPE_CHECKING:  # pragma: no cover
    from .config import Settings


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

    def __init__(self, engine):  # the Engine: the core, which this contract module never imports
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

    def blocked_for(self, client, peer) -> bool:
        """Is ``peer`` blocked for ``client``: for it alone, or for the whole LAN?"""
        entry = self._engine.peers.get(address_key(peer), self.now)
        return entry is not None and (entry.lanwide or address_key(client) in entry.clients)

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


@dataclass
class DetectorInfo:
    """What a detector says about itself (``p2pwall_detector_info``).

    p2pwall builds its kernel rules (what is queued at all) and its dispatch (which
    detector sees which packet) from these declarations alone.
    """

    name: str = ""
    """Ignored for dispatch: the entry-point name is the detector's name everywhere
    (``--plugin``, ``[detectors.<name>]``, logs).  Kept so an info can name itself."""
    version: str = "0"
    """The detector's own version, shown by ``p2pwall detectors``."""
    protocols: list[str] = field(default_factory=list)
    """Protocol names it recognises, for people (``["MyProtocol"]``)."""
    description: str = ""
    """One line for ``p2pwall detectors``."""
    wants: list[str] = field(default_factory=list)
    """The packet kinds it must see, any of ``KINDS``: ``udp``, ``tcp_syn``, ``tcp_payload``,
    ``udp_in``, ``tcp_payload_in`` (see ``p2pwall_detector_info``)."""
    tcp_strings: list[bytes] = field(default_factory=list)
    """Narrow ``tcp_payload`` to payloads containing one of these (iptables ``string``).
    Empty: every first payload of a connection is queued for it."""
    tcp_strings_in: list[bytes] = field(default_factory=list)
    """The same for ``tcp_payload_in`` (payloads coming back towards the LAN)."""
    tcp_prefixes: list[bytes] = field(default_factory=list)
    """1-4 leading bytes that also select LAN payloads (iptables ``u32``, IPv4 only)."""
    tcp_first_sizes: tuple[int, int] | None = None
    """Also queue the first payload of each LAN connection whose size (TCP payload bytes)
    lies in this range, unless it goes to a service port (``SERVICE_PORTS``): for
    signatures that are a shape, not bytes (an encrypted handshake).  At most 1400.  The
    connection's next payload from the LAN is queued too, with ``packet.second`` set (the
    rest of an opening exchange; the core lets it count as evidence on a connection whose
    opening this detector recognised, ``Context.recognise``)."""
    tcp_first_sizes_in: tuple[int, int] | None = None
    """The same for the first reply payload of such connections (towards the LAN)."""
    udp_screen: bytes | None = None
    """A bytes regular expression; only UDP payloads it matches at their start reach this
    detector.  It must run in linear time (no nested repetition)."""
    locks: bool = True
    """Whether a LAN host's TCP SYN to a peer this detector blocked time-locks that host,
    in the engine and in the kernel (``[detectors.<name>] lock`` for the built-in ones)."""
    udp_answered: list[bytes] = field(default_factory=list)
    """UDP payload prefixes (1-4 bytes): a LAN host's datagrams that start with one of them
    still reach this detector when they go to a peer already blocked for that host (the
    kernel queues them, at most ``ANSWERED_RATE`` a second per LAN host, instead of dropping
    them; the verdict stays a drop): for a request the detector answers itself, so that
    the client keeps trying addresses p2pwall knows rather than moving on to new ones
    (a ping it spoofs the pong of), or for a UDP transport's connection opening that
    should lock like a TCP SYN to a blocked peer (the detector asks for the ``Lock``,
    checking ``Context.blocked_for``)."""
    locks_udp: bool = False
    """Whether a host this detector locks also loses, for the lock's time, its UDP to every
    port but the UDP service ports (``p2pwall.plugins.UDP_SERVICE_PORTS``: DNS, NTP, QUIC,
    ...), in the engine and in the kernel: for a protocol that runs over UDP as well as
    TCP (a UDP transport), where dropping TCP SYNs alone leaves it going."""
    origin: str = ""
    """Set by p2pwall: "built in" or the distribution the detector came from."""
    observer: bool = False
    """Set by p2pwall for a plugin that implements ``p2pwall_event`` and no
    ``p2pwall_detector_info``: a reporting plugin, not a detector."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tcp_strings"] = [s.decode("latin-1") for s in self.tcp_strings]
        d["tcp_strings_in"] = [s.decode("latin-1") for s in self.tcp_strings_in]
        d["tcp_prefixes"] = [s.hex() for s in self.tcp_prefixes]
        d["udp_answered"] = [s.hex() for s in self.udp_answered]
        d["udp_screen"] = self.udp_screen.decode("latin-1") if self.udp_screen else None
        return d
