"""BitTorrent: peer wire, DHT, uTP, UDP and HTTP trackers, local service discovery.

Signatures (``shared/protocols.md``; BEP 3, 5, 14, 15, 29):

- peer wire handshake: ``0x13 "BitTorrent protocol"`` (either side's first packet);
- DHT (KRPC): a bencoded dictionary with ``1:y1:q|r|e`` and a transaction ``1:t``;
- uTP: a SYN whose whole 20-byte header (plus extensions) is consistent, and what uTP
  carries, read as TCP's payloads are (the handshake, MSE's shape): see :mod:`.utp`;
- UDP tracker connect: protocol id ``0x41727101980``, action 0, 16 bytes;
- HTTP tracker: ``GET /announce?...info_hash=`` or ``/scrape?``;
- local service discovery: ``BT-SEARCH * HTTP/1.1`` to port 6771 (multicast).

Requests: block the remote peer (tracker, DHT node, peer), drop the packet; a tracker
announce also locks the client.  Peers named in replies are learned: compact peer lists
of HTTP tracker responses (``5:peers``) and DHT ``values``/``nodes``, so later (possibly
encrypted, MSE) connections to them are blocked too.  Lock: yes (``lock = true``):
clients hold many peers and retry, and encrypted connections to peers nobody named are
recognisable only by the time lock.  uTP is a transport like TCP, so its SYN locks like
TCP's: a uTP SYN to a peer already blocked for the client locks the client (the kernel
still queues those SYNs to blocked peers, bounded: ``udp_answered``), for a client that
retries or goes back to a peer it knew (Transmission 3.00 does not retry: its SYN to
each peer is the one that blocks it).  A locked client loses its UDP too, but for
the UDP service ports (DNS, NTP, QUIC, ...): its uTP goes with its TCP (``locks_udp``).

Encrypted connections (MSE/PE, the private-tracker way: HTTPS tracker, encryption
required, no DHT) are recognised by their shape, per client: see :mod:`.mse`.

Can a browser, an ordinary protocol or one hostile LAN host make it fire?
- Peer-wire handshake: only as the first payload of a connection (the core refuses any
  later one), which a browser always fills with an HTTP request line or a TLS hello: a
  web page cannot make a browser send it, however it pads a POST body.
- HTTP tracker announce/scrape: any page can make a browser request
  ``/announce?info_hash=`` (``<img src=...>``), so a browser-shaped request
  (:func:`p2pwall.browser_shaped`) is dropped and reported, never evidence: it blocks and
  locks nothing.  A client's own announce blocks the tracker for that client and locks it.
- DHT, uTP SYN, UDP tracker connect: a browser cannot send UDP of its choosing (WebRTC
  sends only STUN/DTLS/SRTP).  Random data matches a KRPC message below 1 in 10^12
  (``d``...``e`` with ``1:y1:`` and ``1:t``), a uTP SYN about 1 in 10^13 (a 20-byte
  datagram, ``0x41``, a consistent extension chain, zero timestamp difference and
  acknowledgement), a tracker connect 1 in 2^64; the chance test
  (``tests/plugins/test_chance.py``) measures 0 blocks on 100,000 each of randomised
  DNS, IKEv2, QUIC, STUN, RTP and random payloads.
- uTP ST_DATA: a datagram is read only after a consistent uTP header and extension
  chain; the handshake then needs its 20 exact bytes (whole or in sequence), MSE over uTP
  the whole numbered exchange (:mod:`.mse`): ``test_chance`` runs 20,000 random
  exchanges shaped like uTP data, MSE's sizes included, to 50 servers: 0 blocks.
- Replies: a DHT response or a peer-wire handshake from the address itself (the first
  reply payload of a flow a LAN client opened) blocks it for the whole LAN.  A tracker
  response, and the peers and nodes a reply names, count only on a flow where this
  detector recognised the client's request (the core keeps that memory): a hostile web
  server answering an ordinary request with ``d5:peers...`` teaches nothing, and named
  peers are blocked only for the client that received the reply, at most 50 per reply.
- A hostile LAN host can fire any of them against any address, for itself only.
"""

from __future__ import annotations

import re

from p2pwall import FROM_LAN, TCP, TO_LAN, UDP, Block, DetectorInfo, Drop, Lock, Report, browser_shaped, hookimpl
from p2pwall_plugins._common import switches

