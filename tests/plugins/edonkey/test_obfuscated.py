"""Obfuscated eDonkey and Kad, built byte for byte as aMule builds them (RC4 keyed with
MD5 of the other side's user hash or Kad ID, EncryptedStreamSocket and
EncryptedDatagramSocket: ``p2pwall_lab.testbed.emule``), and the near misses and
ordinary traffic that must earn nothing."""

from __future__ import annotations

import random

from p2pwall.packet import ACK, PSH, TO_LAN
from p2pwall.testing import DetectorHarness, tcp, udp
from p2pwall_plugins.bittorrent import BitTorrentDetector
from p2pwall_lab.testbed.emule import kad_answer, kad_request, tcp_exchange
from p2pwall_plugins.edonkey import EDonkeyDetector

LAN = "192.168.1.5"


def harness(*detectors):
    return DetectorHarness(*(detectors or (EDonkeyDetector(),)), lan=("192.168.0.0/16",))


def exchange(h, peer, opening, answer, step, port=40000, dport=4662, wait=True):
    """The three steps on one connection; returns the verdict on the client's next step."""
    a, b = 1000, 50000
    h.feed(tcp(LAN, peer, port, dport, opening, flags=PSH | ACK, seq=a, ack=b))
    if answer is not None:
        h.feed(tcp(peer, LAN, dport, port, answer, flags=PSH | ACK, seq=b, ack=a + len(opening) if wait else a + 5),
               direction=TO_LAN)
    return h.feed(tcp(LAN, peer, port, dport, step, flags=PSH | ACK, seq=a + len(opening)), first=False, second=True)


def test_three_obfuscated_ed2k_exchanges_stop_the_client():
    rng = random.Random(1)
    h = harness()
    peers = [f"203.0.113.{i}" for i in (10, 11, 12)]
    verdicts = [exchange(h, p, *tcp_exchange(rng, pad_a=rng.randrange(60), pad_b=rng.randrange(60)), port=40000 + i)
                for i, p in enumerate(peers)]
    assert [v.drop for v in verdicts] == [False, False, True]
    assert verdicts[-1].detector == "edonkey" and "obfuscated" in verdicts[-1].reason
    assert h.locked(LAN) and all(h.blocked(p) for p in peers)


def test_near_misses_of_the_exchange_earn_nothing():
    rng = random.Random(2)
    for case in ("no answer", "did not wait", "not at once", "short step", "same peer"):
        h = harness()
        for i in range(4):
            opening, answer, hello = tcp_exchange(rng, pad_a=10, pad_b=10)
            peer = "203.0.113.20" if case == "same peer" else f"203.0.113.{20 + i}"
            if case == "no answer":
                answer = None
            if case == "short step":
                hello = hello[:20]
            if case == "not at once":
                h.feed(tcp(LAN, peer, 41000 + i, 4662, opening, flags=PSH | ACK, seq=1000, ack=1))
                h.feed(tcp(peer, LAN, 4662, 41000 + i, answer, flags=PSH | ACK, seq=1, ack=1000 + len(opening)),
                       direction=TO_LAN)
                h.advance(30)
                h.feed(tcp(LAN, peer, 41000 + i, 4662, hello, flags=PSH | ACK, seq=1000 + len(opening)), first=False)
                continue
            exchange(h, peer, opening, answer, hello, port=41000 + i, wait=case != "did not wait")
        assert not h.locked(LAN) and len(h.engine.peers) == 0, case


def test_an_exchange_of_mse_sizes_is_bittorrent_s_not_edonkey_s():
    """Both opening and answer of 96 bytes or more: only the MSE rule counts it (BitTorrent),
    never the eDonkey one; smaller ones only the eDonkey rule."""
    rng = random.Random(3)
    big = [tcp_exchange(rng, pad_a=120, pad_b=110) for _ in range(3)]
    h = harness()
    assert not any(exchange(h, f"203.0.113.{30 + i}", *x, port=42000 + i).drop for i, x in enumerate(big))
    assert not h.locked(LAN)
    h = harness(BitTorrentDetector(), EDonkeyDetector())
    last = [exchange(h, f"203.0.113.{30 + i}", *x, port=42000 + i) for i, x in enumerate(big)][-1]
    assert last.detector == "bittorrent"
    small = [tcp_exchange(rng, pad_a=5, pad_b=5) for _ in range(3)]
    h = harness(BitTorrentDetector(), EDonkeyDetector())
    last = [exchange(h, f"203.0.113.{40 + i}", *x, port=43000 + i) for i, x in enumerate(small)][-1]
    assert last.detector == "edonkey"


