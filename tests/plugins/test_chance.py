"""Ordinary protocols with randomised fields, 100,000 datagrams of each, through every
built-in detector and the example one: not one block, not one lock, not one drop.

Each datagram is its own flow (a random LAN client, outside address and source port),
as a busy LAN produces them; a long flow shows the detectors only its first datagrams
(the kernel's connbytes limit), which the per-flow case below covers.  The measured
chance rates in the detectors' docstrings come from this generator."""

import random
import struct

import pytest

from p2pwall import plugins
from p2pwall.testing import DetectorHarness, tcp, udp

N = 100_000


def dns(rng):
    labels = b"".join(bytes([n]) + rng.randbytes(n).hex()[:n].encode() for n in (rng.randrange(3, 12), 3))
    return 53, struct.pack("!HHHHHH", rng.getrandbits(16), 0x0100, 1, 0, 0, 0) + labels + b"\x00\x00\x01\x00\x01"


def ike(rng):
    body = rng.randbytes(rng.randrange(200, 500))
    header = rng.randbytes(8) + bytes(8) + bytes([33, 0x20, 34, 0x08]) + bytes(4) + struct.pack("!I", 28 + len(body))
    return rng.choice((500, 4500)), (bytes(4) if rng.random() < 0.5 else b"") + header + body


def quic(rng):
    dcid, scid = rng.randbytes(8), rng.randbytes(rng.choice((0, 8, 20)))
    first = 0xC0 | rng.getrandbits(4)
    return 443, bytes([first]) + b"\x00\x00\x00\x01" + bytes([8]) + dcid + bytes([len(scid)]) + scid + \
        rng.randbytes(rng.randrange(1150, 1250))


def stun(rng):
    attrs = rng.randbytes(rng.choice((0, 8, 24, 44)))
    return rng.choice((3478, 19302)), struct.pack("!HHI", 0x0001, len(attrs), 0x2112A442) + rng.randbytes(12) + attrs


def rtp(rng):
    return rng.randrange(10000, 60000), struct.pack("!BBHII", 0x80, rng.choice((0, 8, 96, 111)), rng.getrandbits(16),
                                                    rng.getrandbits(32), rng.getrandbits(32)) + \
        rng.randbytes(rng.choice((20, 160, 320, 960)))


def random_payload(rng):
    return rng.randrange(1024, 65536), rng.randbytes(rng.randrange(1, 1400))


KINDS = {"dns": dns, "ikev2": ike, "quic": quic, "stun": stun, "rtp": rtp, "random": random_payload}


@pytest.fixture(scope="module")
def every_detector():
    found = plugins.load()
    return lambda: DetectorHarness(*[d.plugin for d in found.detectors], names=found.names(),
                                   lan=("192.168.0.0/16",))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_ordinary_datagrams_block_nothing(kind, every_detector):
    h = every_detector()
    rng = random.Random(kind)
    make = KINDS[kind]
    drops = 0
    for i in range(N):
        port, payload = make(rng)
        client = "192.168.%d.%d" % (rng.randrange(256), rng.randrange(1, 255))
        server = "203.0.113.%d" % rng.randrange(1, 255) if i % 2 else "198.51.100.%d" % rng.randrange(1, 255)
        drops += h.feed(udp(client, server, rng.randrange(1024, 65536), port, payload)).drop
    assert len(h.engine.peers) == 0 and len(h.engine.locks) == 0 and drops == 0, \
        f"{kind}: {len(h.engine.peers)} peers, {drops} drops in {N}: {h.engine.all_counters()}"


def test_one_long_flow_of_random_datagrams_blocks_nothing(every_detector):
    """An obfuscated VPN: one flow, random datagrams; only its first 8 reach the engine live,
    but even 2,000 of them in a row earn nothing."""
    h = every_detector()
    rng = random.Random(3)
    for _ in range(2000):
        h.feed(udp("192.168.1.5", "203.0.113.5", 40000, 51000, rng.randbytes(rng.randrange(40, 1400))))
    assert len(h.engine.peers) == 0


def test_tls_segments_block_nothing(every_detector):
    h = every_detector()
    rng = random.Random(7)
    for i in range(20_000):
        record = bytes([0x17, 3, 3]) + rng.randbytes(rng.randrange(100, 1400))
        h.feed(tcp("192.168.1.%d" % rng.randrange(1, 255), "203.0.113.%d" % rng.randrange(1, 255),
                   rng.randrange(1024, 65536), 443, record), first=i % 4 == 0)
        h.feed(tcp("192.168.1.9", "203.0.113.9", 40000, 443, rng.randbytes(rng.randrange(100, 1400))), first=False)
    assert len(h.engine.peers) == 0


def test_random_exchanges_shaped_like_utp_data_block_nothing(every_detector):
    """A UDP protocol whose every datagram starts like uTP's ST_DATA (0x01, no extension)
    and is random after it, MSE's sizes included: 20,000 three-datagram exchanges (an
    opening, an answer, a next datagram) from one client to 50 servers.  Only uTP's own
    numbering (the answer acknowledging the opening, the next datagram continuing it)
    makes such an exchange MSE's, and random numbers do so about once in 2^32."""
    h = every_detector()
    rng = random.Random(11)
    for i in range(20_000):
        server, sport = "203.0.113.%d" % (i % 50 + 1), rng.randrange(1024, 65536)
        for direction, size in ((None, rng.randrange(96, 609)), ("to_lan", rng.randrange(96, 609)),
                                (None, rng.randrange(56, 1400))):
            payload = b"\x01\x00" + rng.randbytes(18 + size)
            if direction is None:
                h.feed(udp("192.168.1.5", server, sport, 6881, payload))
            else:
                h.feed(udp(server, "192.168.1.5", 6881, sport, payload), direction)
    assert len(h.engine.peers) == 0 and len(h.engine.locks) == 0, h.engine.all_counters()
