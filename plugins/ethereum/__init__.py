"""Ethereum's devp2p (RLPx), named for what it is and stopped only when the operator says so.

Whether a network stops Ethereum nodes is its operator's choice; calling them BitTorrent
is wrong either way (an Ethereum node's connections, 96-608 random-looking bytes to
many peers, are what the encrypted-BitTorrent rule used to read as MSE).  So:

- by default (``stop = false``) a devp2p opening is *reported* (``event=reported``,
  "Ethereum devp2p"), never dropped, blocked or locked; the BitTorrent detector's MSE
  rule does not count it either;
- with ``[detectors.ethereum] stop = true`` the connection is dropped and the peer
  blocked for that client (its own evidence, as every detector's own evidence is), and
  with ``lock = true`` (the default once stopping) the client is time-locked, as a
  BitTorrent client is.

The signature (the RLPx spec, ``devp2p/rlpx.md``, EIP-8): a node's first TCP payload is
its auth message, ``auth-size`` (2 bytes, big-endian) followed by exactly that many
bytes of ECIES ciphertext, which begins with the ephemeral public key in uncompressed
form (``0x04``, 64 bytes), a 16-byte IV, the encrypted auth body with 100-300 bytes of
padding, and a 32-byte MAC: 2 + 113 + body bytes, about 390-590 in all.  The responder's
auth-ack has the same frame.  (Pre-EIP-8 nodes sent a bare 307-byte ECIES message; no
client has sent one since 2016, and a bare ``0x04`` and a length are too weak a shape to
act on, so those are left alone.)  Discovery (UDP, discv4/discv5) is not read.

Can a browser, an ordinary protocol or one hostile LAN host make it fire?
- A browser's first TCP payload is a TLS ClientHello or an HTTP request line; a web page
  cannot make it send raw bytes.  WebSocket and WebRTC data are framed or UDP.
- Random data (any encrypted protocol: shadowsocks, obfs4, WireGuard over TCP) matches
  the frame with a chance of 1 in 2^24 per connection (the 16-bit length must equal the
  payload's and the next byte be 0x04); TLS (0x16 0x03 ...), SSH (``SSH-``), HTTP never do.
  ``tests/plugins/test_chance.py`` checks ordinary protocols' first payloads against it.
- A hostile LAN host can make it fire for itself only, and by default it only reports.
"""

from __future__ import annotations

from p2pwall import FROM_LAN, TCP, Block, DetectorInfo, Drop, Lock, Report, hookimpl
from p2pwall_plugins._common import RLPX_SIZES as SIZES
from p2pwall_plugins._common import is_rlpx_auth, switches

__version__ = "1.0.0"
REASON = "Ethereum devp2p (RLPx handshake)"
__all__ = ["EthereumDetector", "is_rlpx_auth", "SIZES"]


class EthereumDetector:
    def __init__(self):
        self.conf = {"stop": False, "lock": True}

    @hookimpl
    def p2pwall_detector_info(self):
        return DetectorInfo(name="ethereum", version=__version__, protocols=["Ethereum"],
                            description="devp2p/RLPx handshakes: reported; stopped with stop = true",
                            wants=["tcp_payload"], tcp_first_sizes=SIZES,
                            locks=self.conf["stop"] and self.conf["lock"])

    @hookimpl
    def p2pwall_configure(self, table, settings):
        self.conf = switches(table, self.conf)

    @hookimpl
    def p2pwall_inspect(self, packet, context):
        if packet.direction != FROM_LAN or packet.proto != TCP or not packet.first:
            return None
        if context.in_lan(packet.dst) or not is_rlpx_auth(packet.data):
            return None
        if not self.conf["stop"]:
            return Report(f"{REASON}: not stopped ([detectors.ethereum] stop = false)")
        actions = [Block(packet.dst, reason=REASON), Drop(REASON)]
        if self.conf["lock"]:
            actions.append(Lock(packet.src, reason=REASON))
        return actions
