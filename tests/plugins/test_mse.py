"""Encrypted BitTorrent (MSE) by its exchange, per client; and the precision cases:
ordinary encrypted TCP from hosts that run no P2P, 12,000 connections, blocks nothing,
and a proxy whose openings and answers look like MSE's completes no exchange."""

import random

from p2pwall import TO_LAN
from p2pwall.testing import DetectorHarness, tcp
from p2pwall_plugins.bittorrent import BitTorrentDetector
from p2pwall_plugins.bittorrent.mse import STEP_SECONDS, mse_shaped

LAN = "192.168.1.5"


def handshake(rng, pad=None):
    return rng.randbytes(96 + (rng.randrange(0, 513) if pad is None else pad))


def exchange(h, client, peer, sport, dport, opening, answer=None, second=None, wait=0.0, ack_shift=0):
    """One connection as the kernel queues it: the client's opening (seq 1000), the peer's
    first payload back (acknowledging the opening, or ``ack_shift`` more), and the
    client's next payload ``wait`` seconds later; the verdict of the last one fed."""
    verdict = h.feed(tcp(client, peer, sport, dport, opening, seq=1000))
    end = 1000 + len(opening)
    if answer is not None:
        verdict = h.feed(tcp(peer, client, dport, sport, answer, seq=7000, ack=end + ack_shift), direction=TO_LAN)
    if second is not None:
        h.advance(wait)
        verdict = h.feed(tcp(client, peer, sport, dport, second, seq=end, ack=7000 + len(answer or b"")), first=False,
                         second=True)
    return verdict


def mse(h, rng, client, peer, sport, dport=6881, **kw):
    """A whole MSE opening: Ya+PadA, Yb+PadB, then the initiator's hashes and negotiation."""
    return exchange(h, client, peer, sport, dport, handshake(rng), handshake(rng),
                    rng.randbytes(rng.randrange(56, 700)), **kw)


def test_three_exchanges_with_three_peers_lock_the_client_and_block_them_for_it():
    rng = random.Random(1)
    h = DetectorHarness(BitTorrentDetector())
    peers = ["203.0.113.21", "203.0.113.22", "203.0.113.23"]
    assert not mse(h, rng, LAN, peers[0], 40000, 51413).drop
    assert not mse(h, rng, LAN, peers[1], 40001, 6881).drop
    assert not h.locked(LAN) and not h.blocked(peers[0])
    assert mse(h, rng, LAN, peers[2], 40002, 6889).drop  # the third exchange's second step
    assert h.locked(LAN)
    for p in peers:
        entry = h.peer(p)
        assert entry is not None and not entry.lanwide and entry.clients == (bytes([192, 168, 1, 5]),)
    assert not h.feed(tcp("192.168.1.6", peers[0], 40000, 51413, b"GET / HTTP/1.1\r\n\r\n")).drop


def test_openings_answers_and_steps_that_are_not_mses_exchange_earn_nothing():
    rng = random.Random(2)
    h = DetectorHarness(BitTorrentDetector())
    n = 0

    def peer():
        nonlocal n
        n += 1
        return f"203.0.113.{30 + n}", 41000 + n

    for _ in range(4):  # openings nobody answers
        exchange(h, LAN, *peer(), 6881, handshake(rng))
    for _ in range(4):  # answered, and then nothing more: a proxy's one request (shadowsocks)
        exchange(h, LAN, *peer(), 8388, handshake(rng), handshake(rng))
    for _ in range(4):  # the client did not wait: the answer acknowledges more than its opening
        exchange(h, LAN, *peer(), 6881, handshake(rng), handshake(rng), rng.randbytes(200), ack_shift=100)
    for _ in range(4):  # the next step comes, but not at once (a user's next request)
        exchange(h, LAN, *peer(), 6881, handshake(rng), handshake(rng), rng.randbytes(200), wait=STEP_SECONDS + 1)
    for _ in range(4):  # too short a next step
        exchange(h, LAN, *peer(), 6881, handshake(rng), handshake(rng), rng.randbytes(30))
    for big in (rng.randbytes(1448), b"\x17\x03\x03" + rng.randbytes(300)):  # answers not of MSE's shape
        for _ in range(2):
            exchange(h, LAN, *peer(), 6881, handshake(rng), big, rng.randbytes(200))
    for port in (443, 22):  # service ports
        for _ in range(3):
            mse(h, rng, LAN, *peer(), port)
    for _ in range(5):  # the same peer, many times
        mse(h, rng, LAN, "203.0.113.99", rng.randrange(42000, 60000))
    mse(h, rng, LAN, "203.0.113.98", 42999)  # two peers in all
    assert not h.locked(LAN) and len(h.engine.peers) == 0


def test_the_window_forgets():
    rng = random.Random(3)
    h = DetectorHarness(BitTorrentDetector())
    mse(h, rng, LAN, "203.0.113.70", 40000)
    mse(h, rng, LAN, "203.0.113.71", 40001)
    h.advance(200)
    mse(h, rng, LAN, "203.0.113.72", 40002)
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
        answer = handshake(rng) if kind == 2 else tls_hello(rng) if kind == 0 else b"SSH-2.0-x\r\n" * (kind == 1)
        exchange(h, client, server, rng.randrange(1024, 65535), port, data, answer or None,
                 rng.randbytes(rng.randrange(60, 400)) if kind in (0, 2) else None)
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
    from p2pwall_plugins._common import whatsapp_opening

    rng = random.Random(9)
    h = DetectorHarness(BitTorrentDetector())
    for i in range(6):
        hello = rng.randbytes(rng.randrange(150, 400))  # ephemeral, encrypted static, payload
        data = (b"ED\x00\x01\x00\x00\x04" + b"\x08\x01\x10\x02" if i % 2 else b"") + b"WA\x06\x03" + \
            len(hello).to_bytes(3, "big") + hello
        assert mse_shaped(data[4:]) and whatsapp_opening(data)
        assert not exchange(h, LAN, f"203.0.113.{60 + i}", 40000 + i, 5222, data, handshake(rng),
                            rng.randbytes(200)).drop
    assert not h.locked(LAN)
