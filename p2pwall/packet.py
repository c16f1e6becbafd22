"""The read-only packet view every detector sees.

Parsing sits on the hot path of every queued packet, so it is flat ``struct``/slicing
work; scapy is only used to craft replies (see :mod:`p2pwall.sender`).  Anything that
does not parse yields ``None`` and the caller accepts and counts the packet.
"""

from __future__ import annotations

import socket
from struct import Struct, pack, unpack_from

# Directions, relative to the protected LAN.
FROM_LAN = "from_lan"  # forwarded, sent by a LAN host towards the outside
TO_LAN = "to_lan"  # forwarded, coming from the outside towards a LAN host
TO_FIREWALL = "to_firewall"  # sent by a LAN host to the gateway itself (INPUT chain)
UNKNOWN = "unknown"

TCP = 6
UDP = 17

# TCP flag bits
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# IPv6 extension headers that we skip; anything else ends the chain.  The whole chain is
# walked, however long (each header is at least 8 bytes, so the walk ends within the
# packet): a long chain is no way around the detectors.
_V6_SKIP = {0, 43, 60, 135, 139, 140}  # hop-by-hop, routing, destination options, mobility, HIP, shim6
_V6_FRAGMENT = 44
_V6_AH = 51


# ver/ihl, total length, flags/fragment offset, protocol, source, destination
_V4 = Struct("!BxHxxHxBxx4s4s").unpack_from
_UDP = Struct("!HHH").unpack_from


def ip_text(addr: bytes) -> str:
    """The printable form of a 4- or 16-byte address."""
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


def ip_bytes(text: str | bytes) -> bytes:
    """Packed form of an address given as text (or already packed). Raises ValueError."""
    if isinstance(text, (bytes, bytearray)):
        if len(text) in (4, 16):
            return bytes(text)
        raise ValueError(f"not a packed address: {text!r}")
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except (OSError, TypeError) as exc:
        raise ValueError(f"not an IP address: {text!r}") from exc


class Packet:
    """One parsed IP packet. Attributes are plain and meant to be read, not changed.

    ``src``/``dst`` are packed addresses (4 or 16 bytes); ``src_ip``/``dst_ip`` their text.
    ``sport``/``dport`` are 0 and ``payload`` empty when the transport header is absent
    (non-first fragments, other protocols).  ``payload`` is a memoryview of the transport
    payload (``raw[off:end]``); ``data`` is the same as ``bytes``.  Views are made on first
    use: most packets are judged without them.  ``first`` tells, for a TCP payload,
    whether it is the first payload of its connection in its direction (the kernel
    marks it; evidence from any later payload is refused by the core).
    """

    __slots__ = (
        "raw", "version", "proto", "src", "dst", "sport", "dport", "flags", "off", "end",
        "fragment", "direction", "ts", "first", "second", "mac", "l4", "_data", "_payload", "_src_ip", "_dst_ip",
    )

    def __init__(self, raw, version, proto, src, dst, sport, dport, flags, off, end, fragment):
        self.raw = raw
        self.version = version
        self.proto = proto
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.flags = flags
        self.off = off
        self.end = end
        self.fragment = fragment
        self.direction = UNKNOWN
        self.ts = 0.0
        self.first = True  # TCP: the first payload of its connection in its direction
        self.second = False  # TCP: the payload after a first one of a size detectors read by shape
        self.mac = None  # the source MAC, when the queue gives it
        self.l4 = 0  # TCP: where the TCP header starts in ``raw``

    @property
    def payload(self) -> memoryview:
        try:
            return self._payload
        except AttributeError:
            self._payload = view = memoryview(self.raw)[self.off:self.end]
            return view

    @property
    def data(self) -> bytes:
        try:
            return self._data
        except AttributeError:
            self._data = data = self.raw[self.off:self.end]
            return data

    @property
    def src_ip(self) -> str:
        try:
            return self._src_ip
        except AttributeError:
            self._src_ip = text = ip_text(self.src)
            return text

    @property
    def dst_ip(self) -> str:
        try:
            return self._dst_ip
        except AttributeError:
            self._dst_ip = text = ip_text(self.dst)
            return text

    @property
    def seq(self) -> int:
        """TCP: the sequence number (0 for anything else)."""
        return unpack_from("!I", self.raw, self.l4 + 4)[0] if self.proto == TCP and self.l4 else 0

    @property
    def ack(self) -> int:
        """TCP: the acknowledgement number (0 for anything else)."""
        return unpack_from("!I", self.raw, self.l4 + 8)[0] if self.proto == TCP and self.l4 else 0

    def joined(self, seq: int, data: bytes) -> "Packet":
        """This TCP segment as a view of its stream's start (:mod:`p2pwall.streams`): the
        same headers with sequence number ``seq`` and payload ``data`` (the stream from
        its first byte to this segment's end), the first payload of its direction."""
        raw = bytes(self.raw[:self.l4 + 4]) + pack("!I", seq) + bytes(self.raw[self.l4 + 8:self.off]) + data
        view = Packet(raw, self.version, self.proto, self.src, self.dst, self.sport, self.dport, self.flags,
                      self.off, self.off + len(data), self.fragment)
        view.direction, view.ts, view.mac, view.l4 = self.direction, self.ts, self.mac, self.l4
        return view

    @property
    def is_syn(self) -> bool:
        """A connection-opening SYN (SYN without ACK)."""
        return self.proto == TCP and (self.flags & (SYN | ACK)) == SYN

    def __repr__(self) -> str:
        name = {TCP: "tcp", UDP: "udp"}.get(self.proto, str(self.proto))
        return (f"<Packet {name} {self.src_ip}:{self.sport} -> {self.dst_ip}:{self.dport} "
                f"flags={self.flags:#x} len={self.end - self.off} {self.direction}>")


