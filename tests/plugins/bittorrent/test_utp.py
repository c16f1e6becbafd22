"""What uTP carries, read from libtorrent-rasterbar's own datagrams (captured in the lab:
``tests/captures/libtorrent-utp*.pcap``): the handshake and MSE's exchange are found in
ST_DATA even when the SYN went by unseen, however the handshake is split."""

from __future__ import annotations

import struct
from pathlib import Path

from p2pwall.packet import FROM_LAN, TO_LAN, parse
from p2pwall.pcap import read
from p2pwall.testing import DetectorHarness, udp
from p2pwall_plugins.bittorrent import BitTorrentDetector, utp

CAPTURES = Path(__file__).parents[2] / "captures"
LAN_NET = "192.0.2.0/24"
LAN = "192.0.2.10"
SEEDERS = {"203.0.113.2", "203.0.113.4", "203.0.113.5"}


def harness():
    return DetectorHarness(BitTorrentDetector(), lan=(LAN_NET,))


def replay(x, name: str, skip_syn: bool = True) -> list:
    """Feed a capture to the harness, its datagrams in order (the SYNs left out: as if
    the kernel had let them by), the clock following the capture's; the verdicts."""
    verdicts = []
    start = None
    for ts, raw in read(str(CAPTURES / name)):
        packet = parse(raw)
        if packet is None or (skip_syn and packet.payload[:1] == b"\x41"):
            continue
        start = ts if start is None else start
        x.clock.now = 1000.0 + (ts - start)
        verdicts.append(x.feed(raw, FROM_LAN if packet.src.startswith(b"\xc0\x00\x02") else TO_LAN))
    return verdicts


def test_libtorrent_syn_is_recognised():
    x = harness()
    verdicts = replay(x, "libtorrent-utp.pcap", skip_syn=False)
    assert all(x.blocked(ip) for ip in SEEDERS)
    assert [v.reason for v in verdicts[:3]] == ["BitTorrent uTP"] * 3  # its three SYNs (window 0)


def test_handshake_over_utp_without_the_syn():
    x = harness()
    verdicts = replay(x, "libtorrent-utp.pcap")
    assert all(x.blocked(ip) for ip in SEEDERS)
    assert {v.reason for v in verdicts if v.drop} >= {"BitTorrent handshake over uTP"}


def test_mse_over_utp_without_the_syn():
    """libtorrent with encryption required: its openings take two datagrams (548-byte
    packets at first); the exchange with three seeders locks the client."""
    x = harness()
    replay(x, "libtorrent-utp-mse.pcap")
    assert all(x.blocked(ip) for ip in SEEDERS)
    assert x.locked(LAN)
    assert "MSE" in x.lock(LAN).reason


def _first_handshake_datagram() -> bytes:
    for _, raw in read(str(CAPTURES / "libtorrent-utp.pcap")):
        packet = parse(raw)
        found = utp.data(packet.payload) if packet is not None and packet.src == bytes([192, 0, 2, 10]) else None
        if found and found[2].startswith(b"\x13BitTorrent protocol"):
            return bytes(packet.payload)
    raise AssertionError("no handshake in the capture")


def _pieces(datagram: bytes, cuts: list[int]) -> list[bytes]:
    header, payload = datagram[:20], datagram[20:]
    seq = struct.unpack_from("!H", header, 16)[0]
    bounds = [0, *cuts, len(payload)]
    out = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        out.append(header[:16] + struct.pack("!H", (seq + i) & 0xFFFF) + header[18:] + payload[a:b])
    return out


def test_split_handshakes_over_utp():
    datagram = _first_handshake_datagram()
    assert datagram[1] == 0  # no extension: the payload starts at 20
    for cuts in ([1], [4, 13], [19]):
        x = harness()
        pieces = _pieces(datagram, cuts)
        verdicts = [x.feed(udp(LAN, "203.0.113.9", 6881, 6881, p)) for p in pieces]
        assert [v.drop for v in verdicts] == [False] * (len(pieces) - 1) + [True], cuts
        assert x.blocked("203.0.113.9")


