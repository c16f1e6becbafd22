"""Ethereum's devp2p: named, reported, stopped only when the operator says so, and never
counted as encrypted BitTorrent."""

import random

from p2pwall.testing import DetectorHarness, tcp
from p2pwall_plugins.bittorrent import BitTorrentDetector
from p2pwall_plugins.ethereum import EthereumDetector, is_rlpx_auth

LAN = "192.168.1.5"
PEERS = ["203.0.113.21", "203.0.113.22", "203.0.113.23", "203.0.113.24"]


def auth(rng, size=None):
    """An EIP-8 auth message: its 2-byte size, then ECIES (0x04, key, IV, body, MAC), random."""
    n = size or rng.randrange(390, 590)
    return n.to_bytes(2, "big") + b"\x04" + rng.randbytes(n - 1)


def test_the_frame():
    rng = random.Random(1)
    assert all(is_rlpx_auth(auth(rng)) for _ in range(100))
    assert not is_rlpx_auth(b"\x16\x03\x01\x01\xf4" + rng.randbytes(500))  # TLS
    good = auth(rng)
    assert not is_rlpx_auth(good[:-1]) and not is_rlpx_auth(good + b"x")  # the size must be exact
    assert not is_rlpx_auth(good[:2] + b"\x02" + good[3:])  # a compressed key is not RLPx's
    hits = sum(is_rlpx_auth(rng.randbytes(rng.randrange(96, 609))) for _ in range(200_000))
    assert hits == 0  # random bytes: about 1 in 2^24 per payload


def test_reported_not_stopped_by_default():
    rng = random.Random(2)
    h = DetectorHarness(EthereumDetector())
    for i, p in enumerate(PEERS):
        v = h.feed(tcp(LAN, p, 40000 + i, 30303, auth(rng)))
        assert not v.drop
    assert not h.locked(LAN) and not any(h.blocked(p) for p in PEERS)
    assert [e.kind for e in h.events()].count("reported") == 4
    assert all("Ethereum devp2p" in e.reason for e in h.events() if e.kind == "reported")


def test_stopped_as_ethereum_when_turned_on():
    rng = random.Random(3)
    h = DetectorHarness(EthereumDetector(), config={"detectors": {"ethereum": {"stop": True}}})
    assert h.feed(tcp(LAN, PEERS[0], 40000, 30303, auth(rng))).drop
    assert h.locked(LAN) and h.peer(PEERS[0]).detector == "ethereum"
    assert not h.peer(PEERS[0]).lanwide  # the client's own evidence: for it alone


def test_the_mse_rule_never_counts_devp2p_but_still_counts_mse():
    rng = random.Random(4)
    h = DetectorHarness(BitTorrentDetector())
    from tests.plugins.test_mse import exchange

    for i, p in enumerate(PEERS):  # four devp2p exchanges with four peers (auth, auth-ack, a frame)
        assert not exchange(h, LAN, p, 40000 + i, 30303, auth(rng), auth(rng, 300), rng.randbytes(130)).drop
    assert not h.locked(LAN)
    for i, p in enumerate(PEERS[:3]):  # the control: random openings of the same sizes are MSE's shape
        exchange(h, "192.168.1.6", p, 41000 + i, 30303, rng.randbytes(450), rng.randbytes(300), rng.randbytes(130))
    assert h.locked("192.168.1.6")
