"""Obfuscated eDonkey and Kad (aMule's and eMule's defaults: obfuscation supported and
requested), read from the exchange and from the sizes the protocol fixes.

aMule (``EncryptedStreamSocket``, ``EncryptedDatagramSocket``) keys its RC4 streams with
the other side's user hash or Kad ID, which the gateway never sees, so no byte can be
decrypted.  What gives the protocol away:

- **TCP, client to client**: the opening is a semi-random byte that is no protocol
  marker, 4 random key bytes, then (encrypted) a magic value, two method bytes, a
  padding length and at most 255 bytes of padding: 12 to 267 random-looking bytes.  The
  answer is (encrypted) the magic value, a method, a padding length and padding: 6 to
  261 bytes, sent only once the whole opening arrived; then the client sends its
  (encrypted) hello at once, at least 39 bytes.  The same exchange with 3 distinct
  peers within 2 minutes is the evidence, per client (a client asks every source it
  learns: dozens).  An exchange whose opening and answer are both 96 bytes or more is
  left to BitTorrent's MSE rule, which reads those sizes: the two rules never count the
  same exchange.  With aMule's default padding (0-254 bytes; eMule's is 128) about 4 in 10
  of its exchanges are of MSE's sizes, so an aMule client whose first three counted
  exchanges all were can be stopped as "BitTorrent MSE": stopped all the same, but named
  for the wrong protocol (a BitTorrent client is never named eDonkey: MSE's answer is 96
  bytes or more).
- **Kad over UDP**: padding is not used for UDP, so an obfuscated Kad message is the
  plain one plus exactly 16 bytes (marker, key part, magic value, padding length, two
  4-byte verify keys), its first byte even (the Kad marker bit) and no protocol marker.
  A Kad lookup request (``KADEMLIA2_REQ``: type, target, receiver) is then always 51
  bytes, and its answer (``KADEMLIA2_RES``: target, a count, 25 bytes a contact)
  35 + 25n bytes, on the flow the request opened.  Such request/answer pairs
  with 4 distinct nodes within 2 minutes are the evidence, per client (a Kad search asks
  dozens of nodes in seconds).

Can a browser, an ordinary protocol or one hostile host make it fire?
- A browser: its TCP connections open with TLS or an HTTP request line (structured,
  mostly printable); it sends no raw UDP, and WebRTC's STUN, DTLS and SRTP are
  structured (a magic cookie, record types 20-23, RTP version 2).
- Ordinary protocols: every opening must look random (no more than 60% printable bytes,
  many distinct ones; not TLS, not framed by its own length as OpenVPN-over-TCP, RLPx
  and many binary protocols are; not WhatsApp's Noise header); it must be answered
  exactly, the client must have waited, and the next step must follow at once, with
  three distinct peers.  A VPN or proxy talks to one or two servers.  On the service
  ports nothing is counted.  For Kad, a datagram of exactly 51 random-looking bytes
  answered by one of exactly 35 + 25n, four times with distinct addresses: measured by
  ``tests/plugins/test_chance.py`` and ``tests/plugins/edonkey/test_obfuscated.py``
  (random UDP exchanges, shadowsocks-like, QUIC-like, SSH, TLS): 0 blocks.
- One hostile host can make it fire only for itself (its own lock, client-scoped blocks).
"""

from __future__ import annotations

import struct

from p2pwall import SERVICE_PORTS, Block, Drop, Lock
from p2pwall_plugins._common import is_rlpx_auth, tls_record, whatsapp_opening
from p2pwall_plugins._exchange import Exchange

MARKERS = frozenset({0xE3, 0xC5, 0xD4, 0xE4, 0xE5, 0xA3, 0xB2})  # protocol header bytes: never obfuscated
OPENING = (12, 267)
ANSWER = (6, 261)
HELLO_MIN = 39  # an eDonkey hello: header, hash size, user hash, client id, port, tag count
MSE_SIZES = 96  # both opening and answer this big: BitTorrent MSE's exchange (see above)
KAD_REQUEST = 51  # KADEMLIA2_REQ (35 bytes) + 16 bytes of obfuscation
KAD_ANSWER = (35, 25)  # KADEMLIA2_RES: 19 + 25 a contact, + 16
KAD_PEERS = 4
KAD_WINDOW = 120.0
KAD_SECONDS = 10.0
_KAD_FLOW = "kad-req"
_KAD_TAG = "kad-peers"


def random_looking(data: bytes) -> bool:
    """Bytes that may be RC4 output: few printable ones, many distinct ones."""
    head = data[:64]
    n = len(head)
    if n == 0:
        return False
    printable = sum(1 for b in head if 32 <= b < 127 or b in (9, 10, 13))
    return printable <= 0.6 * n and len(set(head)) >= 0.6 * n


