"""Encrypted BitTorrent (MSE/PE, BEP 8's "message stream encryption"): nothing readable,
so the evidence is a shape, and it is read per client, not per connection.

What MSE looks like (the MSE spec; libtorrent's and aria2's implementations): the
initiator's first payload is its 96-byte Diffie-Hellman value and 0-512 random bytes of
padding (96-608 bytes, uniformly random); the responder answers the same way; only then
does the initiator send 20 bytes of hash and more encrypted data.

One such connection proves nothing: plenty of encrypted protocols open with random
bytes.  What ordinary traffic does not do is open connections whose first payloads are
96-608 random bytes to ``PEERS`` (3) distinct outside addresses, none on a service port,
within ``WINDOW`` (120 s): a BitTorrent client working through its peer list does
exactly that, at once.  So:

- per connection, the client's first payload is *MSE-shaped* when it is 96-608 bytes,
  starts with no TLS record type, and its first 96 bytes look random (at least 56
  distinct byte values: random data has about 80, text and binary protocols far fewer);
  the destination port is not one of the service ports (``p2pwall.SERVICE_PORTS``:
  HTTPS, SSH, mail, DNS-over-TLS, RDP, OpenVPN...);
- the core keeps, per client, the distinct addresses of its MSE-shaped connections for
  ``WINDOW`` seconds (a bounded note: this detector has no table of its own);
- the connection that makes ``PEERS`` distinct addresses earns, as the client's own
  evidence: a block of each of those addresses *for that client only* and a time lock
  of the client.  Nothing is ever blocked LAN-wide on this evidence alone (a second
  client's evidence against the same address corroborates it, as the core does for
  any evidence).

Can a browser, an ordinary protocol or one hostile LAN host make it fire?
- A browser: its connections start with TLS (record type 0x16) or an HTTP request line,
  never 96+ random bytes; WebRTC data is UDP.
- Ordinary encrypted TCP: TLS and SSH start with structure; a VPN talks to one server
  (or two), not three in two minutes; on port 443 or another service port nothing is
  counted at all.  ``tests/plugins/test_mse.py`` replays 12,000 connections of TLS 1.2/1.3
  to many servers, SSH, and a VPN-like protocol with random first payloads to port 443
  and to high ports on two servers: 0 blocks, 0 locks.  For a random first payload the
  shape alone matches about 1 in 3 (so it is never enough alone); the per-client rule is
  what makes it evidence.
- One hostile LAN host can trigger it, for itself only (its own lock and its own
  client-scoped blocks).
- WhatsApp's chat connections (port 5222 or 443) open with a Noise handshake whose
  keys are random, behind a readable header (``WA`` and a version, or ``ED 00 01``):
  such a payload is never counted.
- Ethereum's devp2p opens the same way (random-looking ECIES to many peers), but its
  auth message is framed (a 2-byte size equal to the rest, then 0x04): such a payload is
  never counted here; the ``ethereum`` detector names it, and stops it only when the
  operator turns that on.

The TLS handshake to an HTTPS tracker gives away the server name (SNI) when one is
sent.  It is not used: a private tracker's name is arbitrary, so it would be a
blocklist, not detection; encrypted ClientHello hides it; and blocking a name would
block every other site on that address.  The tracker connection itself is ordinary
HTTPS on port 443 and is never counted.
"""

from __future__ import annotations

import struct

from p2pwall import SERVICE_PORTS, Block, Drop, Lock
from p2pwall_plugins._common import is_rlpx_auth

SIZES = (96, 608)
PEERS = 3
WINDOW = 120.0
_TAG = "mse-peers"
_TLS_TYPES = (0x14, 0x15, 0x16, 0x17)


def whatsapp_opening(data: bytes) -> bool:
    """WhatsApp's Noise connection header: ``WA`` and its protocol version (two bytes), or
    the edge-routing header ``ED 00 01`` before it; then 3-byte frame lengths."""
    return (data[:2] == b"WA" and data[2] < 16) or data[:4] == b"ED\x00\x01"


def mse_shaped(data: bytes) -> bool:
    n = len(data)
    if not SIZES[0] <= n <= SIZES[1] or data[0] in _TLS_TYPES:
        return False
    return len(set(data[:96])) >= 56


def _entries(note: bytes | None, width: int) -> list[tuple[bytes, float]]:
    out = []
    step = width + 4
    for i in range(0, len(note or b"") - step + 1, step):
        out.append((note[i:i + width], float(struct.unpack_from("!I", note, i + width)[0])))
    return out


def _pack(entries, width: int) -> bytes:
    return b"".join(addr + struct.pack("!I", int(t) & 0xFFFFFFFF) for addr, t in entries)


def inspect(packet, context):
    """For a LAN client's first TCP payload: the actions MSE evidence earns, or None."""
    if not packet.first or packet.dport in SERVICE_PORTS or not mse_shaped(packet.data):
        return None
    if is_rlpx_auth(packet.data) or whatsapp_opening(packet.data):  # named for what they are, never BitTorrent
        return None
    client, peer = packet.src, packet.dst
    width = len(client)
    now = context.now
    seen = [(a, t) for a, t in _entries(context.note_for(client, client, _TAG), width)
            if now - t <= WINDOW and a != peer]
    seen.append((peer, now))
    keep = seen[-(64 // (width + 4)):]
    context.keep_note(client, client, _TAG, _pack(keep, width), WINDOW)
    if len({a for a, _ in seen}) < PEERS:
        return None
    reason = "BitTorrent MSE: encrypted handshakes to several peers"
    actions = [Block(peer, reason=reason), Drop(reason), Lock(client, reason=reason)]
    actions += [Block(a, reason=reason, evidence="named") for a, _ in seen[:-1]]
    return actions
