"""Encrypted BitTorrent (MSE/PE, BEP 8's "message stream encryption"): nothing readable,
so the evidence is a shape, and it is read per client, not per connection.

What MSE looks like (the MSE spec; libtorrent's and aria2's implementations): the
initiator's first payload is its 96-byte Diffie-Hellman value and 0-512 random bytes of
padding (96-608 bytes, uniformly random); the responder answers the same way; only then
does the initiator send 20 bytes of hash and more encrypted data.

One packet proves nothing: plenty of encrypted protocols open with random bytes (a
shadowsocks proxy's every connection does).  So the evidence is the exchange, from both
directions, and then the number of peers:

- the opening: the client's first payload is *MSE-shaped* (96-608 bytes, no TLS record
  type first, its first 96 bytes random-looking: at least 56 distinct byte values;
  random data has about 80, text and binary protocols far fewer), not to a service port
  (``p2pwall.SERVICE_PORTS``), and not a framed opening named for what it is (Ethereum's
  RLPx, WhatsApp's Noise header, below);
- the answer: the peer's first payload back is MSE-shaped too, and acknowledges exactly
  the client's opening: the client sent nothing more and waited for it, as an MSE
  initiator must (it needs the responder's key before it can say anything);
- the second step: the client's very next payload follows at once (within
  ``STEP_SECONDS``), continues exactly where the opening ended, and is at least
  ``SECOND_MIN`` (56) bytes, MSE's two hashes and its encrypted negotiation.  A
  request-response protocol (a proxy carrying one HTTP request, a VPN's hello) has
  nothing more to say once answered, or not at once;
- the core keeps, per client, the distinct addresses of its completed exchanges for
  ``WINDOW`` seconds (a bounded note: this detector has no table of its own); the
  exchange that makes ``PEERS`` (3) distinct addresses earns, as the client's own
  evidence: a block of each of those addresses *for that client only* and a time lock
  of the client (its second step is dropped, so that exchange goes no further).
  Nothing is ever blocked LAN-wide on this evidence alone (a second client's evidence
  against the same address corroborates it, as the core does for any evidence).

The kernel queues what this needs and no more: first payloads of these sizes in each
direction (off the service ports), and the one payload after such an opening.

Over uTP (:mod:`.utp`) the exchange is the same, numbered by uTP's packet sequence
instead of TCP's byte sequence: the opening is the client's first ST_DATA payloads
before any answer (libtorrent sends 548-byte datagrams at first, so an opening of up to
608 bytes may take two), 96-608 bytes in all, its first datagram MSE-shaped; the answer
is the peer's first ST_DATA, MSE-shaped, acknowledging the opening and nothing beyond
it; the second step is the client's next datagram in sequence, of at least 56 bytes,
within ``STEP_SECONDS``.  It is counted with the TCP exchanges, per client.

Can a browser, an ordinary protocol or one hostile LAN host make it fire?
- A browser: its connections start with TLS (record type 0x16) or an HTTP request line,
  never 96+ random bytes; WebRTC data is UDP.
- Ordinary encrypted TCP: TLS and SSH start with structure; a VPN talks to one server
  (or two), not three in two minutes; on port 443 or another service port nothing is
  counted at all.  shadowsocks-libev to three servers (its openings and answers are
  random and of MSE's sizes) completes no exchange: ss-local says nothing more once a
  request is answered; tor with three obfs4 bridges writes 1-7 KB first (never a
  96-608-byte opening), OpenVPN over TCP with tls-crypt and OpenSSH to four hosts
  start with structure (``tests/e2e/test_real_software_e2e.py``: 0 locks, 0 blocks).  ``tests/plugins/test_mse.py`` replays 12,000 connections of TLS 1.2/1.3
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

from p2pwall import SERVICE_PORTS
from p2pwall_plugins._common import is_rlpx_auth, tls_record, whatsapp_opening
from p2pwall_plugins._exchange import ANSWERED, DONE, OPENED, STEP_SECONDS, Exchange

SIZES = (96, 608)
PEERS = 3
WINDOW = 120.0
SECOND_MIN = 56  # the initiator's second step: two 20-byte hashes, then VC, crypto_provide, lengths


def mse_shaped(data: bytes) -> bool:
    n = len(data)
    if not SIZES[0] <= n <= SIZES[1] or tls_record(data):
        return False
    return len(set(data[:96])) >= 56


def _opening(data: bytes) -> bool:
    """The first bytes of an MSE opening, of a size an opening may have (never RLPx's or
    WhatsApp's: named for what they are, never BitTorrent)."""
    return mse_shaped(data) and not is_rlpx_auth(data) and not whatsapp_opening(data)


EXCHANGE = Exchange("mse", _opening, lambda data, opened: mse_shaped(data) and not is_rlpx_auth(data),
                    SECOND_MIN, "BitTorrent MSE: encrypted handshakes to several peers", PEERS, WINDOW)


def inspect(packet, context):
    """For a LAN client's TCP payload: its opening (remembered), or the second step of an
    exchange whose first two steps were MSE's (counted per client); the actions that
    earns, or None."""
    return EXCHANGE.outgoing(packet, context)


def reply(packet, context) -> None:
    """The peer's first payload back on a flow the client opened MSE-shaped: the second
    step when it is MSE-shaped too and answers exactly the client's opening (the client
    had sent nothing more: it waited)."""
    EXCHANGE.incoming(packet, context)


_UTP_FLOW = "mse-utp"
_UTP_STEP = struct.Struct("!BHHHd")  # stage, first and last sequence number of the opening, its size, when


def utp_inspect(packet, context, seq: int, data: bytes):
    """A LAN client's uTP ST_DATA payload: its opening (one datagram or more, in
    sequence), or the second step of an exchange whose first two were MSE's (counted
    per client, with the TCP ones)."""
    if packet.dport in SERVICE_PORTS:
        return None
    client, peer, now = packet.src, packet.dst, context.now
    tag = f"{_UTP_FLOW}:{packet.sport}:{packet.dport}"
    note = context.note_for(client, peer, tag)
    if note is None:
        if _opening(data):
            context.recognise(packet)
            context.keep_note(client, peer, tag, _UTP_STEP.pack(OPENED, seq, seq, len(data), now), STEP_SECONDS)
        return None
    stage, first, last, size, at = _UTP_STEP.unpack(note)
    following = seq == (last + 1) & 0xFFFF and now - at <= STEP_SECONDS
    if stage == OPENED and following and size + len(data) <= SIZES[1]:
        context.keep_note(client, peer, tag, _UTP_STEP.pack(OPENED, first, seq, size + len(data), at), STEP_SECONDS)
        return None
    context.keep_note(client, peer, tag, _UTP_STEP.pack(DONE, 0, 0, 0, now), 1.0)  # one look at the second step
    if stage != ANSWERED or not following or len(data) < SECOND_MIN:
        return None
    return EXCHANGE.count(context, client, peer, now)


def utp_reply(packet, context, ack: int, data: bytes) -> None:
    """The peer's first uTP ST_DATA back: the answer when it is MSE-shaped and
    acknowledges the client's opening and nothing beyond it."""
    client, peer = packet.dst, packet.src
    tag = f"{_UTP_FLOW}:{packet.dport}:{packet.sport}"
    note = context.note_for(client, peer, tag)
    if note is None:
        return
    stage, first, last, size, at = _UTP_STEP.unpack(note)
    within = (ack - first) & 0xFFFF <= (last - first) & 0xFFFF
    if stage == OPENED and size >= SIZES[0] and within and _opening(data[:SIZES[1]]):
        context.keep_note(client, peer, tag, _UTP_STEP.pack(ANSWERED, first, last, size, context.now), STEP_SECONDS)
    else:
        context.keep_note(client, peer, tag, _UTP_STEP.pack(DONE, 0, 0, 0, context.now), 1.0)
