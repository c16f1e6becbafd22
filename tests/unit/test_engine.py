"""The engine's pipeline with fake detectors and an injected clock."""

from p2pwall import hookimpl
from p2pwall.actions import Block, Drop, Lock, Probe, Spoof
from p2pwall.packet import TO_FIREWALL, TO_LAN
from p2pwall.testing import DetectorHarness, tcp, udp

LAN, LAN2, PEER, WEB = "192.168.1.5", "192.168.1.6", "203.0.113.9", "198.51.100.80"


class Scripted:
    """Acts on UDP payload prefixes."""

    def __init__(self, name="scripted"):
        self.name = name
        self.probes = 0

    @hookimpl
    def p2pwall_detector_info(self):
        return {"name": self.name, "wants": ["udp"]}

    @hookimpl
    def p2pwall_inspect(self, packet, context):
        d = packet.data
        if d == b"block":
            return [Block(packet.dst, reason="b"), Drop("b")]
        if d == b"lock":
            return Lock(packet.src, seconds=10)
        if d == b"spoof-out":
            return Spoof(packet.src, 1, "203.0.113.200", 2, b"x")
        if d == b"raise":
            raise ValueError("boom")
        if d == b"junk":
            return "not an action"
        if d == b"pong" and packet.direction == TO_FIREWALL:
            return Lock(packet.src)
        return None

    @hookimpl
    def p2pwall_make_probe(self, client, context):
        self.probes += 1
        return Probe(client, 1214, b"ping")


def test_one_clients_evidence_blocks_the_peer_for_that_client_two_for_everyone():
    h = DetectorHarness(Scripted())
    assert h.feed(udp(LAN, PEER, 1, 2, b"block"))[0]
    assert h.feed(udp(LAN, PEER, 1, 2, b"other"))[0]
    assert not h.feed(udp(LAN2, PEER, 1, 2, b"other"))[0]
    (event,) = h.events("peer_blocked")
    assert event.scope == "client" and event.address == LAN and event.evidence == "own"
    assert h.feed(udp(LAN2, PEER, 1, 2, b"block"))[0]  # a second client: corroborated
    assert h.feed(udp("192.168.1.99", PEER, 1, 2, b"other"))[0]
    assert h.events("peer_blocked")[-1].scope == "lan"
    assert not h.feed(udp(LAN2, WEB, 1, 2, b"other"))[0]


def test_syn_to_peer_locks_sender_only_and_lock_expires_with_the_clock():
    h = DetectorHarness(Scripted(), config={"lock": {"seconds": 120}})
    h.feed(udp(LAN, PEER, 1, 2, b"block"))
    assert h.feed(tcp(LAN, PEER, 1000, 80))[2] == "peer blocked"
    assert h.feed(tcp(LAN, WEB, 1001, 80)) [0]  # every SYN from the locked host
    assert not h.feed(tcp(LAN2, WEB, 1002, 80))[0]
    h.advance(119)
    assert h.feed(tcp(LAN, WEB, 1003, 80))[0]
    h.advance(2)
    assert not h.feed(tcp(LAN, WEB, 1004, 80))[0]
    assert [e.kind for e in h.events("lock_expired")] == ["lock_expired"]


def test_each_syn_to_a_peer_restarts_the_lock():
    h = DetectorHarness(Scripted(), config={"lock": {"seconds": 120}})
    h.feed(udp(LAN, PEER, 1, 2, b"block"))
    h.feed(tcp(LAN, PEER, 1000, 80))
    h.advance(100)
    h.feed(tcp(LAN, PEER, 1001, 80))
    h.advance(100)
    assert h.feed(tcp(LAN, WEB, 1003, 80))[0]


def test_probes_at_half_the_lock_and_answer_restarts_it():
    det = Scripted()
    h = DetectorHarness(det, config={"lock": {"seconds": 120}})
    h.feed(udp(LAN, WEB, 1, 2, b"lock"))  # 10 s lock
    h.advance(4.9)
    assert det.probes == 0
    h.advance(0.2)
    assert det.probes == 1 and isinstance(h.sent[-1], Probe)
    h.feed(udp(LAN, "192.168.1.1", 1214, 40123, b"pong"), direction=TO_FIREWALL)
    assert h.events("probe_answered")
    h.advance(9)  # 14.1 s since the first lock: alive only thanks to the answer
    assert h.engine.context.is_locked(LAN)


def test_unanswered_probes_are_few_and_the_host_is_freed():
    det = Scripted()
    h = DetectorHarness(det, config={"probes": {"per_lock": 2}})
    h.feed(udp(LAN, WEB, 1, 2, b"lock"))
    for _ in range(30):
        h.advance(0.5)
    assert det.probes == 2
    assert not h.engine.context.is_locked(LAN)


def test_raising_and_junk_detectors_cost_nothing():
    h = DetectorHarness(Scripted("a"), Scripted("b"))
    assert h.feed(udp(LAN, PEER, 1, 2, b"raise")) == (False, None, "")
    assert h.engine.counters["detector_errors"] == 2
    h.feed(udp(LAN, PEER, 1, 2, b"junk"))
    assert h.engine.counters["detector_errors"] == 4


def test_spoofs_are_never_sent_outside_the_lan():
    h = DetectorHarness(Scripted())
    h.feed(udp(LAN, PEER, 1, 2, b"spoof-out"))
    assert h.counter("send_refused") == 1 and h.events("send_refused")


def test_lan_and_allowed_addresses_are_never_blocked():
    h = DetectorHarness(Scripted(), config={"network": {"allow": ["203.0.113.0/24"]}})
    h.feed(udp(LAN, LAN2, 1, 2, b"block"))
    h.feed(udp(LAN, PEER, 1, 2, b"block"))
    assert len(h.engine.peers) == 0


def test_packets_towards_the_lan_do_not_hit_the_tables():
    h = DetectorHarness(Scripted())
    h.feed(udp(LAN, PEER, 1, 2, b"block"))
    assert not h.feed(udp(PEER, LAN, 2, 1, b"reply"), direction=TO_LAN)[0]


def test_monitor_mode_decides_but_accepts():
    h = DetectorHarness(Scripted())
    h.engine.monitor = True
    assert h.feed(udp(LAN, PEER, 1, 2, b"block")) == (False, "scripted", "b")
    assert h.engine.counters["would_drop"] == 1


def test_unparseable_packets_are_accepted_and_counted():
    h = DetectorHarness(Scripted())
    assert h.engine.process_raw(b"\x45garbage") == (False, None, "unparsed")
    assert h.engine.counters["unparsed"] == 1


def test_spoofs_go_only_to_hosts_on_link_on_a_lan_interface():
    h = DetectorHarness(Scripted(), lan=("192.168.0.0/16", "10.0.0.0/8"))
    from p2pwall.addresses import AddressSet

    h.engine.onlink = AddressSet(["192.168.1.0/24"])  # what the LAN interface itself carries
    h.engine.outbox.append(("scripted", Spoof(PEER, 1, "10.1.2.3", 2, b"x")))  # in lan_networks, not on-link
    h.engine.flush()
    assert h.counter("send_refused") == 1 and h.counter("spoof_sent") == 0
    h.engine.outbox.append(("scripted", Spoof(PEER, 1, LAN, 2, b"x")))
    h.engine.flush()
    assert h.counter("send_refused") == 1 and h.counter("spoof_sent") == 1