def _framed(data: bytes) -> bool:
    """Framed by its own length (2 bytes, big or little endian, or 4): a protocol's
    structure, not random bytes."""
    n = len(data)
    return (int.from_bytes(data[:2], "big") in (n, n - 2) or int.from_bytes(data[:2], "little") in (n, n - 2)
            or int.from_bytes(data[:4], "big") in (n, n - 4) or int.from_bytes(data[:4], "little") in (n, n - 4))


def tcp_opening(data: bytes) -> bool:
    n = len(data)
    return (OPENING[0] <= n <= OPENING[1] and data[0] not in MARKERS and not tls_record(data)
            and random_looking(data) and not _framed(data) and not is_rlpx_auth(data)
            and not whatsapp_opening(data))


def tcp_answer(data: bytes, opened: int) -> bool:
    n = len(data)
    if not ANSWER[0] <= n <= ANSWER[1] or (n >= MSE_SIZES and opened >= MSE_SIZES):
        return False  # (both big: MSE's)
    return random_looking(data) and not _framed(data) and not tls_record(data)


EXCHANGE = Exchange("ed2k-obf", tcp_opening, tcp_answer, HELLO_MIN,
                    "eDonkey obfuscated: encrypted handshakes to several peers")


def kad_datagram(p, size_ok) -> bool:
    n = len(p)
    return (size_ok(n) and not p[0] & 1 and p[0] not in MARKERS and bytes(p[:3]) != b"d1:"
            and random_looking(bytes(p)))


def kad_request(packet, context):
    """A LAN client's datagram of a Kad lookup request's obfuscated size: remembered on
    its flow (whose answer may count); once nodes at 4 distinct addresses answered such
    requests, the client's next one earns the actions."""
    if packet.dport in SERVICE_PORTS or packet.sport in SERVICE_PORTS:
        return None
    if not kad_datagram(packet.payload, lambda n: n == KAD_REQUEST):
        return None
    client, peer = packet.src, packet.dst
    context.recognise(packet)
    context.keep_note(client, peer, f"{_KAD_FLOW}:{packet.sport}:{packet.dport}",
                      struct.pack("!d", context.now), KAD_SECONDS)
    seen = _answered(context, client)
    if len(set(seen)) < KAD_PEERS:
        return None
    reason = "Kad obfuscated: lookups answered by several nodes"
    return ([Block(peer, reason=reason), Drop(reason), Lock(client, reason=reason)]
            + [Block(a, reason=reason, evidence="named") for a in seen if a != peer])


def kad_answer(packet, context) -> None:
    """The node's datagram back on such a flow, of a lookup answer's obfuscated size
    (35 + 25n bytes), within 10 s: that node counts for the client (for 2 minutes after
    the last such answer)."""
    client, peer = packet.dst, packet.src
    tag = f"{_KAD_FLOW}:{packet.dport}:{packet.sport}"
    note = context.note_for(client, peer, tag)
    if note is None:
        return
    context.keep_note(client, peer, tag, b"", 0.5)  # one answer per request
    if not note or context.now - struct.unpack("!d", note)[0] > KAD_SECONDS:
        return
    base, step = KAD_ANSWER
    if not kad_datagram(packet.payload, lambda n: n >= base and (n - base) % step == 0 and n <= base + 20 * step):
        return
    width = len(client)
    seen = [a for a in _answered(context, client) if a != peer][-(64 // width - 1):] + [peer]
    context.keep_note(client, client, _KAD_TAG, b"".join(seen), KAD_WINDOW)


def _answered(context, client: bytes) -> list[bytes]:
    width = len(client)
    note = context.note_for(client, client, _KAD_TAG) or b""
    return [note[i:i + width] for i in range(0, len(note) - width + 1, width)]


def _even(excluded) -> bytes:
    """A regex class of the even bytes but ``excluded`` (the Kad marker bit clear)."""
    import re

    return b"[" + b"".join(re.escape(bytes([b])) for b in range(0, 256, 2) if b not in excluded) + b"]"


# what the UDP screen passes for the rules above: a request of exactly 51 bytes, an answer of 35 + 25n
UDP_SCREEN = (_even(MARKERS) + b"(?s:.{%d})\\Z" % (KAD_REQUEST - 1) + b"|"
              + _even(MARKERS) + b"(?s:.{%d})(?s:.{%d}){0,20}\\Z" % (KAD_ANSWER[0] - 1, KAD_ANSWER[1]))