def parse(raw: bytes) -> Packet | None:
    """Parse a raw IPv4/IPv6 packet; ``None`` when it is not a well-formed IP packet."""
    n = len(raw)
    if n < 20:
        return None
    version = raw[0] >> 4
    fragment = False
    if version == 4:
        vihl, total, frag, proto, src, dst = _V4(raw)
        ihl = (vihl & 0x0F) * 4
        if ihl < 20 or total < ihl or n < ihl:
            return None
        end = total if total <= n else n  # a truncated copy keeps what we have
        offset = frag & 0x1FFF
        fragment = bool(offset or frag & 0x2000)
        l4 = ihl
        if offset:
            return Packet(raw, 4, proto, src, dst, 0, 0, 0, 0, 0, True)
    elif version == 6:
        if n < 40:
            return None
        plen = (raw[4] << 8) | raw[5]
        end = 40 + plen
        if end > n:
            end = n
        proto = raw[6]
        src = raw[8:24]
        dst = raw[24:40]
        l4 = 40
        while True:
            if proto in _V6_SKIP:
                if l4 + 8 > end:
                    return None
                proto, hlen = raw[l4], (raw[l4 + 1] + 1) * 8
            elif proto == _V6_FRAGMENT:
                if l4 + 8 > end:
                    return None
                fragment = True
                offset = unpack_from("!H", raw, l4 + 2)[0] >> 3
                proto, hlen = raw[l4], 8
                if offset:
                    return Packet(raw, 6, proto, src, dst, 0, 0, 0, 0, 0, True)
            elif proto == _V6_AH:
                if l4 + 8 > end:
                    return None
                proto, hlen = raw[l4], (raw[l4 + 1] + 2) * 4
            else:
                break
            l4 += hlen
            if l4 > end:
                return None
        if l4 > end:
            return None
    else:
        return None

    if proto == UDP:
        if l4 + 8 > end:
            return None
        sport, dport, ulen = _UDP(raw, l4)
        stop = l4 + ulen if 8 <= ulen and l4 + ulen <= end else end
        return Packet(raw, version, proto, src, dst, sport, dport, 0, l4 + 8, stop, fragment)
    if proto == TCP:
        if l4 + 20 > end:
            return None
        sport, dport = unpack_from("!HH", raw, l4)
        doff = (raw[l4 + 12] >> 4) * 4
        if doff < 20 or l4 + doff > end:
            return None
        packet = Packet(raw, version, proto, src, dst, sport, dport, raw[l4 + 13], l4 + doff, end, fragment)
        packet.l4 = l4
        return packet
    return Packet(raw, version, proto, src, dst, 0, 0, 0, 0, 0, fragment)
