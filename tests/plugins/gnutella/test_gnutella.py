import struct

import pytest

from p2pwall.testing import DetectorHarness, tcp, udp
from p2pwall_plugins.gnutella import GnutellaDetector, is_descriptor, is_g2, tcp_reason

LAN, PEER = "192.168.1.5", "203.0.113.9"


def descriptor(kind=0x00, ttl=1, hops=0, payload=b"\xc3\x82QK@"):
    return bytes(range(16)) + bytes([kind, ttl, hops]) + struct.pack("<I", len(payload)) + payload


@pytest.mark.parametrize("data", [
    b"GNUTELLA CONNECT/0.6\r\nUser-Agent: LimeWire/4.12\r\nX-Ultrapeer: False\r\n\r\n",
    b"GNUTELLA CONNECT/0.4\n\n",
    b"GNUTELLA/0.6 200 OK\r\nX-Hub: False\r\n\r\n",
    b"GNUTELLA/0.6 503 Shielded leaf node\r\n",
    b"GNUTELLA OK\n\n",
    b"GIV 12:0123456789abcdef0123456789ABCDEF/song.mp3\n\n",
    b"GET /uri-res/N2R?urn:sha1:LXIP2A72T5H3BU3GRUMZFYNU3OYDK6FI HTTP/1.1\r\n\r\n",
    b"GET /gnutella/thex/v1?urn:tree:tiger/:ABC HTTP/1.1\r\n\r\n",
    b"GET /get/42/song.mp3 HTTP/1.1\r\nX-Gnutella-Content-URN: urn:sha1:X\r\n\r\n",
])
def test_tcp_forms(data):
    h = DetectorHarness(GnutellaDetector())
    drop, det, reason = h.feed(tcp(LAN, PEER, 40000, 6346, data))
    assert drop and det == "gnutella" and reason
    assert h.engine.context.is_blocked(PEER)


@pytest.mark.parametrize("data", [
    b"GET /get/42/report.pdf HTTP/1.1\r\nHost: example.org\r\n\r\n",  # /get/ without Gnutella headers
    b"GET /index.html HTTP/1.1\r\nHost: gnutella.example\r\n\r\n",
    b"GNUTELLA rocks\r\n",
    b"GIV me more\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nGNUTELLA CONNECT/0.6\r\n",  # not at the start
])
def test_tcp_near_misses(data):
    assert tcp_reason(data) is None
    assert not DetectorHarness(GnutellaDetector()).feed(tcp(LAN, PEER, 40000, 80, data))[0]


def test_udp_descriptors():
    assert is_descriptor(descriptor())
    assert is_descriptor(descriptor(kind=0x44, ttl=0, hops=0))  # gtk-gnutella DHT
    assert not is_descriptor(descriptor(kind=0x00, ttl=0, hops=0))
    assert not is_descriptor(descriptor(kind=0x07))
    assert not is_descriptor(descriptor(ttl=40))
    assert not is_descriptor(descriptor() + b"x")  # length must fill the datagram
    h = DetectorHarness(GnutellaDetector())
    assert h.feed(udp(LAN, PEER, 28681, 6346, descriptor()))[0]


def test_g2():
    g2 = b"GND\x10>\x8f\x01\x01T\x0bQKRP\x06RNA]/\xe25\tp"
    assert is_g2(g2) and is_g2(b"GND\x00\x00\x01\x00\x00")  # an ack
    assert not is_g2(b"GND\x00\x00\x01\x03\x02payload")  # part > count
    assert not is_g2(b"GNDx")
    assert not is_g2(b"GND\x00\x00\x01\x00\x00extra")  # acks have no body
    assert DetectorHarness(GnutellaDetector()).feed(udp(LAN, PEER, 28681, 6346, g2))[0]


def test_dns_and_random_udp_pass():
    h = DetectorHarness(GnutellaDetector())
    for data in (bytes.fromhex("abcd01000001000000000000") + b"\x03www\x07example\x03com\x00\x00\x01\x00\x01",
                 bytes(23), bytes(range(64))):
        assert not h.feed(udp(LAN, PEER, 5000, 53, data))[0]


def test_config_switches():
    from p2pwall.config import ConfigError

    h = DetectorHarness(GnutellaDetector(), config={"detectors": {"gnutella": {"udp": False, "lock": False}}})
    assert "udp" not in h.detectors.wants()
    assert h.detectors.locking()["gnutella"] is False
    with pytest.raises(ConfigError):
        DetectorHarness(GnutellaDetector(), config={"detectors": {"gnutella": {"bogus": True}}})
