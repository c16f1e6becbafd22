"""FastTrack recognition against byte-exact packets, and the near misses that must pass."""

import pytest

from p2pwall.actions import Probe, Spoof
from p2pwall.packet import TO_FIREWALL, ip_bytes, ip_text
from p2pwall.testing import DetectorHarness, tcp, udp
from p2pwall_plugins.fasttrack import FastTrackDetector, make_ping, make_pong, parse_http, parse_ping, parse_pong

LAN, LAN2, PEER, SUPER, WEB = "192.168.1.5", "192.168.1.6", "203.0.113.9", "203.0.113.77", "198.51.100.80"
PING = bytes.fromhex("270000002980") + b"KaZaA\x00"  # 12 bytes, as protocols.md gives it
PONG = bytes.fromhex("28000000290000") + bytes([0x1E, 3, 5, 20, 0])[:4] + b"KaZaA\x00"


def harness(**table):
    return DetectorHarness(FastTrackDetector(), config={"detectors": {"fasttrack": table}} if table else None)


def test_ping_bytes():
    assert len(PING) == 12 and parse_ping(PING) == b"KaZaA"
    assert parse_ping(bytes.fromhex("2700000029a0") + b"KaZaA\x00") is None  # 6th byte must be 0x80
    assert parse_ping(bytes.fromhex("27000000a980") + b"KaZaA\x00") == b"KaZaA"  # 0xa9 form
    assert parse_ping(bytes.fromhex("270000002980") + b"iMesh\x00") == b"iMesh"


def test_pong_bytes():
    pong = make_pong()
    assert len(pong) == 17 and pong[0] == 0x28 and pong[1:5] == b"\x00\x00\x00\x29"
    assert pong.endswith(b"KaZaA\x00") and parse_pong(pong)
    assert parse_pong(bytes.fromhex("2900000029"))  # 5-byte 0x29 form
    assert not parse_pong(bytes.fromhex("2900000029ff"))


@pytest.mark.parametrize("payload", [
    b"\x00" * 11 + b"\x00",  # other UDP ending in a NUL
    b"hello world\x00",
    bytes.fromhex("270000002980") + b"KaZaA",  # no terminating NUL
    bytes.fromhex("270000002980") + b"\x00",  # empty network name
    bytes.fromhex("270000002980") + b"Ka\x01ZaA\x00",  # unprintable name
    bytes.fromhex("270100002980") + b"KaZaA\x00",
    bytes.fromhex("2700000029") ,
    bytes.fromhex("270000002980") + b"A" * 40 + b"\x00",  # name too long
])
def test_near_miss_udp_is_not_fasttrack(payload):
    h = harness()
    assert h.feed(udp(LAN, PEER, 3000, 1214, payload)) == (False, None, "")
    assert len(h.engine.peers) == 0 and not h.sent


def test_dns_query_ending_in_nul_passes():
    dns = bytes.fromhex("abcd01000001000000000000") + b"\x07example\x03com\x00" + b"\x00\x01\x00\x01"
    dns_nul = bytes.fromhex("abcd01000001000000000000") + b"\x07example\x03com\x00"
    h = harness()
    assert not h.feed(udp(LAN, PEER, 3000, 53, dns))[0]
    assert not h.feed(udp(LAN, PEER, 3000, 53, dns_nul))[0]


def test_ping_blocks_peer_drops_and_spoofs_pong_from_the_peer():
    h = harness()
    drop, det, reason = h.feed(udp(LAN, PEER, 3000, 1214, PING))
    assert drop and det == "fasttrack" and "ping" in reason
    assert h.engine.context.is_blocked(PEER)
    (spoof,) = h.sent
    assert isinstance(spoof, Spoof)
    assert (ip_text(spoof.src), spoof.sport, ip_text(spoof.dst), spoof.dport) == (PEER, 1214, LAN, 3000)
    assert parse_pong(spoof.payload)


def test_follow_ups_and_syns_to_noted_peer_are_dropped_for_the_client_that_pinged():
    h = harness()
    h.feed(udp(LAN, PEER, 3000, 1214, PING))
    assert h.feed(udp(LAN, PEER, 3000, 1214, bytes.fromhex("2900000029") + b"\x01\x02"))[0]
    assert not h.feed(tcp(LAN2, PEER, 4000, 1214))[0]  # one client's ping proves nothing about another
    assert not h.locked(LAN2)
    assert h.feed(tcp(LAN, PEER, 4001, 1214))[0]
    assert h.locked(LAN) and not h.locked(LAN2)


def test_a_second_client_pinging_the_same_peer_makes_it_lan_wide():
    h = harness()
    h.feed(udp(LAN, PEER, 3000, 1214, PING))
    assert not h.peer(PEER).lanwide
    h.feed(udp(LAN2, PEER, 3000, 1214, PING))
    assert h.peer(PEER).lanwide
    assert h.feed(tcp("192.168.1.99", PEER, 4000, 1214))[0] and h.locked("192.168.1.99")


