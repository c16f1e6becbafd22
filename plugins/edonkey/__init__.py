"""eDonkey, eMule and Kad: TCP framing, server and client UDP, Kad UDP.

Signatures (``shared/protocols.md``; nDPI ``edonkey.c``, ipp2p ``search_edk`` and
``udp_search_edk``):

- TCP: ``E3`` (eDonkey), ``C5`` (eMule) or ``D4`` (packed) then a 4-byte little-endian
  length that matches the rest of the message, then an opcode; a hello (``E3 .. 01``)
  carries a 16-byte user hash (``10``).  Only payloads starting with those bytes are
  queued (iptables ``u32`` on IPv4);
- UDP: ``E3`` server and ``C5`` client datagrams, ``E4`` (Kad) and ``E5`` (packed Kad),
  each with a known opcode and, where the protocol fixes it, the exact length.

QUIC long headers also start with 0xC0-0xEF: their version field never reads as one of
these opcodes, which is what keeps QUIC out.

Requests: block the remote peer, drop the packet.  Lock: yes (``lock = true``): a
client works through its server list and source lists.
"""

from __future__ import annotations

from struct import unpack_from

from p2pwall import FROM_LAN, UDP, Block, DetectorInfo, Drop, hookimpl
from p2pwall_plugins._common import switches

__version__ = "1.0.0"

TCP_MARKERS = (0xE3, 0xC5, 0xD4)
MAX_MESSAGE = 2 * 1024 * 1024

# opcode -> (minimum length, exact length or None, stride of a trailing list or None)
SERVER_UDP = {  # 0xE3
    0x96: (6, 6, None), 0x97: (14, None, None), 0x98: (3, None, None), 0x92: (3, None, None),
    0x90: (3, None, None), 0x99: (19, None, None), 0x9A: (18, None, None), 0x94: (22, None, None),
    0x9B: (19, None, None), 0xA2: (2, None, None), 0xA3: (4, None, None),
}
CLIENT_UDP = {  # 0xC5
    0x90: (18, None, None), 0x91: (4, None, None), 0x92: (2, 2, None), 0x93: (2, 2, None),
    0x94: (18, None, None), 0x9A: (18, None, None),
}
KAD_UDP = {  # 0xE4 (Kad2)
    0x01: (2, 2, None), 0x09: (23, None, (23, 25)), 0x11: (22, None, None), 0x19: (22, None, None),
    0x21: (35, 35, None), 0x29: (19, None, (19, 25)), 0x33: (18, None, None), 0x34: (26, None, None),
    0x35: (26, None, None), 0x3B: (36, None, None), 0x43: (34, None, None), 0x44: (34, None, None),
    0x45: (34, None, None), 0x4B: (19, None, None), 0x53: (21, None, None), 0x60: (2, 2, None),
    0x61: (4, 4, None),
}
KAD_PACKED = set(KAD_UDP)  # 0xE5: zlib-packed Kad, lengths unknowable


def tcp_message(p) -> str | None:
    n = len(p)
    if n < 6 or p[0] not in TCP_MARKERS:
        return None
    length = unpack_from("<I", p, 1)[0]
    if length < 1 or length > MAX_MESSAGE:
        return None
    if 5 + length != n and not (n >= 536 and 5 + length > n):  # whole, or the start of a big one
        return None
    if p[0] == 0xE3 and p[5] == 0x01 and (n < 7 or p[6] != 0x10):
        return None  # a hello always carries a 16-byte hash
    return {0xE3: "eDonkey TCP", 0xC5: "eMule TCP", 0xD4: "eMule packed TCP"}[p[0]]


def _fits(rule, n: int) -> bool:
    minimum, exact, stride = rule
    if n < minimum or (exact is not None and n != exact):
        return False
    return stride is None or (n - stride[0]) % stride[1] == 0


def udp_message(p) -> str | None:
    n = len(p)
    if n < 2:
        return None
    marker, opcode = p[0], p[1]
    if marker == 0xE3 and opcode in SERVER_UDP and _fits(SERVER_UDP[opcode], n):
        return "eDonkey server UDP"
    if marker == 0xC5 and opcode in CLIENT_UDP and _fits(CLIENT_UDP[opcode], n):
        return "eMule client UDP"
    if marker == 0xE4 and opcode in KAD_UDP and _fits(KAD_UDP[opcode], n):
        return "Kad UDP"
    if marker == 0xE5 and opcode in KAD_PACKED and n >= 4:
        return "Kad packed UDP"
    return None


class EDonkeyDetector:
    def __init__(self):
        self.conf = {"tcp": True, "udp": True, "lock": True}

    @hookimpl
    def p2pwall_detector_info(self):
        wants = (["udp"] if self.conf["udp"] else []) + (["tcp_payload"] if self.conf["tcp"] else [])
        return DetectorInfo(name="edonkey", version=__version__, protocols=["eDonkey", "eMule", "Kad"],
                            description="eDonkey/eMule TCP framing, server/client/Kad UDP",
                            wants=wants, tcp_prefixes=[bytes([m]) for m in TCP_MARKERS],
                            udp_screen=rb"[\xe3\xc5\xe4\xe5]",
                            locks=self.conf["lock"])

    @hookimpl
    def p2pwall_configure(self, table, settings):
        self.conf = switches(table, {"tcp": True, "udp": True, "lock": True})

    @hookimpl
    def p2pwall_inspect(self, packet, context):
        if packet.direction != FROM_LAN or context.in_lan(packet.dst):
            return None
        p = packet.payload
        reason = udp_message(p) if packet.proto == UDP else tcp_message(p)
        if reason is None:
            return None
        return [Block(packet.dst, reason=reason), Drop(reason)]