from . import mse, utp

__version__ = "1.0.0"

HANDSHAKE = b"\x13BitTorrent protocol"
TRACKER_PROTOCOL_ID = bytes.fromhex("0000041727101980")
LSD = b"BT-SEARCH * HTTP/1.1"
MAX_LEARNED = 50  # peers taken from one reply (the core bounds it too)

_PEERS = re.compile(rb"5:peers([0-9]{1,5}):")
_VALUES = re.compile(rb"6:valuesl")
_NODES = re.compile(rb"5:nodes([0-9]{1,4}):")


def is_tracker_request(data: bytes) -> bool:
    """``GET /...announce...?...info_hash=`` (or scrape): checked by slicing the request
    line, linear in its length whatever the input (a regex here backtracked)."""
    if not data.startswith(b"GET /"):
        return False
    end = data.find(b" ", 5, 4096)
    if end < 0:
        return False  # no complete request line in the first segment
    target = data[4:end].lower()
    path, sep, query = target.partition(b"?")
    return bool(sep) and (b"announce" in path or b"scrape" in path) and b"info_hash=" in query


def is_krpc(data: bytes) -> bool:
    """A DHT message: bencoded dict with a message type and a transaction id."""
    if len(data) < 12 or data[0] != 0x64 or data[-1] != 0x65:  # 'd' ... 'e'
        return False
    return (b"1:y1:q" in data or b"1:y1:r" in data or b"1:y1:e" in data) and b"1:t" in data


def is_utp_syn(p) -> bool:
    """A uTP ST_SYN with a consistent header and extension chain (see :mod:`.utp`)."""
    return utp.is_syn(p)


def is_tracker_connect(p) -> bool:
    return len(p) == 16 and bytes(p[:8]) == TRACKER_PROTOCOL_ID and bytes(p[8:12]) == b"\0\0\0\0"


def compact_peers(blob: bytes, stride: int = 6) -> list[str]:
    out = []
    for i in range(0, min(len(blob) - len(blob) % stride, stride * MAX_LEARNED), stride):
        a, b, c, d = blob[i:i + 4]
        if a not in (0, 127) and a < 224:
            out.append(f"{a}.{b}.{c}.{d}")
    return out


def peers_in_tracker_reply(data: bytes) -> list[str]:
    m = _PEERS.search(data)
    if not m:
        return []
    size = int(m.group(1))
    blob = data[m.end():m.end() + size]
    return compact_peers(blob) if size % 6 == 0 else []


def peers_in_dht(data: bytes) -> list[str]:
    found = []
    m = _NODES.search(data)
    if m and int(m.group(1)) % 26 == 0:
        blob = data[m.end():m.end() + int(m.group(1))]
        found += compact_peers(b"".join(blob[i + 20:i + 26] for i in range(0, len(blob) - 25, 26)))
    m = _VALUES.search(data)
    if m:
        i = m.end()
        for _ in range(MAX_LEARNED):
            if data[i:i + 2] != b"6:" or i + 8 > len(data):
                break
            found += compact_peers(data[i + 2:i + 8])
            i += 8
    return found