def test_time_lock_default_is_120s_and_restarts():
    h = harness()
    h.feed(udp(LAN, PEER, 3000, 1214, PING))
    h.feed(tcp(LAN, PEER, 4000, 1214))
    h.advance(90)
    h.feed(tcp(LAN, PEER, 4001, 1214))
    h.advance(90)
    assert h.feed(tcp(LAN, WEB, 4002, 80))[0]
    assert not h.feed(tcp(LAN2, WEB, 4003, 80))[0]
    h.advance(31)
    assert not h.feed(tcp(LAN, WEB, 4004, 80))[0]


def test_probe_is_a_copy_of_the_clients_ping_and_pong_to_firewall_restarts_lock():
    h = harness()
    h.feed(udp(LAN, PEER, 3000, 1214, PING))
    h.feed(tcp(LAN, PEER, 4000, 1214))
    h.sent.clear()
    h.advance(60)
    (probe,) = h.sent
    assert isinstance(probe, Probe) and probe.payload == PING and probe.dport == 3000
    h.advance(1)
    h.feed(udp(LAN, "192.168.1.1", 3000, probe.sport, make_pong()), direction=TO_FIREWALL)
    assert h.events("probe_answered")
    h.advance(100)  # 161 s after the SYN: still locked thanks to the answer
    assert h.engine.context.is_locked(LAN)
    h.advance(200)  # no more answers: freed
    assert not h.engine.context.is_locked(LAN)


def test_probes_off():
    h = harness(probes=False)
    h.feed(udp(LAN, PEER, 3000, 1214, PING))
    h.feed(tcp(LAN, PEER, 4000, 1214))
    h.sent.clear()
    h.advance(100)
    assert not h.sent


KAZAA_GET = (b"GET /.hash=" + b"a" * 40 + b" HTTP/1.1\r\nHost: 203.0.113.9:1214\r\n"
             b"UserAgent: KazaaClient Nov  3 2002 20:29:03\r\nX-Kazaa-Username: bob\r\n"
             b"X-Kazaa-Network: KaZaA\r\nX-Kazaa-IP: 192.168.1.5:1214\r\n"
             b"X-Kazaa-SupernodeIP: 203.0.113.77:1214\r\n\r\n")


def test_http_safety_net_blocks_target_and_supernode_and_locks_client():
    h = harness()
    drop, det, _ = h.feed(tcp(LAN, PEER, 4000, 80, KAZAA_GET))
    assert drop and det == "fasttrack"
    ctx = h.engine.context
    assert ctx.is_blocked(PEER) and ctx.is_blocked(SUPER) and ctx.is_locked(LAN)
    assert not ctx.is_blocked(LAN)  # X-Kazaa-IP is the client itself: never blocked


@pytest.mark.parametrize("data", [
    b"GIVE 12345\r\n",
    b"GET /.files HTTP/1.0\r\n\r\n",
    b"GET /music.mp3 HTTP/1.1\r\nX-Kazaa-Username: bob\r\n\r\n",
    b"GET / HTTP/1.1\r\nUser-Agent: PeerEnabler/2.0\r\n\r\n",
])
def test_other_transfer_forms(data):
    assert parse_http(data) is not None


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: example.org\r\nUser-Agent: curl/8.0\r\n\r\n",
    b"GET /.hidden-but-not-kazaa HTTP/1.1\r\n\r\n",
    b"GIVE me 5\r\n",
    b"POST /api HTTP/1.1\r\nX-Kazaa: no\r\n\r\n",
    b"\x16\x03\x01\x02\x00X-Kazaa-Username: in tls",
])
def test_http_near_misses(data):
    assert parse_http(data) is None
    h = harness()
    assert not h.feed(tcp(LAN, PEER, 4000, 80, data))[0]


@pytest.mark.parametrize("value", [b"999.1.1.1:1214", b"203.0.113.77", b"203.0.113.77:99999",
                                   b"0.0.0.0:1214", b"203.0.113.77:1214; rm -rf", b"10.1.1.1:1214"])
def test_malformed_supernode_headers_are_ignored(value):
    data = b"GET /.hash=" + b"b" * 40 + b" HTTP/1.1\r\nX-Kazaa-SupernodeIP: " + value + b"\r\n\r\n"
    h = DetectorHarness(FastTrackDetector(), lan=("10.0.0.0/8", "192.168.0.0/16"))
    assert h.feed(tcp(LAN, PEER, 4000, 80, data))[0]
    assert [ip for ip in (e["address"] for e in h.engine.peers.snapshot(h.clock.now))] == [PEER]


def test_config_validation():
    from p2pwall.config import ConfigError

    for table in ({"probe": True}, {"probes": "yes"}, {"networks": [""]}):
        with pytest.raises(ConfigError):
            harness(**table)
    assert "tcp_payload" not in harness(http=False, sessions=False).detectors.wants()
    only_sessions = harness(http=False).detectors
    assert only_sessions.tcp_strings() == [] and only_sessions.tcp_first_sizes() == (12, 12)  # no HTTP strings
    h = harness(spoof=False, networks=["iMesh"])
    assert not h.feed(udp(LAN, PEER, 3000, 1214, PING))[0]  # KaZaA network not selected


