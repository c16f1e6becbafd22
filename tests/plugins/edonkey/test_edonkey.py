import struct

import pytest

from p2pwall.testing import DetectorHarness, tcp, udp
from p2pwall_plugins.edonkey import EDonkeyDetector, tcp_message, udp_message

LAN, PEER = "192.168.1.5", "203.0.113.9"


def frame(marker, body):
    return bytes([marker]) + struct.pack("<I", len(body)) + body


HELLO = frame(0xE3, b"\x01\x10" + bytes(16) + bytes(6) + b"\x00\x00\x00\x00")


def test_tcp_hello_and_friends():
    assert tcp_message(HELLO) == "eDonkey TCP hello"
    assert tcp_message(frame(0xC5, b"\x01\x10" + bytes(24))) == "eMule TCP hello"
    assert tcp_message(frame(0xD4, b"\x40\x78\x9c" + bytes(30))) == "eMule packed TCP"
    assert tcp_message(frame(0xD4, b"\x40" + bytes(30))) is None  # packed, but no zlib header
    assert tcp_message(frame(0xC5, b"\x01" + bytes(10))) is None  # no user hash
    x = DetectorHarness(EDonkeyDetector())
    assert x.feed(tcp(LAN, PEER, 40000, 4662, HELLO)).drop
    assert x.blocked(PEER)
    y = DetectorHarness(EDonkeyDetector())
    assert not y.feed(tcp(LAN, PEER, 40000, 4662, HELLO), first=False).drop or not y.blocked(PEER)
    assert not y.blocked(PEER)  # a hello in the middle of a connection (a POST body, say) is nothing


@pytest.mark.parametrize("data", [
    frame(0xE3, b"\x01\x10" + bytes(16))[:-1],  # length does not match
    frame(0xE3, b"\x01\x05" + bytes(16)),  # hello without a 16-byte hash
    bytes([0xE3]) + struct.pack("<I", 0),
    b"\xe3hello world",
    b"GET / HTTP/1.1\r\n\r\n",
])
def test_tcp_near_misses(data):
    assert tcp_message(data) is None


def test_udp_strong_forms_act_at_once():
    assert udp_message(b"\xe4\x01") == ("Kad UDP", True)  # Kad2 bootstrap request
    assert udp_message(b"\xe4\x60") == ("Kad UDP", True)
    assert udp_message(b"\xe3\x96" + bytes(4)) == ("eDonkey UDP", True)
    assert udp_message(b"\xc5\x92") == ("eDonkey UDP", True)
    assert udp_message(b"\xe4\x21" + bytes(33)) == ("Kad UDP", True)
    assert udp_message(b"\xe5\x11\x78\xda" + bytes(20)) == ("Kad packed UDP", True)
    assert udp_message(b"\xe5\x11" + bytes(20)) is None  # packed, but no zlib header
    assert udp_message(b"\xe4\x21" + bytes(30)) is None  # KADEMLIA2_REQ has a fixed size
    assert DetectorHarness(EDonkeyDetector()).feed(udp(LAN, PEER, 4672, 4672, b"\xe4\x01")).drop


def test_udp_weak_forms_need_a_second_message_or_the_peers_answer():
    hello = b"\xe4\x11" + bytes(30)  # Kad2 hello request: variable length
    search = b"\xe4\x33" + bytes(30)
    assert udp_message(hello) == ("Kad UDP", False)
    x = DetectorHarness(EDonkeyDetector())
    assert not x.feed(udp(LAN, PEER, 4672, 4672, hello)).drop
    assert not x.feed(udp(LAN, PEER, 4672, 4672, hello)).drop  # the same one again (a retransmission)
    assert not x.blocked(PEER)
    assert x.feed(udp(LAN, PEER, 4672, 4672, search)).drop and x.blocked(PEER)
    y = DetectorHarness(EDonkeyDetector())
    assert not y.feed(udp(LAN, PEER, 4672, 4672, hello)).drop
    from p2pwall import TO_LAN

    assert y.feed(udp(PEER, LAN, 4672, 4672, b"\xe4\x19" + bytes(30)), direction=TO_LAN).drop
    # the peer answered in kind, but its answer is the only evidence (the request alone was
    # not enough to act on): blocked for the client that asked, not for the whole LAN
    entry = y.peer(PEER)
    assert entry is not None and not entry.lanwide and entry.clients == (bytes([192, 168, 1, 5]),)
    z = DetectorHarness(EDonkeyDetector())  # a request that is evidence itself, then the answer
    assert z.feed(udp(LAN, PEER, 4672, 4672, b"\xe4\x01")).drop and not z.peer(PEER).lanwide
    z.feed(udp(PEER, LAN, 4672, 4672, b"\xe4\x19" + bytes(30)), direction=TO_LAN)
    assert z.peer(PEER).lanwide  # the client asked in P2P and the peer answered in P2P: LAN-wide


def test_ordinary_service_ports_are_never_read():
    x = DetectorHarness(EDonkeyDetector())
    for port in (53, 123, 443, 500, 4500, 3478):
        assert not x.feed(udp(LAN, PEER, 40000, port, b"\xe4\x01")).drop


@pytest.mark.parametrize("version", ["00000001", "6b3343cf", "ff00001d", "faceb002", "51303433"])
@pytest.mark.parametrize("first", [0xC5, 0xE3, 0xE4, 0xE5])
def test_quic_long_headers_are_not_edonkey(first, version):
    quic = bytes([first]) + bytes.fromhex(version) + b"\x08" + bytes(8) + b"\x00" + bytes(1200)
    assert udp_message(quic) is None
    assert tcp_message(quic) is None
