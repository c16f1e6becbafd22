import struct

import pytest

from p2pwall.packet import TO_LAN
from p2pwall.testing import DetectorHarness, tcp, udp
from p2pwall_plugins.bittorrent import BitTorrentDetector, is_krpc, is_utp_syn, peers_in_dht, peers_in_tracker_reply

LAN, PEER, TRACKER = "192.168.1.5", "203.0.113.9", "198.51.100.7"
HANDSHAKE = b"\x13BitTorrent protocol" + bytes(8) + bytes(range(20)) + b"-UM1860-" + bytes(12)


def h():
    return DetectorHarness(BitTorrentDetector())


def test_handshake_blocks_peer():
    x = h()
    assert len(HANDSHAKE) == 68
    assert x.feed(tcp(LAN, PEER, 50000, 6881, HANDSHAKE))[2] == "BitTorrent handshake"
    assert x.engine.context.is_blocked(PEER)


def test_tracker_announce_blocks_tracker_and_locks_client():
    x = h()
    req = b"GET /announce?info_hash=%12%34&peer_id=-AR1360-abc&port=6881&left=0 HTTP/1.1\r\nHost: t\r\n\r\n"
    assert x.feed(tcp(LAN, TRACKER, 50001, 6969, req))[0]
    assert x.engine.context.is_blocked(TRACKER) and x.engine.context.is_locked(LAN)


@pytest.mark.parametrize("data", [
    b"d1:ad2:id20:" + bytes(20) + b"e1:q4:ping1:t2:aa1:y1:qe",
    b"d1:rd2:id20:" + bytes(20) + b"e1:t2:aa1:y1:re",
    b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee",
])
def test_dht(data):
    assert is_krpc(data)
    assert h().feed(udp(LAN, PEER, 6881, 6881, data))[2] == "BitTorrent DHT"


def utp_syn(ext=0, tail=b""):
    return bytes([0x41, ext]) + struct.pack("!HIIIHH", 1234, 1, 0, 1 << 20, 1, 0) + tail


def test_utp_syn_whole_header():
    assert len(utp_syn()) == 20 and is_utp_syn(utp_syn())
    assert is_utp_syn(utp_syn(ext=2, tail=bytes([0, 8]) + bytes(8)))
    assert not is_utp_syn(utp_syn() + b"data")  # a SYN carries no payload
    assert not is_utp_syn(utp_syn(ext=2))  # announced extension missing
    assert not is_utp_syn(bytes([0x41, 5]) + bytes(18))
    assert not is_utp_syn(bytes([0x01]) + bytes(19))  # many UDP protocols start with 0x01
    # libtorrent-rasterbar 2.0's SYN: receive window 0 (its connection id, timestamp, seq)
    libtorrent = bytes.fromhex("4100" "8a3f" "5d2c91e7" "00000000" "00000000" "1b2c" "0000")
    assert is_utp_syn(libtorrent)
    assert not is_utp_syn(libtorrent[:8] + b"\x00\x00\x00\x01" + libtorrent[12:])  # a timestamp difference: not a SYN
    assert not is_utp_syn(libtorrent[:18] + b"\x00\x01")  # something acknowledged: not a SYN


def test_udp_tracker_connect_and_lsd():
    x = h()
    connect = bytes.fromhex("0000041727101980") + bytes(4) + b"\x12\x34\x56\x78"
    assert x.feed(udp(LAN, TRACKER, 50002, 6969, connect))[2] == "BitTorrent UDP tracker"
    lsd = b"BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 6881\r\nInfohash: ab\r\n\r\n"
    drop, det, _ = x.feed(udp(LAN, "239.192.152.143", 6771, 6771, lsd))
    assert drop and det == "bittorrent"
    assert not x.engine.context.is_blocked("239.192.152.143")  # multicast is never a peer


