import struct

import pytest

from p2pwall.testing import DetectorHarness, tcp, udp
from p2pwall_plugins.edonkey import EDonkeyDetector, tcp_message, udp_message

LAN, PEER = "192.168.1.5", "203.0.113.9"


def frame(marker, body):
    return bytes([marker]) + struct.pack("<I", len(body)) + body


HELLO = frame(0xE3, b"\x01\x10" + bytes(16) + bytes(6) + b"\x00\x00\x00\x00")


def test_tcp_hello_and_friends():
    assert tcp_message(HELLO) == "eDonkey TCP"
    assert tcp_message(frame(0xC5, b"\x01" + bytes(10))) == "eMule TCP"
    assert tcp_message(frame(0xD4, b"\x40" + bytes(30))) == "eMule packed TCP"
    x = DetectorHarness(EDonkeyDetector())
    assert x.feed(tcp(LAN, PEER, 40000, 4662, HELLO))[0]
    assert x.engine.context.is_blocked(PEER)


@pytest.mark.parametrize("data", [
    frame(0xE3, b"\x01\x10" + bytes(16))[:-1],  # length does not match
    frame(0xE3, b"\x01\x05" + bytes(16)),  # hello without a 16-byte hash
    bytes([0xE3]) + struct.pack("<I", 0),
    b"\xe3hello world",
    b"GET / HTTP/1.1\r\n\r\n",
])
def test_tcp_near_misses(data):
    assert tcp_message(data) is None


def test_udp_kad_and_server():
    assert udp_message(b"\xe4\x01") == "Kad UDP"  # Kad2 bootstrap request
    assert udp_message(b"\xe4\x60") == "Kad UDP"
    assert udp_message(b"\xe3\x96" + bytes(4)) == "eDonkey server UDP"
    assert udp_message(b"\xc5\x92") == "eMule client UDP"
    assert udp_message(b"\xe4\x21" + bytes(33)) == "Kad UDP"
    assert udp_message(b"\xe4\x21" + bytes(30)) is None  # KADEMLIA2_REQ has a fixed size
    assert DetectorHarness(EDonkeyDetector()).feed(udp(LAN, PEER, 4672, 4672, b"\xe4\x01"))[0]


@pytest.mark.parametrize("version", ["00000001", "6b3343cf", "ff00001d", "faceb002", "51303433"])
@pytest.mark.parametrize("first", [0xC5, 0xE3, 0xE4, 0xE5])
def test_quic_long_headers_are_not_edonkey(first, version):
    quic = bytes([first]) + bytes.fromhex(version) + b"\x08" + bytes(8) + b"\x00" + bytes(1200)
    assert udp_message(quic) is None
    assert tcp_message(quic) is None
