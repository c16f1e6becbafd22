"""Capture reading: pcap (both byte orders, micro and nano seconds), pcapng, and the
Ethernet (VLAN), raw IP, Linux cooked (SLL, SLL2) and loopback link types."""

import struct

import pytest

from p2pwall.pcap import PcapError, PcapSource, read
from p2pwall.testing import udp

IP = udp("192.168.1.5", "203.0.113.9", 1, 2, b"hello")


def pcap_file(tmp_path, linktype, frames, endian="<", nano=False):
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    data = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for i, frame in enumerate(frames):
        data += struct.pack(endian + "IIII", 100 + i, 500, len(frame), len(frame)) + frame
    path = tmp_path / "c.pcap"
    path.write_bytes(data)
    return str(path)


ETH = b"\x00" * 12 + b"\x08\x00"
VLAN = b"\x00" * 12 + b"\x81\x00\x00\x05\x08\x00"
SLL = b"\x00" * 14 + b"\x08\x00"
SLL2 = b"\x08\x00" + b"\x00" * 18
NULL = struct.pack("<I", 2)


@pytest.mark.parametrize("linktype, head", [(1, ETH), (1, VLAN), (101, b""), (228, b""), (113, SLL),
                                            (276, SLL2), (0, NULL)])
def test_link_types(tmp_path, linktype, head):
    records = list(read(pcap_file(tmp_path, linktype, [head + IP])))
    assert records == [(100.0005, IP)]


def test_big_endian_nanoseconds_and_non_ip(tmp_path):
    path = pcap_file(tmp_path, 1, [ETH + IP, b"\x00" * 12 + b"\x08\x06" + b"arp"], endian=">", nano=True)
    (ts, raw), (_, arp) = list(PcapSource(path))
    assert raw == IP and ts == pytest.approx(100.0000005) and arp is None


def test_pcapng(tmp_path):
    def block(btype, body):
        body += b"\x00" * (-len(body) % 4)
        return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = block(1, struct.pack("<HHI", 1, 0, 65535) + struct.pack("<HHB3x", 9, 1, 9) + b"\x00" * 4)
    epb = block(6, struct.pack("<IIIII", 0, 0, 2_000_000_000, len(ETH + IP), len(ETH + IP)) + ETH + IP)
    path = tmp_path / "c.pcapng"
    path.write_bytes(shb + idb + epb)
    assert list(read(str(path))) == [(2.0, IP)]


@pytest.mark.parametrize("content, message", [(b"", "too short"), (b"\x00" * 40, "not a pcap"),
                                              (b"\xd4\xc3\xb2\xa1" + b"\x00" * 4, "truncated pcap header")])
def test_malformed(tmp_path, content, message):
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    with pytest.raises(PcapError, match=message):
        list(read(str(path)))


def test_truncated_record(tmp_path):
    path = pcap_file(tmp_path, 1, [ETH + IP])
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-3])
    with pytest.raises(PcapError, match="truncated after packet 0"):
        list(read(path))
