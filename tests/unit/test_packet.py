import struct

from hypothesis import given, settings, strategies as st

from p2pwall.packet import SYN, parse
from p2pwall.testing import tcp, udp


def test_ipv4_udp():
    p = parse(udp("192.168.1.5", "203.0.113.9", 4000, 1214, b"hello"))
    assert (p.version, p.proto, p.src_ip, p.dst_ip, p.sport, p.dport) == (4, 17, "192.168.1.5", "203.0.113.9", 4000, 1214)
    assert bytes(p.payload) == b"hello" and p.data == b"hello"


def test_ipv4_tcp_syn_and_payload():
    syn = parse(tcp("192.168.1.5", "203.0.113.9", 4000, 80))
    assert syn.is_syn and syn.flags == SYN and not len(syn.payload)
    data = parse(tcp("192.168.1.5", "203.0.113.9", 4000, 80, b"GET / HTTP/1.1\r\n"))
    assert not data.is_syn and data.data.startswith(b"GET /")


def test_ipv6_with_extension_headers():
    raw = udp("fd00::5", "2001:db8::9", 4000, 53, b"q")
    # insert a hop-by-hop (8 bytes) and a destination-options header before UDP
    hbh = bytes([60, 0]) + b"\x01\x04\x00\x00\x00\x00"
    dst = bytes([17, 0]) + b"\x01\x04\x00\x00\x00\x00"
    body = hbh + dst + raw[40:]
    head = bytearray(raw[:40])
    head[6] = 0
    struct.pack_into("!H", head, 4, len(body))
    p = parse(bytes(head) + body)
    assert p.proto == 17 and p.dport == 53 and p.data == b"q" and p.src_ip == "fd00::5"


def test_non_first_fragment_has_no_ports():
    raw = bytearray(udp("192.168.1.5", "203.0.113.9", 4000, 1214, b"x" * 20))
    struct.pack_into("!H", raw, 6, 100)  # offset 800 bytes
    p = parse(bytes(raw))
    assert p.fragment and p.sport == 0 and not len(p.payload)


def test_garbage_is_none_not_an_exception():
    for raw in (b"", b"\x45", b"\x45" + b"\x00" * 10, b"\x60" * 39, b"\x70" * 60,
                bytes([0x4F]) + b"\x00" * 19, udp("1.2.3.4", "5.6.7.8", 1, 2)[:24]):
        assert parse(raw) is None


def test_truncated_copy_keeps_what_it_has():
    raw = udp("192.168.1.5", "203.0.113.9", 4000, 1214, b"abcdef")
    p = parse(raw[:-2])
    assert p is not None and p.data == b"abcd"


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=120))
def test_parse_never_raises(raw):
    parse(raw)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 79), st.integers(0, 255))
def test_parse_never_raises_on_mutated_packets(payload, where, value):
    raw = bytearray(tcp("fd00::1", "2001:db8::1", 1, 2, payload) if where % 2 else udp("10.0.0.1", "1.2.3.4", 1, 2, payload))
    raw[where % len(raw)] = value
    parse(bytes(raw))
