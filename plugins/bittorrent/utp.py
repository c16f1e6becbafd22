"""uTP (BEP 29), BitTorrent's UDP transport: a header, then what TCP would carry.

A uTP packet is a 20-byte header (type and version ``0x?1``, the first extension, a
connection id, two timestamps, a window, a sequence and an acknowledgement number), a
chain of extensions, then the payload.  Clients carry over it exactly what they carry
over TCP: the peer-wire handshake, or MSE's encrypted exchange.  So uTP is a transport
here, not a signature:

- the SYN (``0x41``), every implementation's form: libutp (Transmission) announces a
  receive window, libtorrent-rasterbar 2.0 (qBittorrent, Deluge) sends its SYN with a
  window of 0, so the window is not asked for;
- an ``ST_DATA`` (``0x01``) payload is read as a TCP payload would be: the peer-wire
  handshake (whole, or split over datagrams in sequence: the first bytes are kept per
  flow, bounded, until the 20 bytes the check needs are there), and MSE's shape
  (:func:`p2pwall_plugins.bittorrent.mse.utp_inspect`).

Chance: a datagram passes :func:`data` only with ``0x01``, an extension number of 0-3 and
a consistent extension chain; a handshake then needs 20 exact bytes after it.
"""

from __future__ import annotations

import struct
from struct import unpack_from

from p2pwall import FROM_LAN

SYN, DATA = 0x41, 0x01
HEADER = struct.Struct("!BBHIIIHH")  # type|ver, extension, conn id, ts, ts diff, window, seq, ack
_SPLIT = "utp-hs"
SPLIT_SECONDS = 10.0


def payload_offset(p) -> int | None:
    """The offset of the payload after a consistent header and extension chain, or None."""
    n = len(p)
    if n < 20 or p[1] > 3:
        return None
    ext, off = p[1], 20
    for _ in range(4):
        if ext == 0:
            return off
        if off + 2 > n:
            return None
        ext, length = p[off], p[off + 1]
        off += 2 + length
        if off > n:
            return None
    return None


def is_syn(p) -> bool:
    """A uTP ST_SYN: a consistent header and extension chain, no payload, nothing received
    yet (no timestamp difference, nothing acknowledged)."""
    if len(p) < 20 or p[0] != SYN or p[1] > 2:
        return False
    off = payload_offset(p)
    return off == len(p) and unpack_from("!I", p, 8)[0] == 0 and unpack_from("!H", p, 18)[0] == 0


def data(p) -> tuple[int, int, bytes] | None:
    """An ST_DATA packet: (seq_nr, ack_nr, payload), or None."""
    if len(p) < 21 or p[0] != DATA:
        return None
    off = payload_offset(p)
    if off is None or off >= len(p):
        return None
    seq, ack = unpack_from("!HH", p, 16)
    return seq, ack, bytes(p[off:])


def stream_start(packet, context, seq: int, payload: bytes, want: bytes) -> bytes:
    """The first bytes of this flow's uTP stream as far as they go, for a check that needs
    ``len(want)`` bytes: a payload shorter than that which begins ``want`` is kept (the
    client's address, the peer's, the ports; 10 s) and the next datagram in sequence
    continues it.  Returns what to check: the payload itself, or the joined bytes."""
    client, peer = (packet.src, packet.dst) if packet.direction == FROM_LAN else (packet.dst, packet.src)
    tag = f"{_SPLIT}:{packet.sport}:{packet.dport}"
    note = context.note_for(client, peer, tag)
    if note is not None and len(note) > 2 and unpack_from("!H", note)[0] == seq:
        joined = (note[2:] + payload)[:64]
        if len(joined) < len(want) and want.startswith(joined):
            context.keep_note(client, peer, tag, struct.pack("!H", (seq + 1) & 0xFFFF) + joined, SPLIT_SECONDS)
        return joined
    if len(payload) < len(want) and want.startswith(payload):
        context.keep_note(client, peer, tag, struct.pack("!H", (seq + 1) & 0xFFFF) + payload, SPLIT_SECONDS)
    return payload
