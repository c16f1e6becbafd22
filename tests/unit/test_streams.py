"""A TCP opening however the sender segments it (p2pwall.streams): a BitTorrent handshake
whose first byte goes alone, or in three segments, in either direction, is read as the
one handshake it is; gaps, retransmits, overlaps, expiry and the bound."""

from __future__ import annotations

from p2pwall.packet import ACK, PSH, TO_LAN, parse
from p2pwall.streams import MAX_BYTES, SECONDS, SHORT, Streams
from p2pwall.testing import Clock, DetectorHarness, tcp
from p2pwall_plugins.bittorrent import BitTorrentDetector

LAN, PEER, OTHER = "192.0.2.10", "203.0.113.5", "203.0.113.6"
HANDSHAKE = b"\x13BitTorrent protocol" + bytes(8) + b"h" * 20 + b"-qB4520-" + b"p" * 12


def harness():
    return DetectorHarness(BitTorrentDetector(), lan=("192.0.2.0/24",), names=["bittorrent"])


def segments(data: bytes, cuts, seq: int = 1000):
    """``data`` cut at ``cuts``: (sequence number, bytes) per segment."""
    out, at = [], 0
    for cut in list(cuts) + [len(data)]:
        out.append((seq + at, data[at:cut]))
        at = cut
    return out


def send(h, parts, src=LAN, dst=PEER, sport=40000, dport=6881, direction="from_lan"):
    verdicts = []
    for i, (seq, data) in enumerate(parts):
        raw = tcp(src, dst, sport, dport, data, flags=PSH | ACK, seq=seq)
        verdicts.append(h.feed(raw, direction=direction, first=i == 0))
    return verdicts


def test_a_handshake_whose_first_byte_goes_alone_is_read_whole():
    h = harness()
    first, rest = send(h, segments(HANDSHAKE, [1]))
    assert not first.drop  # one byte proves nothing yet
    assert rest.drop and rest.detector == "bittorrent" and "handshake" in rest.reason
    assert h.blocked(PEER)
    assert h.engine.all_counters()["tcp_segments_joined"] == 1


def test_a_handshake_in_three_segments_is_read_whole():
    h = harness()
    verdicts = send(h, segments(HANDSHAKE, [1, 8]))
    assert [v.drop for v in verdicts] == [False, False, True]
    assert h.blocked(PEER)


def test_a_peers_split_handshake_answer_is_read_too():
    h = DetectorHarness(BitTorrentDetector(), lan=("192.0.2.0/24",), names=["bittorrent"])
    # the client asked with the handshake (recognised); the peer answers it a byte at a time
    send(h, segments(HANDSHAKE, []))
    answer = send(h, segments(HANDSHAKE, [1, 5], seq=9000), src=PEER, dst=LAN, sport=6881, dport=40000,
                  direction=TO_LAN)
    assert [v.drop for v in answer] == [False, False, True] and answer[-1].detector == "bittorrent"


def test_a_gap_waits_and_a_retransmit_or_overlap_takes_the_newest_bytes():
    h = harness()
    parts = segments(HANDSHAKE, [1, 8])
    send(h, parts[:1])
    late = h.feed(tcp(LAN, PEER, 40000, 6881, parts[2][1], flags=PSH | ACK, seq=parts[2][0]), first=False)
    assert not late.drop and not h.blocked(PEER)  # out of order: the middle has not come
    # the middle, resent with the first byte again (an overlap), then the rest again
    again = h.feed(tcp(LAN, PEER, 40000, 6881, HANDSHAKE[:8], flags=PSH | ACK, seq=1000), first=False)
    assert not again.drop
    done = h.feed(tcp(LAN, PEER, 40000, 6881, parts[2][1], flags=PSH | ACK, seq=parts[2][0]), first=False)
    assert done.drop and h.blocked(PEER)


def test_ordinary_openings_are_left_as_they_are():
    """A long first payload starts nothing; a short one that continues into ordinary
    bytes is judged joined and earns nothing (SSH's banner, then its key exchange)."""
    h = harness()
    send(h, segments(b"GET / HTTP/1.1\r\nHost: example.org\r\n" + b"A: b\r\n" * 20 + b"\r\n", []))
    assert len(h.engine.streams) == 0
    banner = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"
    verdicts = send(h, segments(banner + b"\x00\x00\x05\xdc\x0a\x14" + bytes(200), [len(banner)]), dport=22)
    assert not any(v.drop for v in verdicts) and not h.blocked(PEER)
    assert len(h.engine.streams) == 0  # long enough: the stream is done


def test_bounded_in_streams_bytes_and_time():
    clock = Clock()
    streams = Streams(max_streams=100)
    for port in range(1000, 1300):  # a flood of short openings
        p = parse(tcp(LAN, PEER, port, 80, b"x", flags=PSH | ACK, seq=1))
        p.first = True
        streams.feed(p, clock())
    assert len(streams) == 100  # the oldest went first
    p = parse(tcp(LAN, PEER, 1299, 80, b"y" * 5000, flags=PSH | ACK, seq=2))
    p.first = False
    view = streams.feed(p, clock())
    assert len(view.data) == MAX_BYTES and view.data[:1] == b"x" and view.seq == 1 and view.first
    assert len(streams) == 99  # long enough: done
    clock.advance(SECONDS + 1)
    streams.expire(clock())
    assert len(streams) == 0
    assert SHORT > len(b"\x13BitTorrent protocol")  # the prefix a handshake is known by fits the join