def test_pings_between_lan_hosts_are_left_alone():
    h = harness()
    assert h.feed(udp(LAN, LAN2, 3000, 1214, PING)) == (False, None, "")
    assert not h.sent


def test_pong_from_firewall_direction_only_counts_from_the_lan_side():
    h = harness()
    assert h.feed(udp(LAN, "192.168.1.1", 3000, 40123, PING), direction=TO_FIREWALL) == (False, None, "")
    assert not h.engine.context.is_locked(LAN)


@pytest.mark.parametrize("form", ["node", "node-address", "supernode", "bare"])
def test_every_documented_answer_restarts_the_lock(form):
    from p2pwall import TO_FIREWALL
    from p2pwall_lab.fasttrack.emulator import ANSWERS

    answer = ANSWERS[form]()
    assert parse_pong(answer)
    h = harness()
    h.feed(udp(LAN, PEER, 3000, 1214, PING))
    h.feed(tcp(LAN, PEER, 4000, 1214))  # locked, with the ping kept as the probe's material
    h.advance(61)  # half the 120 s lock: the probe goes out
    (probe,) = [a for a in h.sent if type(a).__name__ == "Probe"]
    assert probe.dport == 3000
    before = h.lock(LAN).until
    h.advance(1)
    assert h.feed(udp(LAN, "192.168.0.1", 3000, probe.sport, answer), direction=TO_FIREWALL).detector == "fasttrack"
    assert h.lock(LAN).until > before and h.events("probe_answered")


def test_answers_that_are_not_probe_answers():
    from p2pwall import TO_FIREWALL

    for junk in (bytes.fromhex("2900000029") + b"\x01", bytes.fromhex("2900000029") + bytes(8),
                 bytes.fromhex("29000000290100") + bytes(14)):  # a 21-byte form without its flag
        assert not parse_pong(junk)
    h = harness()  # a pong out of the blue (no probe outstanding) locks nobody
    h.feed(udp(LAN, "192.168.0.1", 3000, 1214, bytes.fromhex("2900000029")), direction=TO_FIREWALL)
    assert not h.locked(LAN)


def test_sessions_opened_before_the_pings_are_cut_by_the_first_ping():
    """giFT-FastTrack: sessions (12-byte cipher hellos) to the first cached nodes, then
    pings to the next ones; the pinged peers never include the session nodes."""
    h = harness()
    node1, node2 = "203.0.113.20", "203.0.113.21"
    hello = bytes.fromhex("fa00b62b") + bytes.fromhex("0facb123") + bytes.fromhex("5a5a5a5a")
    assert not h.feed(tcp(LAN, node1, 40000, 1214, hello)).drop  # nothing known yet: it goes
    assert not h.feed(tcp(LAN, node2, 40001, 2121, hello)).drop
    assert not h.blocked(node1) and not h.locked(LAN)
    assert h.feed(udp(LAN, PEER, 1214, 1214, make_ping())).drop  # the first ping
    for node in (node1, node2):
        entry = h.peer(node)
        assert entry is not None and not entry.lanwide and entry.clients == (ip_bytes(LAN),), node
    assert h.locked(LAN)
    later = "203.0.113.22"
    assert h.feed(tcp(LAN, later, 40002, 3131, hello)).drop and h.blocked(later)  # a pinger's hello: at once


def test_a_twelve_byte_first_payload_alone_earns_nothing():
    h = harness()
    hello = bytes(12)
    for i in range(50):
        h.feed(tcp(LAN, f"203.0.113.{30 + i}", 40000 + i, 5000 + i, hello))
    h.feed(tcp(LAN, "203.0.113.90", 41000, 443, hello))  # a service port, even for a pinger
    assert len(h.engine.peers) == 0 and not h.locked(LAN)
    h.feed(tcp("192.168.1.6", "203.0.113.91", 41001, 6000, hello))
    assert h.feed(udp(LAN, PEER, 1214, 1214, make_ping())).drop  # another client's ping
    assert not h.blocked("203.0.113.91")  # ... says nothing of 192.168.1.6's sessions
    assert not h.feed(tcp(LAN, "203.0.113.92", 41002, 443, hello)).drop


def test_every_ping_is_answered_also_to_a_peer_already_learned():
    """ftwall answers every ping: a client re-pinging the peers it knows (as giFT does
    each cycle) gets a pong each time, so it keeps to them; nothing else to that peer
    gets through, and a peer learned by another detector is answered the same way."""
    h = harness()
    for i in range(5):
        verdict = h.feed(udp(LAN, PEER, 3000 + (i % 2), 1214, PING))
        assert verdict.drop
    assert len([s for s in h.sent if isinstance(s, Spoof)]) == 5
    h.sent.clear()
    assert h.feed(udp(LAN, PEER, 3000, 1214, b"\x29\x00\x00\x00\x29\x01\x02")).drop  # not a ping: dropped, unanswered
    assert not h.sent
    off = harness(spoof=False)
    off.feed(udp(LAN, PEER, 3000, 1214, PING))
    assert off.detectors.udp_answered() == [] and not off.sent
