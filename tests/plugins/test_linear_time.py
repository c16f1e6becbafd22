"""Every detector's matching is linear in the payload on hostile input: ten times the
bytes costs about ten times the time (a backtracking regex costs a hundred)."""

import time

import pytest

from p2pwall import TO_LAN, plugins
from p2pwall.testing import DetectorHarness, tcp, udp

LAN, PEER = "192.168.1.5", "203.0.113.9"
SEEDS = [b"GET /announce", b"announce", b"?info_hash=", b"\r\nX-Kazaa-IP", b" \t", b"\r\n",
         b"GET /.hash=", b"GNUTELLA ", b"5:peers", b"6:valuesl6:", b"d1:y1:q", b"\xe3", b"$MyNick ",
         b"X-Gnutella-", b"GET /uri-res/N2R?urn:", b"1:", b"a" * 7]


def cost(h, seed: bytes, size: int, incoming: bool) -> float:
    payload = (seed * (size // len(seed) + 1))[:size]
    raws = []
    for head in (b"", b"GET /"):
        data = head + payload
        if incoming:
            raws += [tcp(PEER, LAN, 80, 40000, data), udp(PEER, LAN, 6881, 4000, data)]
        else:
            raws += [tcp(LAN, PEER, 40000, 80, data), udp(LAN, PEER, 4000, 6881, data)]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for raw in raws:
            h.feed(raw, TO_LAN if incoming else "from_lan")
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("seed", SEEDS, ids=[s[:10].decode("latin-1") for s in SEEDS])
def test_hostile_payloads_cost_linear_time(seed):
    found = plugins.load()
    h = DetectorHarness(*[d.plugin for d in found.detectors], names=found.names())
    for incoming in (False, True):
        small = max(cost(h, seed, 4000, incoming), 2e-5)
        big = cost(h, seed, 40000, incoming)
        assert big / small < 40, f"{seed!r}: {big * 1e3:.2f} ms for 40 kB against {small * 1e3:.2f} ms for 4 kB"