def test_kad_lookups_answered_by_four_nodes_stop_the_client():
    rng = random.Random(4)
    h = harness()
    nodes = [f"198.51.100.{i}" for i in range(20, 25)]
    for i, node in enumerate(nodes[:4]):
        assert not h.feed(udp(LAN, node, 4672, 4672 + i, kad_request(rng))).drop
        h.feed(udp(node, LAN, 4672 + i, 4672, kad_answer(rng, rng.choice((2, 4, 11)))), direction=TO_LAN)
    verdict = h.feed(udp(LAN, nodes[4], 4672, 5000, kad_request(rng)))
    assert verdict.drop and "Kad obfuscated" in verdict.reason and h.locked(LAN)
    assert all(h.blocked(n) for n in nodes)


def test_kad_near_misses_and_random_udp_earn_nothing():
    rng = random.Random(5)
    h = harness()
    for i in range(40):  # requests of other sizes, answers of the wrong size, late, or unasked
        node = f"198.51.100.{40 + i}"
        h.feed(udp(LAN, node, 4672, 6000, rng.randbytes(rng.choice((50, 52, 60)))))
        h.feed(udp(node, LAN, 6000, 4672, rng.randbytes(56)), direction=TO_LAN)
        h.feed(udp(LAN, node, 4672, 6001, kad_request(rng)))
        h.feed(udp(node, LAN, 6001, 4672, rng.randbytes(rng.choice((59, 61, 84)))), direction=TO_LAN)
        h.feed(udp(node, LAN, 6002, 4672, kad_answer(rng, 2)), direction=TO_LAN)  # no request on that flow
    assert not h.locked(LAN) and len(h.engine.peers) == 0


def test_ordinary_exchanges_earn_nothing():
    """What ordinary software sends, 5,000 connections of each: TLS (records), SSH
    (banners), HTTP (printable), length-framed binary protocols (OpenVPN over TCP,
    RPCs) to many servers; a VPN-like protocol of random bytes (the whole exchange, its
    next step at once) to two servers; random openings no one answers, or answered
    before the client finished (it did not wait); random UDP of every size to many
    hosts.  No block, no lock."""
    rng = random.Random(6)
    h = harness()

    def server(i):
        return f"198.{18 + i % 2}.{i // 256 % 256}.{i % 256 or 1}"

    for i in range(5000):
        port = 1024 + i % 60000
        body = rng.randbytes(rng.randrange(40, 250))
        tls = b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body
        exchange(h, server(i), tls, b"\x16\x03\x03" + rng.randbytes(80), rng.randbytes(120), port=port, dport=8443)
        exchange(h, server(i + 1), b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", b"SSH-2.0-OpenSSH_8.4\r\n",
                 rng.randbytes(1000), port=port + 1, dport=2222)
        framed = rng.randbytes(rng.randrange(12, 200))
        exchange(h, server(i + 2), (len(framed)).to_bytes(2, "big") + framed,
                 (60).to_bytes(2, "big") + rng.randbytes(60), rng.randbytes(90), port=port + 2, dport=1194)
        vpn = "198.51.100.200" if i % 2 else "198.51.100.201"
        exchange(h, vpn, rng.randbytes(rng.randrange(12, 268)), rng.randbytes(rng.randrange(6, 262)),
                 rng.randbytes(rng.randrange(40, 1400)), port=port + 3, dport=5555)
        exchange(h, server(i + 3), rng.randbytes(rng.randrange(12, 268)), None, rng.randbytes(100), port=port + 4)
        exchange(h, server(i + 4), rng.randbytes(rng.randrange(12, 268)), rng.randbytes(50), rng.randbytes(100),
                 port=port + 5, wait=False)
        h.feed(udp(LAN, server(i), 5000 + i % 1000, 7000, rng.randbytes(rng.randrange(1, 1400))))
        h.feed(udp(server(i), LAN, 7000, 5000 + i % 1000, rng.randbytes(rng.randrange(1, 1400))), direction=TO_LAN)
    assert not h.locked(LAN), h.engine.snapshot()["locks"]
    assert len(h.engine.peers) == 0


def test_whatsapp_openings_are_not_obfuscated_ed2k():
    """WhatsApp's Noise header (``WA`` and a version, random keys behind it) to three
    chat servers on 5222, answered and followed at once: not counted (the same test as
    MSE's)."""
    rng = random.Random(21)
    h = harness()
    for i in range(3):
        opening = b"WA\x06\x03" + rng.randbytes(rng.randrange(60, 90))
        verdict = exchange(h, f"203.0.113.{70 + i}", opening, rng.randbytes(rng.randrange(40, 90)),
                           rng.randbytes(120), port=42000 + i, dport=5222)
        assert not verdict.drop
    assert not h.locked(LAN)
