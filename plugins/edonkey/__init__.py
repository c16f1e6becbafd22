"""eDonkey, eMule and Kad: TCP hellos, server and client UDP, Kad UDP.

Signatures (``shared/protocols.md``; nDPI ``edonkey.c``, ipp2p ``search_edk`` and
``udp_search_edk``, eMule's opcodes.h):

- TCP: the first payload of a connection is a hello: ``E3`` (or ``C5``), a 4-byte
  little-endian length that matches the segment (or announces more, for a segment of
  536 bytes or more), opcode ``01`` and the 16-byte user hash marker ``10``; or a packed
  ``D4`` message whose body starts with a zlib header.  Only payloads starting with those
  bytes are queued (iptables ``u32`` on IPv4).
- UDP, *strong* (acted on at once): messages whose length the protocol fixes exactly
  (Kad2 bootstrap request, ping, pong, firewalled check; server status request; eMule
  reask answers) and zlib-packed Kad (``E5``) with a valid zlib header.
- UDP, *weak* (variable-length messages with a plausible opcode and minimum length):
  never acted on alone.  They count only when the same client sends a second weak
  message of another opcode to the same peer within 10 minutes (the flow's memory is
  the core's: a note on a client-scoped entry), or when the peer answers in kind on
  the flow of that message (``context.recognise``: an answer on any other flow, such
  as one a browser's WebRTC request opened, proves nothing).
- Never to the ports of ordinary UDP services (DNS, NTP, IKE and ESP-in-UDP, QUIC/443,
  STUN/TURN, mDNS, SSDP, syslog, DHCP), whose datagrams would otherwise match by chance.

Can a browser, an ordinary protocol or one hostile LAN host make it fire?
- A browser: no.  It cannot send raw UDP, and its TCP connections start with an HTTP
  request line or a TLS hello, never with E3/C5/D4.
- Ordinary protocols: measured with ``tests/plugins/test_chance.py`` (randomised DNS,
  IKEv2, QUIC, STUN, RTP and random payloads, 100,000 datagrams each, each its own
  flow): **0** blocks.  Per random datagram of a random length to a random high port,
  the strong forms match about 1 in 10^7 (they need an exact length and two exact
  bytes), the weak ones about 1 in 2,000, and a weak match earns nothing by itself.
  TLS and other TCP: only the first payload of a connection is read, and it needs five
  bytes of framing to agree with its length (about 1 in 10^9 for random data).
- A hostile LAN host can make it fire against any address it likes, but only for
  itself: its own packets block the address for it alone (the core's scope rule), and
  the gateway's nameservers, the allowlist and ``[peers] protect`` are never blocked.

Requests: block the remote peer, drop the packet.  Lock: yes (``lock = true``): a
client works through its server list and source lists.
"""

from __future__ import annotations

from struct import unpack_from

from p2pwall import FROM_LAN, TCP, TO_LAN, UDP, Block, DetectorInfo, Drop, hookimpl
from p2pwall_plugins._common import switches
from p2pwall_plugins.edonkey import obfuscated

__version__ = "2.0.0"

TCP_MARKERS = (0xE3, 0xC5, 0xD4)
MAX_MESSAGE = 2 * 1024 * 1024
# UDP ports of ordinary services: datagrams to them are never read as eDonkey
SERVICE_PORTS = frozenset({53, 67, 68, 123, 137, 138, 161, 162, 443, 500, 514, 853, 1900, 3478, 3479,
                           4500, 5349, 5353, 5355, 51820})

# strong: (marker, opcode) -> the exact length
STRONG_UDP = {
    (0xE4, 0x01): 2,  # Kad2 bootstrap request
    (0xE4, 0x60): 2,  # Kad2 ping
    (0xE4, 0x61): 4,  # Kad2 pong (port)
    (0xE4, 0x21): 35,  # Kad2 request: type, target id, receiver id
    (0xE3, 0x96): 6,  # server status request (challenge)
    (0xC5, 0x92): 2,  # eMule reask: file not found
    (0xC5, 0x93): 2,  # eMule reask: queue full
}
# weak: (marker, opcode) -> (minimum length, stride of a trailing list or None)
WEAK_UDP = {
    (0xE3, 0x97): (14, None), (0xE3, 0x98): (3, None), (0xE3, 0x92): (18, (2, 16)),
    (0xE3, 0x90): (3, None), (0xE3, 0x99): (19, None), (0xE3, 0x9A): (22, (2, 20)),
    (0xE3, 0x94): (22, None), (0xE3, 0x9B): (19, None), (0xE3, 0xA2): (2, None), (0xE3, 0xA3): (4, None),
    (0xC5, 0x90): (18, None), (0xC5, 0x91): (4, None), (0xC5, 0x94): (18, None), (0xC5, 0x9A): (18, None),
    (0xE4, 0x09): (23, (23, 25)), (0xE4, 0x11): (22, None), (0xE4, 0x19): (22, None),
    (0xE4, 0x29): (19, (19, 25)), (0xE4, 0x33): (18, None), (0xE4, 0x34): (26, None),
    (0xE4, 0x35): (26, None), (0xE4, 0x3B): (36, None), (0xE4, 0x43): (34, None), (0xE4, 0x44): (34, None),
    (0xE4, 0x45): (34, None), (0xE4, 0x4B): (19, None), (0xE4, 0x53): (21, None),
}
KAD_OPCODES = {op for (m, op) in list(STRONG_UDP) + list(WEAK_UDP) if m == 0xE4}
WEAK_WINDOW = 600.0


