"""Gnutella (0.4, 0.6) and Gnutella2: handshakes, UDP descriptors, HTTP transfers, pushes.

Signatures (``shared/protocols.md``; nDPI ``gnutella.c``, ipp2p, l7-filter):

- TCP handshake ``GNUTELLA CONNECT/0.x`` and its answers ``GNUTELLA/0.6 <code>`` or
  ``GNUTELLA OK``;
- UDP: Gnutella1 descriptors (16-byte GUID, payload type, TTL, hops, little-endian
  length that matches the datagram; ``0x44`` is gtk-gnutella's DHT, found in the
  bundled capture though protocols.md does not list it) and Gnutella2 ``GND`` datagrams (flags, sequence,
  part <= count);
- HTTP: ``GET /uri-res/N2R?urn:...``, ``GET /gnutella/...`` (THEX, push proxies),
  ``GET /get/<n>/...`` with Gnutella headers; push answers ``GIV <n>:<guid>/``.

Requests: block the remote peer, drop the packet.  Lock: yes (``lock = true``): a
servent tries its host cache one peer after another, so a SYN to a known peer
time-locks the host, as ftwall does for FastTrack.

Can a browser, an ordinary protocol or one hostile LAN host make it fire?
- Handshakes and ``GIV`` pushes: only as the first payload of a connection (the core
  refuses evidence from any later one), which a browser always fills with its own HTTP
  request line or TLS hello: a web page cannot make a browser send them.
- HTTP transfers (``/uri-res/``, ``/gnutella/``, ``/get/<n>/``): any page can make a
  browser request such a URL (``<img src=...>``), so a browser-shaped request
  (:func:`p2pwall.browser_shaped`: ``Sec-Fetch-*``, a ``Mozilla/`` agent, ``Accept:
  text/html`` or ``image/*``) is dropped and reported but blocks and locks nothing;
  ``/get/<n>/`` also needs a Gnutella header in the header block (never the body).
- UDP descriptors: a 16-byte GUID, a known type, TTL and hops within 16 and a length
  field that matches the datagram exactly; G2 needs ``GND``, valid flags and part <=
  count.  Measured on 100,000 randomised datagrams each of DNS, IKEv2, QUIC, STUN, RTP
  and random payloads (``tests/plugins/test_chance.py``): 0 blocks; for random data
  the chance is below 1 in 10^9 per datagram (descriptor) and about 1 in 10^7 (G2).
- A hostile LAN host can fire any of them against any address, for itself only: its
  own packets block that address for it alone.
"""

from __future__ import annotations

import re
from struct import unpack_from

from p2pwall import FROM_LAN, UDP, Block, DetectorInfo, Drop, Report, browser_shaped, header_block, hookimpl
from p2pwall_plugins._common import switches

__version__ = "1.0.0"

DESCRIPTOR_TYPES = {0x00, 0x01, 0x02, 0x30, 0x31, 0x32, 0x40, 0x44, 0x80, 0x81}
DHT = 0x44  # gtk-gnutella's Kademlia DHT messages: TTL and hops are both 0
TCP_STRINGS = [b"GNUTELLA", b"GIV ", b"/uri-res/", b"GET /gnutella/", b"X-Gnutella-", b"X-Alt:"]

_HANDSHAKE = re.compile(rb"^(?:GNUTELLA CONNECT/0\.[0-9]\r?\n|GNUTELLA/0\.[0-9] [1-5][0-9][0-9][ \r\n]|GNUTELLA OK\n\n)")
_GIV = re.compile(rb"^GIV [0-9]{1,10}:[0-9A-Fa-f]{32}/")
_HTTP = re.compile(rb"^(?:GET|HEAD) /(?:uri-res/[NnRr]2[RrXx]\?urn:|gnutella/|get/[0-9]+/)")
_HEADER = re.compile(rb"\r\n(?:X-Gnutella-[A-Za-z-]+|X-Alt|X-Queue):", re.IGNORECASE)


def is_descriptor(p) -> bool:
    """A Gnutella1 descriptor filling the datagram exactly."""
    n = len(p)
    if n < 23 or p[16] not in DESCRIPTOR_TYPES:
        return False
    ttl, hops = p[17], p[18]
    if ttl > 16 or hops > 16 or ttl + hops > 16 or (ttl + hops == 0 and p[16] != DHT):
        return False
    return 23 + unpack_from("<I", p, 19)[0] == n


def is_g2(p) -> bool:
    """A Gnutella2 UDP datagram: GND, flags, sequence, part <= count (count 0: an ack)."""
    # flags: 0x01 deflate, 0x02 ack-me; clients also set 0x10 (seen in the bundled capture)
    if len(p) < 8 or p[0] != 0x47 or p[1] != 0x4E or p[2] != 0x44 or p[3] & 0xE0:
        return False
    part, count = p[6], p[7]
    if count == 0:
        return len(p) == 8
    return 1 <= part <= count and len(p) > 8


def tcp_reason(data: bytes) -> str | None:
    if _HANDSHAKE.match(data):
        return "Gnutella handshake"
    if _GIV.match(data):
        return "Gnutella push (GIV)"
    if _HTTP.match(data):
        if data.startswith(b"GET /get/") or data.startswith(b"HEAD /get/"):
            return "Gnutella HTTP transfer" if _HEADER.search(header_block(data)) else None
        return "Gnutella HTTP transfer"
    return None


class GnutellaDetector:
    def __init__(self):
        self.conf = {"udp": True, "tcp": True, "lock": True}

    @hookimpl
    def p2pwall_detector_info(self):
        wants = (["udp"] if self.conf["udp"] else []) + (["tcp_payload"] if self.conf["tcp"] else [])
        return DetectorInfo(name="gnutella", version=__version__,
                            protocols=["Gnutella", "Gnutella2"],
                            description="Gnutella/G2 handshakes, UDP descriptors, HTTP transfers and pushes",
                            # a descriptor: a known type, then TTL and hops within 16, not both 0
                            # (but for gtk-gnutella's DHT, 0x44, whose TTL and hops are 0)
                            udp_screen=rb"GND|.{16}(?:[\x00\x01\x02\x30\x31\x32\x40\x80\x81]"
                                       rb"(?:[\x01-\x10][\x00-\x10]|\x00[\x01-\x10])|\x44[\x00-\x10][\x00-\x10])",
                            wants=wants, tcp_strings=TCP_STRINGS, locks=self.conf["lock"])

    @hookimpl
    def p2pwall_configure(self, table, settings):
        self.conf = switches(table, {"udp": True, "tcp": True, "lock": True})

    @hookimpl
    def p2pwall_inspect(self, packet, context):
        if packet.direction != FROM_LAN or context.in_lan(packet.dst):
            return None
        if packet.proto == UDP:
            p = packet.payload
            if is_g2(p):
                reason = "Gnutella2 UDP"
            elif is_descriptor(p):
                reason = "Gnutella UDP descriptor"
            else:
                return None
        else:
            data = packet.data
            reason = tcp_reason(data)
            if reason is None:
                return None
            if reason == "Gnutella HTTP transfer" and browser_shaped(data):
                return [Drop(reason), Report(f"browser-shaped {reason}")]
        return [Block(packet.dst, reason=reason), Drop(reason)]