def test_peers_learned_from_tracker_reply_and_dht():
    compact = bytes([203, 0, 113, 50, 0x1A, 0xE1, 203, 0, 113, 51, 0x1A, 0xE2])
    reply = b"HTTP/1.1 200 OK\r\n\r\nd8:intervali1800e5:peers12:" + compact + b"e"
    assert peers_in_tracker_reply(reply) == ["203.0.113.50", "203.0.113.51"]
    x = h()
    x.feed(tcp("198.51.100.9", LAN, 80, 50000, reply), direction=TO_LAN)  # unasked: names nothing
    assert not x.blocked("203.0.113.50") and not x.blocked("198.51.100.9")  # a web server's reply
    announce = b"GET /announce?info_hash=%01%02&peer_id=x HTTP/1.1\r\nUser-Agent: aria2/1.37\r\n\r\n"
    x.feed(tcp(LAN, TRACKER, 50001, 6969, announce))  # the request the detector recognised on this flow
    x.feed(tcp(TRACKER, LAN, 6969, 50001, reply), direction=TO_LAN)
    named = x.peer("203.0.113.50")
    assert named.kind == "named" and not named.lanwide and named.blocks(bytes([192, 168, 1, 5]))
    assert x.peer(TRACKER).lanwide  # the tracker answered as a tracker: the whole LAN
    dht = (b"d1:rd2:id20:" + bytes(20) + b"5:token2:xx6:valuesl6:" + compact[:6] + b"6:" + compact[6:]
           + b"ee1:t2:aa1:y1:re")
    assert peers_in_dht(dht) == ["203.0.113.50", "203.0.113.51"]
    nodes = b"d1:rd2:id20:" + bytes(20) + b"5:nodes26:" + bytes(20) + compact[:6] + b"e1:t2:aa1:y1:re"
    assert peers_in_dht(nodes) == ["203.0.113.50"]


@pytest.mark.parametrize("data", [
    b"GET /announcements/2024 HTTP/1.1\r\nHost: news\r\n\r\n",
    b"\x13BitTorrent protocoX" + bytes(48),
    b"d4:spam4:eggse",  # bencoded, but no KRPC type
])
def test_near_misses(data):
    x = h()
    assert not x.feed(tcp(LAN, PEER, 50000, 80, data))[0]
    assert not x.feed(udp(LAN, PEER, 50000, 80, data))[0]


def test_quic_and_dns_pass():
    x = h()
    quic_initial = bytes([0xC3, 0, 0, 0, 1, 8]) + bytes(8) + bytes(1200)
    assert not x.feed(udp(LAN, PEER, 50000, 443, quic_initial))[0]


def test_a_utp_syn_to_a_peer_blocked_for_the_client_locks_it_as_a_tcp_syn_does():
    """uTP is a transport: its first SYN to a peer blocks the peer for the client; a SYN to
    a peer already blocked for it (Transmission retrying) locks the client.  Another
    client's evidence against the peer locks nobody else; lock = false locks nobody."""
    x = h()
    other = "192.168.1.6"
    assert x.feed(udp(LAN, PEER, 51413, 6881, utp_syn()))[2] == "BitTorrent uTP"
    assert x.blocked(PEER) and not x.locked(LAN)
    assert x.feed(udp(other, PEER, 51413, 6881, utp_syn(ext=2, tail=bytes([0, 8]) + bytes(8))))[0]
    assert not x.locked(other)  # its own first SYN to the peer: blocked for it, not locked
    assert x.feed(udp(LAN, PEER, 51413, 6881, utp_syn()))[0]
    assert x.locked(LAN) and x.lock(LAN).reason == "uTP SYN to blocked peer"
    assert x.detectors.udp_answered() == [b"\x41"]  # the kernel still queues them to blocked peers
    off = DetectorHarness(BitTorrentDetector(), config={"detectors": {"bittorrent": {"lock": False}}})
    off.feed(udp(LAN, PEER, 51413, 6881, utp_syn()))
    off.feed(udp(LAN, PEER, 51413, 6881, utp_syn()))
    assert off.blocked(PEER) and not off.locked(LAN) and off.detectors.udp_answered() == []