def _zlib_header(p, at: int) -> bool:
    """The zlib header eMule's packer writes (deflate, 32 KiB window: 78 01/5E/9C/DA)."""
    return len(p) >= at + 2 and p[at] == 0x78 and p[at + 1] in (0x01, 0x5E, 0x9C, 0xDA)


def tcp_message(p) -> str | None:
    """The reason for a first TCP payload that is an eDonkey/eMule hello, else None."""
    n = len(p)
    if n < 7 or p[0] not in TCP_MARKERS:
        return None
    length = unpack_from("<I", p, 1)[0]
    if length < 2 or length > MAX_MESSAGE:
        return None
    if 5 + length != n and not (n >= 536 and 5 + length > n):  # whole, or the start of a big one
        return None
    if p[0] == 0xD4:
        return "eMule packed TCP" if _zlib_header(p, 6) else None
    if p[5] == 0x01 and p[6] == 0x10 and n >= 23:  # hello / login: the 16-byte user hash
        return "eDonkey TCP hello" if p[0] == 0xE3 else "eMule TCP hello"
    if p[0] == 0xE3 and p[5] == 0x4C and n >= 22:  # hello answer (hash, no size byte)
        return "eDonkey TCP hello answer"
    return None


def _fits(rule, n: int) -> bool:
    minimum, stride = rule
    if n < minimum:
        return False
    return stride is None or (n - stride[0]) % stride[1] == 0


def udp_message(p) -> tuple[str, bool] | None:
    """(reason, strong) for an eDonkey/Kad datagram, or None."""
    n = len(p)
    if n < 2:
        return None
    pair = (p[0], p[1])
    exact = STRONG_UDP.get(pair)
    if exact is not None and n == exact:
        return ("Kad UDP" if p[0] == 0xE4 else "eDonkey UDP"), True
    if p[0] == 0xE5 and p[1] in KAD_OPCODES and _zlib_header(p, 2):
        return "Kad packed UDP", True
    rule = WEAK_UDP.get(pair)
    if rule is not None and _fits(rule, n):
        return {0xE3: "eDonkey server UDP", 0xC5: "eMule client UDP", 0xE4: "Kad UDP"}[p[0]], False
    return None


class EDonkeyDetector:
    def __init__(self):
        self.conf = {"tcp": True, "udp": True, "lock": True, "obfuscated": True}

    @hookimpl
    def p2pwall_detector_info(self):
        c = self.conf
        wants = (["udp", "udp_in"] if c["udp"] else []) + (["tcp_payload"] if c["tcp"] else [])
        if c["tcp"] and c["obfuscated"]:
            wants.append("tcp_payload_in")  # the answer of an obfuscated opening
        return DetectorInfo(name="edonkey", version=__version__, protocols=["eDonkey", "eMule", "Kad"],
                            description="eDonkey/eMule TCP hellos, server/client/Kad UDP, obfuscated eD2k and Kad",
                            wants=wants, tcp_prefixes=[bytes([m]) for m in TCP_MARKERS],
                            udp_screen=rb"[\xe3\xc5\xe4\xe5]" + (b"|" + obfuscated.UDP_SCREEN if c["obfuscated"] else b""),
                            tcp_first_sizes=obfuscated.OPENING if c["obfuscated"] else None,
                            tcp_first_sizes_in=obfuscated.ANSWER if c["obfuscated"] else None,
                            locks=c["lock"], locks_udp=c["lock"])

    @hookimpl
    def p2pwall_configure(self, table, settings):
        self.conf = switches(table, {"tcp": True, "udp": True, "lock": True, "obfuscated": True})

    @hookimpl
    def p2pwall_inspect(self, packet, context):
        incoming = packet.direction == TO_LAN
        if not incoming and (packet.direction != FROM_LAN or context.in_lan(packet.dst)):
            return None
        p = packet.payload
        obf = self.conf["obfuscated"]
        if packet.proto == TCP:
            if incoming:
                if obf and packet.first:
                    obfuscated.EXCHANGE.incoming(packet, context)
                return None
            reason = tcp_message(p) if packet.first else None
            if reason is None:
                return obfuscated.EXCHANGE.outgoing(packet, context) if obf else None
            return [Block(packet.dst, reason=reason), Drop(reason)]
        if packet.proto != UDP:
            return None
        remote_port = packet.sport if incoming else packet.dport
        if remote_port in SERVICE_PORTS or (packet.dport if incoming else packet.sport) in SERVICE_PORTS:
            return None
        found = udp_message(p)
        if found is None:
            if not obf:
                return None
            if incoming:
                return obfuscated.kad_answer(packet, context)
            return obfuscated.kad_request(packet, context)
        reason, strong = found
        if incoming:  # the peer answers in kind: strong evidence against the peer itself
            return [Block(packet.src, reason=f"{reason} answer"), Drop(reason)]
        if strong:
            return [Block(packet.dst, reason=reason), Drop(reason)]
        # weak: remember the opcode with a client-scoped note; act on a second, different one
        opcode = bytes(p[:2])
        previous = context.note_for(packet.src, packet.dst, "edonkey-weak")
        if previous is not None and previous[:2] != opcode:
            return [Block(packet.dst, reason=f"{reason} (second message)"), Drop(reason)]
        context.keep_note(packet.src, packet.dst, "edonkey-weak", opcode, WEAK_WINDOW)
        context.recognise(packet)  # the peer's answer in kind on this flow counts
        return None
