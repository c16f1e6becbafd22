"""Hostile traffic: floods of spoofed addresses stay within the configured bounds, and
no packet, however malformed, makes the engine or a detector raise."""

import random
import struct

from hypothesis import given, settings, strategies as st

from p2pwall import hookimpl, plugins
from p2pwall.actions import Block, Lock
from p2pwall.packet import FROM_LAN, TO_FIREWALL, TO_LAN
from p2pwall.sender import RateLimiter
from p2pwall.testing import DetectorHarness, tcp, udp


class Greedy:
    @hookimpl
    def p2pwall_detector_info(self):
        return {"name": "greedy", "wants": ["udp"]}

    @hookimpl
    def p2pwall_inspect(self, packet, context):
        return [Block(packet.dst), Lock(packet.src)]


def test_a_spoofed_flood_cannot_grow_the_tables_past_their_bounds():
    h = DetectorHarness(Greedy(), config={"peers": {"max": 1000}, "lock": {"max": 100}},
                        lan=("10.0.0.0/8",))
    rng = random.Random(1)
    for _ in range(30000):
        src = "10.%d.%d.%d" % (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        dst = "198.%d.%d.%d" % (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        h.feed(udp(src, dst, 1, 2, b"x"))
    e = h.engine
    assert len(e.peers) == 1000 and len(e.locks) == 100
    assert e.peers.evicted > 20000
    assert sum(map(len, e.peers._buckets.values())) <= 1000 + 64
    assert sum(map(len, e.locks._buckets.values())) <= 100 + 64
    assert len(e.lan._cache) <= 65537
    assert len(e.events.recent) <= e.events.keep


def test_fasttrack_probe_material_lives_in_the_bounded_peer_table():
    from p2pwall_plugins.fasttrack import FastTrackDetector, make_ping

    det = FastTrackDetector()
    h = DetectorHarness(det, config={"peers": {"max": 50}}, lan=("10.0.0.0/8",))
    for i in range(500):
        h.feed(udp("10.0.%d.%d" % (i // 250, i % 250 + 1), "198.51.%d.%d" % (i // 250, i % 250 + 1),
                   1214, 1214, make_ping()))
    assert len(h.engine.peers) == 50 and len(h.engine.peers._notes) == 50
    assert not [k for k in vars(det) if k.startswith("_")], "the detector keeps no tables of its own"


def test_rate_limiter_state_is_bounded():
    rl = RateLimiter(1e9, 1e9, max_clients=100)
    for i in range(5000):
        rl.allow(struct.pack("!I", i))
    assert len(rl._clients) <= 100


ALL = None


def _all_detectors():
    global ALL
    if ALL is None:
        found = plugins.load()
        ALL = DetectorHarness(*[d.plugin for d in found.detectors], lan=("192.168.0.0/16",))
    return ALL


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([FROM_LAN, TO_LAN, TO_FIREWALL]),
       st.sampled_from(["udp", "tcp"]), st.integers(0, 65535))
def test_no_detector_raises_on_any_payload(payload, direction, proto, port):
    h = _all_detectors()
    raw = (udp if proto == "udp" else tcp)("192.168.1.5", "203.0.113.9", 40000, port, payload)
    before = h.engine.counters["detector_errors"]
    h.feed(raw, direction=direction)
    assert h.engine.counters["detector_errors"] == before


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=20, max_size=200))
def test_engine_never_raises_on_raw_garbage(raw):
    h = _all_detectors()
    before = h.engine.counters["detector_errors"]
    for hook in (1, 2, None):
        h.engine.process_raw(bytes([0x45]) + raw[1:], hook)
        h.engine.process_raw(bytes([0x60]) + raw[1:], hook)
    assert h.engine.counters["detector_errors"] == before
