"""The example detector, tested with p2pwall's own harness."""

from p2pwall.testing import DetectorHarness, tcp, udp
from p2pwall_directconnect import DirectConnectDetector

LAN, PEER = "192.168.1.5", "203.0.113.9"


def test_handshake_blocks_the_peer():
    h = DetectorHarness(DirectConnectDetector())
    drop, detector, _ = h.feed(tcp(LAN, PEER, 40000, 411, b"$MyNick alice|$Lock EXTENDEDPROTOCOL Pk=x|"))
    assert drop and detector == "directconnect"
    assert h.engine.context.is_blocked(PEER)


def test_udp_search_reply():
    h = DetectorHarness(DirectConnectDetector())
    assert h.feed(udp(LAN, PEER, 40000, 412, b"$SR alice file.mp3\x05123 1/2\x05hub (1.2.3.4:411)|"))[0]


def test_near_misses_pass():
    h = DetectorHarness(DirectConnectDetector())
    assert not h.feed(tcp(LAN, PEER, 40000, 80, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))[0]
    assert not h.feed(udp(LAN, PEER, 40000, 53, b"$SR without the closing bar"))[0]
    assert not h.feed(tcp(LAN, PEER, 40000, 411, b"$MyNick but no bar"))[0]