def test_split_pieces_out_of_sequence_earn_nothing():
    datagram = _first_handshake_datagram()
    x = harness()
    first, rest = _pieces(datagram, [1])
    rest = rest[:16] + struct.pack("!H", (struct.unpack_from("!H", rest, 16)[0] + 5) & 0xFFFF) + rest[18:]
    assert not x.feed(udp(LAN, "203.0.113.9", 6881, 6881, first)).drop
    assert not x.feed(udp(LAN, "203.0.113.9", 6881, 6881, rest)).drop  # not the next datagram
    assert not x.blocked("203.0.113.9")


def test_a_handshake_reply_over_utp_blocks_the_peer():
    datagram = _first_handshake_datagram()
    x = harness()
    x.feed(udp(LAN, "203.0.113.9", 6881, 6881, datagram))
    assert x.feed(udp("203.0.113.9", LAN, 6881, 6881, datagram), TO_LAN).drop
    assert x.blocked("203.0.113.9")


def test_other_datagrams_starting_0x01_are_not_utp_data():
    x = harness()
    wireguard = b"\x01\x00\x00\x00" + bytes(range(144))  # a WireGuard handshake initiation
    assert not x.feed(udp(LAN, "203.0.113.9", 40000, 51820, wireguard)).drop
    assert utp.data(b"\x01\x05" + bytes(40)) is None  # no such extension
    assert utp.data(b"\x01\x01" + bytes(18) + b"\x00\x40") is None  # an extension longer than the datagram
    assert not x.blocked("203.0.113.9")


ANNOUNCE = b"GET /announce?info_hash=%12%34&peer_id=-qB4520-abc&port=6881&left=0 HTTP/1.1\r\nHost: t\r\n\r\n"


def _locked_for_bittorrent(x):
    from p2pwall.testing import tcp

    assert x.feed(tcp(LAN, "198.51.100.7", 50001, 6969, ANNOUNCE)).drop
    assert x.locked(LAN)


def test_a_client_locked_for_bittorrent_loses_its_udp_but_the_service_ports():
    x = harness()
    _locked_for_bittorrent(x)
    utp_data = _first_handshake_datagram()[:20] + b"\x00" * 40  # any datagram to a peer: uTP, or anything
    assert x.feed(udp(LAN, "203.0.113.77", 6881, 51413, utp_data)).reason == "client locked"
    assert x.feed(udp(LAN, "203.0.113.77", 40000, 9999, b"hello")).reason == "client locked"
    for port in (53, 123, 443, 3478):  # DNS, NTP, QUIC, STUN go on
        assert not x.feed(udp(LAN, "203.0.113.78", 40000, port, b"\x00" * 30)).drop, port
    assert not x.feed(udp("192.0.2.11", "203.0.113.77", 6881, 51413, utp_data)).drop  # another host: untouched
    x.advance(121)  # the lock's time is over
    assert not x.feed(udp(LAN, "203.0.113.79", 40000, 9999, b"hello")).drop


def test_a_lock_that_does_not_take_udp_leaves_it():
    x = DetectorHarness(BitTorrentDetector(), lan=(LAN_NET,))
    x.engine.ledger.lock(__import__("p2pwall.records", fromlist=["Record"]).Record(
        "lock", bytes([192, 0, 2, 10]), None, 60, "fasttrack", "FastTrack"))
    assert x.locked(LAN)
    assert not x.feed(udp(LAN, "203.0.113.77", 40000, 9999, b"hello")).drop


def test_udp_locking_is_declared_by_the_detector_and_follows_its_lock_switch():
    from p2pwall.testing import detector_set

    assert detector_set(BitTorrentDetector()).udp_locking() == {"bittorrent"}
    off = DetectorHarness(BitTorrentDetector(), lan=(LAN_NET,), config={"detectors": {"bittorrent": {"lock": False}}})
    assert off.detectors.udp_locking() == frozenset()
