"""Every action a detector requests is checked before the engine carries it out: a
malformed one is refused and counted against its detector, never obeyed, and never costs
the packet its verdict or the daemon its life."""

import math

import pytest

from p2pwall import Block, Drop, Lock, Probe, Spoof, hookimpl
from p2pwall.actions import check
from p2pwall.testing import DetectorHarness, tcp, udp

LAN, PEER = "192.168.1.5", "203.0.113.9"


class Asks:
    """Returns whatever the test put in ``self.wanted``."""

    name = "asks"

    def __init__(self):
        self.wanted = []
        self.probe = None

    @hookimpl
    def p2pwall_detector_info(self):
        return {"wants": ["udp"]}

    @hookimpl
    def p2pwall_inspect(self, packet, context):
        return self.wanted

    @hookimpl
    def p2pwall_make_probe(self, client, note, context):
        return self.probe


@pytest.mark.parametrize("bad", [
    Block(PEER, seconds=math.nan), Block(PEER, seconds=math.inf), Block(PEER, seconds=-1),
    Block(PEER, seconds="10"), Block("not-an-address"), Block(b"\x01\x02"), Block(PEER, note="text"),
    Block(PEER, note=b"x" * 513), Lock(LAN, seconds=1e12), Lock(LAN, reason=None),
    Spoof(PEER, 70000, LAN, 1214, b"x"), Spoof(PEER, 1214, LAN, 0, b"x"), Spoof(PEER, 1, LAN, 2, "str"),
    Spoof(PEER, 1, LAN, 2, b"x" * 5000), Probe(LAN, 1214, b"x", sport=-1), "not an action", 42, None,
])
def test_a_malformed_action_is_refused_and_the_drop_beside_it_still_holds(bad):
    det = Asks()
    h = DetectorHarness(det)
    det.wanted = [bad, Drop("still")]
    verdict = h.feed(udp(LAN, PEER, 1, 2, b"x"))
    assert verdict.drop and verdict.detector == "asks"
    assert not h.blocked(PEER) and not h.locked(LAN) and not h.sent
    assert h.counter("detector_errors.asks") >= 1
    det.wanted = []
    assert not h.feed(udp(LAN, "203.0.113.10", 1, 2, b"x")).drop  # and nothing lingers


def test_refusals_are_logged_rate_limited_not_once_per_packet(caplog):
    det = Asks()
    h = DetectorHarness(det)
    det.wanted = [Block(PEER, seconds=math.nan)]
    with caplog.at_level("ERROR", logger="p2pwall"):
        for i in range(500):
            h.feed(udp(LAN, PEER, 1, 2, b"x"))
    assert h.counter("actions_refused") == 500
    assert len([r for r in caplog.records if "action_refused" in r.getMessage()]) == 1
    assert len(h.events("action_refused")) == 1


def test_well_formed_actions_pass_the_check():
    for good in (Drop("x"), Block(PEER), Block(PEER, seconds=60, note=b"n"), Lock(LAN, seconds=1.5),
                 Spoof(PEER, 1214, LAN, 1214, b"pong"), Probe(LAN, 1214, b"ping"), Probe(LAN, 1, b"", sport=0)):
        assert check(good) is None, good


def test_a_bad_probe_is_refused_at_its_time():
    det = Asks()
    h = DetectorHarness(det, config={"lock": {"seconds": 10}})
    det.wanted = [Lock(LAN)]
    h.feed(udp(LAN, PEER, 1, 2, b"x"))
    det.wanted = []
    det.probe = Probe(LAN, dport=99999, payload=b"x")
    h.advance(6)
    assert not h.sent and h.counter("actions_refused") == 1
    det.probe = "junk"
    h.feed(udp(LAN, PEER, 1, 2, b"x"))
    assert h.locked(LAN)


def test_flush_never_raises_whatever_is_in_the_outbox():
    det = Asks()
    h = DetectorHarness(det)
    h.engine.outbox.extend([("asks", object()), ("asks", Spoof(PEER, 1, "nonsense", 2, b"x"))])
    h.engine.flush()
    assert h.counter("detector_errors.asks") == 2


def test_locks_only_for_unicast_lan_hosts():
    det = Asks()
    h = DetectorHarness(det)
    for bad in ("0.0.0.0", "255.255.255.255", "224.0.0.1", "203.0.113.5", "127.0.0.1"):
        det.wanted = [Lock(bad)]
        h.feed(udp(bad, PEER, 1, 2, b"x"))
    assert len(h.engine.locks) == 0 and h.counter("lock_refused") == 5
    det.wanted = [Lock("192.168.1.77")]  # a packet of one host never locks another
    h.feed(udp(LAN, PEER, 1, 2, b"x"))
    assert len(h.engine.locks) == 0 and h.counter("evidence_refused.not_own_packet") == 1
    assert not h.feed(tcp(LAN, PEER, 1, 80)).drop
