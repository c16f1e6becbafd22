"""Encrypted BitTorrent (MSE) by its shape, per client; and the precision case: ordinary
encrypted TCP from hosts that run no P2P, 12,000 connections, blocks nothing."""

import random

from p2pwall.testing import DetectorHarness, tcp
from p2pwall_plugins.bittorrent import BitTorrentDetector
from p2pwall_plugins.bittorrent.mse import mse_shaped

LAN = "192.168.1.5"


def handshake(rng, pad=None):
    return rng.randbytes(96 + (rng.randrange(0, 513) if pad is None else pad))


def test_three_encrypted_handshakes_to_three_peers_lock_the_client_and_block_them_for_it():
    rng = random.Random(1)
    h = DetectorHarness(BitTorrentDetector())
    peers = ["203.0.113.21", "203.0.113.22", "203.0.113.23"]
    assert not h.feed(tcp(LAN, peers[0], 40000, 51413, handshake(rng))).drop
    assert not h.feed(tcp(LAN, peers[1], 40001, 6881, handshake(rng))).drop
    assert not h.locked(LAN) and not h.blocked(peers[0])
    assert h.feed(tcp(LAN, peers[2], 40002, 6889, handshake(rng))).drop
    assert h.locked(LAN)
    for p in peers:
        entry = h.peer(p)
        assert entry is not None and not entry.lanwide and entry.clients == (bytes([192, 168, 1, 5]),)
    assert not h.feed(tcp("192.168.1.6", peers[0], 40000, 51413, b"GET / HTTP/1.1\r\n\r\n")).drop


def test_fewer_peers_the_same_peer_service_ports_and_later_payloads_earn_nothing():
    rng = random.Random(2)
    h = DetectorHarness(BitTorrentDetector())
    for _ in range(5):  # one peer, many times
        h.feed(tcp(LAN, "203.0.113.30", rng.randrange(40000, 60000), 6881, handshake(rng)))
    h.feed(tcp(LAN, "203.0.113.31", 40001, 6881, handshake(rng)))  # two peers in all
    for i in range(5):  # a third and more, but on service ports
        h.feed(tcp(LAN, f"203.0.113.{40 + i}", 40002 + i, 443, handshake(rng)))
        h.feed(tcp(LAN, f"203.0.113.{50 + i}", 40010 + i, 22, handshake(rng)))
    for i in range(5):  # later payloads of connections (not the first)
        h.feed(tcp(LAN, f"203.0.113.{60 + i}", 40020 + i, 6881, handshake(rng)), first=False)
    assert not h.locked(LAN) and len(h.engine.peers) == 0


def test_the_window_forgets():
    rng = random.Random(3)
    h = DetectorHarness(BitTorrentDetector())
    h.feed(tcp(LAN, "203.0.113.70", 40000, 6881, handshake(rng)))
    h.feed(tcp(LAN, "203.0.113.71", 40001, 6881, handshake(rng)))
    h.advance(200)
    h.feed(tcp(LAN, "203.0.113.72", 40002, 6881, handshake(rng)))
    assert not h.locked(LAN)


def tls_hello(rng):
    body = rng.randbytes(rng.randrange(200, 520))
    return bytes([0x16, 3, 1]) + len(body).to_bytes(2, "big") + bytes([1]) + body


def test_ordinary_encrypted_tcp_blocks_nothing_and_locks_nobody():
    rng = random.Random(4)
    h = DetectorHarness(BitTorrentDetector())
    hosts = [f"192.168.{i // 200}.{i % 200 + 1}" for i in range(400)]
    vpn_servers = ["198.51.100.7", "198.51.100.8"]
    n = 0
    for i in range(12_000):
        client = rng.choice(hosts)
        kind = i % 4
        if kind == 0:  # TLS 1.2/1.3 to many servers, on 443 and on high ports
            server, port, data = f"203.0.113.{rng.randrange(1, 255)}", rng.choice((443, 8443, 9443, 50443)), tls_hello(rng)
        elif kind == 1:  # SSH, on 22 and on high ports
            server, port = f"198.51.100.{rng.randrange(1, 255)}", rng.choice((22, 2222, 22022))
            data = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"
        elif kind == 2:  # a VPN-like protocol with a random first payload, to 443 and to high ports
            server, port, data = rng.choice(vpn_servers), rng.choice((443, 1194, 51820, 40000)), handshake(rng)
        else:  # the web
            server, port = f"203.0.113.{rng.randrange(1, 255)}", 80
            data = b"GET /index.html HTTP/1.1\r\nHost: example\r\nUser-Agent: Mozilla/5.0\r\n\r\n"
        h.feed(tcp(client, server, rng.randrange(1024, 65535), port, data))
        n += 1
    assert n == 12_000 and len(h.engine.peers) == 0 and len(h.engine.locks) == 0


def test_the_shape():
    rng = random.Random(5)
    assert mse_shaped(handshake(rng, 0)) and mse_shaped(handshake(rng, 512))
    assert not mse_shaped(rng.randbytes(95)) and not mse_shaped(rng.randbytes(609))
    assert not mse_shaped(tls_hello(rng)) and not mse_shaped(b"A" * 200)
    assert not mse_shaped(b"GET / HTTP/1.1\r\n" + b"x" * 200)


def test_whatsapp_openings_are_not_mse():
    """WhatsApp's Noise connection (its spec: the ``WA`` header and version, 3-byte frame
    lengths, a ClientHello of random keys) to three chat servers on 5222: not counted."""
    from p2pwall_plugins.bittorrent.mse import whatsapp_opening

    rng = random.Random(9)
    h = DetectorHarness(BitTorrentDetector())
    for i in range(6):
        hello = rng.randbytes(rng.randrange(150, 400))  # ephemeral, encrypted static, payload
        data = (b"ED\x00\x01\x00\x00\x04" + b"\x08\x01\x10\x02" if i % 2 else b"") + b"WA\x06\x03" + \
            len(hello).to_bytes(3, "big") + hello
        assert mse_shaped(data[4:]) and whatsapp_opening(data)
        assert not h.feed(tcp(LAN, f"203.0.113.{60 + i}", 40000 + i, 5222, data)).drop
    assert not h.locked(LAN)