class BitTorrentDetector:
    def __init__(self):
        self.conf = {"peer_wire": True, "dht": True, "utp": True, "trackers": True, "lsd": True,
                     "learn": True, "lock": True, "mse": True}

    @hookimpl
    def p2pwall_detector_info(self):
        c = self.conf
        wants = ["udp", "tcp_payload"]
        strings_in = []
        if c["learn"] or c["utp"]:
            wants.append("udp_in")  # DHT replies; what uTP carries back
        if c["learn"]:
            wants.append("tcp_payload_in")
            strings_in = [b"5:peers", b"BitTorrent protocol"]
        elif c["mse"]:
            wants.append("tcp_payload_in")  # the answer of an MSE exchange
        return DetectorInfo(name="bittorrent", version=__version__, protocols=["BitTorrent"],
                            description="peer wire, DHT, uTP, trackers, LSD; learns peers from replies",
                            wants=wants, tcp_strings=[b"BitTorrent protocol", b"info_hash="],
                            udp_screen=rb"d[0-9]|\x41[\x00-\x02]|\x01[\x00-\x03]|\x00\x00\x04\x17\x27\x10\x19\x80|BT-SEARCH",
                            tcp_strings_in=strings_in, locks=c["lock"], locks_udp=c["lock"],
                            tcp_first_sizes=mse.SIZES if c["mse"] else None,
                            tcp_first_sizes_in=mse.SIZES if c["mse"] else None,
                            udp_answered=[bytes([utp.SYN])] if c["utp"] and c["lock"] else [])

    @hookimpl
    def p2pwall_configure(self, table, settings):
        self.conf = switches(table, self.conf)

    @hookimpl
    def p2pwall_inspect(self, packet, context):
        if packet.direction == TO_LAN:
            return self._reply(packet, context)
        if packet.direction != FROM_LAN or context.in_lan(packet.dst):
            return None
        c = self.conf
        if packet.proto == UDP:
            p = packet.payload
            if c["lsd"] and packet.dport == 6771 and packet.data.startswith(LSD):
                return Drop("BitTorrent local service discovery")
            if c["dht"] and is_krpc(packet.data):
                reason = "BitTorrent DHT"
            elif c["utp"] and is_utp_syn(p):
                reason = "BitTorrent uTP"
                if c["lock"] and context.blocked_for(packet.src, packet.dst):  # uTP's SYN to a known peer
                    return [Block(packet.dst, reason=reason), Drop(reason),
                            Lock(packet.src, reason="uTP SYN to blocked peer")]
            elif c["trackers"] and is_tracker_connect(p):
                reason = "BitTorrent UDP tracker"
            elif c["utp"] and len(p) > 20 and p[0] == utp.DATA:
                return self._utp(packet, context, True)
            else:
                return None
            return [Block(packet.dst, reason=reason), Drop(reason)]
        data = packet.data
        if c["peer_wire"] and data.startswith(HANDSHAKE):
            reason = "BitTorrent handshake"
            return [Block(packet.dst, reason=reason), Drop(reason)]
        if c["trackers"] and is_tracker_request(data):
            reason = "BitTorrent tracker announce"
            if browser_shaped(data):
                return [Drop(reason), Report(f"browser-shaped {reason}")]
            return [Block(packet.dst, reason=reason), Drop(reason), Lock(packet.src, reason=reason)]
        if c["mse"]:
            return mse.inspect(packet, context)
        return None

    def _utp(self, packet, context, outgoing: bool):
        """A uTP ST_DATA either way: the handshake (however split) blocks the outside end;
        else MSE's exchange is read (the client's steps, the peer's answer)."""
        found = utp.data(packet.payload)
        if found is None:
            return None
        seq, ack, payload = found
        if utp.stream_start(packet, context, seq, payload, HANDSHAKE).startswith(HANDSHAKE):
            reason = "BitTorrent handshake over uTP"
            return [Block(packet.dst if outgoing else packet.src, reason=reason), Drop(reason)]
        if not self.conf["mse"]:
            return None
        if outgoing:
            return mse.utp_inspect(packet, context, seq, payload)
        mse.utp_reply(packet, context, ack, payload)
        return None

    def _reply(self, packet, context):
        """Replies towards a LAN host: learn the peers they name (and read MSE's answers)."""
        if context.in_lan(packet.src):
            return None
        if packet.proto == UDP and self.conf["utp"] and len(packet.payload) > 20 and packet.payload[0] == utp.DATA:
            return self._utp(packet, context, False)
        if self.conf["mse"] and packet.proto == TCP and packet.first and packet.end > packet.off:
            mse.reply(packet, context)
        if not self.conf["learn"]:
            return None
        data = packet.data
        if packet.proto == UDP:
            if not is_krpc(data) or b"1:y1:r" not in data:
                return None
            learned = peers_in_dht(data) if context.requested(packet) else []
            reason = "BitTorrent DHT node"
        elif data.startswith(HANDSHAKE):
            return [Block(packet.src, reason="BitTorrent handshake"), Drop("BitTorrent handshake")]
        elif b"5:peers" in data and (data.startswith(b"HTTP/1.") or data.startswith(b"d")):
            if not context.requested(packet):
                return None  # an answer to a request nobody recognised as an announce: not a tracker
            learned = peers_in_tracker_reply(data)
            reason = "BitTorrent tracker"
        else:
            return None
        actions = [Block(packet.src, reason=reason), Drop(reason)]
        actions += [Block(peer, reason="named by a BitTorrent tracker/DHT reply") for peer in learned]
        return actions
