"""FastTrack end to end: the emulated Kazaa client through all three modes, the UDP-less
client, and the same scenario without p2pwall (so these tests can fail)."""

from __future__ import annotations

import json

import pytest

from p2pwall_lab.fasttrack import scenario

pytestmark = pytest.mark.e2e
LOCK = 4.0


@pytest.fixture(scope="module")
def ftnet():
    from .conftest import network

    yield from network(201)  # 200 peers for the client's cache, and a web server


def test_without_p2pwall_the_client_gets_through(ftnet):
    r = scenario.run(ftnet, tag="bare", p2pwall=False, lock=LOCK, seconds=8, mode1=2, mode2=3, recover=False)
    assert r.client["connected"] > 50
    assert len([x for x in r.peer_log if x["kind"] == "tcp_accept"]) > 50
    assert r.web_failed == 0


def test_without_p2pwall_downloads_complete(ftnet):
    r = scenario.run(ftnet, tag="bare-http", p2pwall=False, lock=LOCK, seconds=4, no_udp=True, recover=False)
    assert r.client["downloads"] >= 1 and r.downloads_served


@pytest.fixture(scope="module")
def three_modes(ftnet):
    capture = ftnet.dir / "three-modes.pcap"
    r = scenario.run(ftnet, tag="ft", lock=LOCK, seconds=30, mode1=4, mode2=6, capture=capture)
    return r, capture


def test_client_never_connects_through_all_three_modes(three_modes):
    r, _ = three_modes
    attempts = {x["mode"] for x in r.client_log if x["kind"] == "tcp"}
    assert attempts == {"1", "2", "3"}, attempts
    assert r.client["attempts"] > 100
    assert r.client["connected"] == 0
    assert r.tcp_reached_peers == []  # no SYN, no setup request reached any peer


def test_pings_are_answered_with_spoofed_pongs_and_peers_learned(three_modes):
    r, _ = three_modes
    pings = [x for x in r.client_log if x["kind"] == "ping"]
    assert len(pings) >= 100
    # every pong came from p2pwall: no ping reached the outside
    assert r.client["pongs"] == len(pings)
    assert not [x for x in r.peer_log if x["kind"] == "udp_ping"]
    assert r.status["peers"]["count"] == len(pings)


def test_probes_keep_the_client_locked_through_mode_3(three_modes):
    r, _ = three_modes
    assert r.client["probes_answered"] >= 2
    assert r.status["events"].get("probe_answered", 0) >= 2
    # mode 3 waits longer than the lock between attempts: only the probes explain the drops
    mode3 = [x for x in r.client_log if x["kind"] == "tcp" and x["mode"] == "3"]
    assert len(mode3) >= 2 and all(x["result"] != "connected" for x in mode3)


def test_other_lan_host_browses_throughout_and_offender_recovers(three_modes):
    r, _ = three_modes
    assert r.web_failed == 0 and r.web_ok >= 20
    assert r.recovered_after is not None and r.recovered_after <= 2 * LOCK


def test_no_udp_client_downloads_nothing_and_its_supernode_is_blocked(ftnet):
    r = scenario.run(ftnet, tag="noudp", lock=LOCK, seconds=10, no_udp=True, recover=False)
    assert r.client["attempts"] >= 2
    assert r.client["downloads"] == 0 and not r.downloads_served
    blocked = {e["address"] for e in r.status["peers"]["entries"]}
    assert ftnet.outside[0] in blocked  # the X-Kazaa-SupernodeIP
    assert r.web_failed == 0


def test_replay_of_the_capture_reports_the_same_detections(three_modes, ftnet):
    r, capture = three_modes
    done = ftnet.python(ftnet.fw, "-m", "p2pwall", "replay", "--format", "json", "--plugin", "fasttrack",
                        "--lan", "192.0.2.0/24", str(capture))
    report = json.loads(done.stdout)
    learned = {f["peer"] for f in report["flows"] if f["reason"] == "FastTrack UDP ping"}
    live = {e["address"] for e in r.status["peers"]["entries"]}
    assert live and learned == live
    # SYNs of the locked client are reported too, as the live run dropped them
    assert any(f["reason"] in ("peer blocked", "client locked") for f in report["flows"])
    web = ftnet.outside[-1]
    assert not [f for f in report["flows"] if f["peer"] == web and f["client"] == ftnet.lan_ips[1] and f["dropped"]]


@pytest.mark.parametrize("answer", ["supernode", "node-address", "bare"])
def test_each_documented_probe_answer_keeps_the_client_locked(ftnet, answer):
    """The main run answers probes as an ordinary node does (the 13-byte 0x29); a client
    answering in any other documented form is recognised just the same."""
    r = scenario.run(ftnet, tag=f"answer-{answer}", lock=LOCK, seconds=14, mode1=2, mode2=3, recover=False,
                     answer=answer)
    assert r.client["probes_answered"] >= 1 and r.status["events"].get("probe_answered", 0) >= 1, r.status["events"]
    assert r.client["connected"] == 0 and not r.tcp_reached_peers


def test_without_p2pwall_sessions_opened_before_the_pings_carry_data(ftnet):
    r = scenario.run(ftnet, tag="bare-sessions", p2pwall=False, lock=LOCK, seconds=4, mode1=2, mode2=1,
                     recover=False, connect_first=2)
    assert r.client["sessions_up"] == 2
    assert sum(x["size"] for x in r.peer_log if x["kind"] == "session_data") >= 2 * 64


def test_sessions_opened_before_the_pings_are_cut_by_the_first_ping(ftnet):
    """giFT-FastTrack's real start: sessions to the first two cached nodes (never pinged),
    then pings.  The hellos cross (nothing is known yet); the first ping blocks their nodes
    for the client, so the sessions carry nothing, and the client is locked."""
    r = scenario.run(ftnet, tag="sessions", lock=LOCK, seconds=10, mode1=3, mode2=3, connect_first=2)
    hellos = [x for x in r.peer_log if x["kind"] == "session_hello"]
    assert len(hellos) == 2 and r.client["sessions_up"] == 2
    assert [x for x in r.peer_log if x["kind"] == "session_data"] == []
    blocked = {e["address"]: e for e in r.status["peers"]["entries"]}
    for hello in hellos:
        entry = blocked.get(hello["dst"])
        assert entry is not None and ftnet.lan_ips[0] in entry["clients"], (hello, entry)
        assert entry["reason"].startswith("FastTrack session peer")
    assert r.client["connected"] == 0 and r.client["pongs"] > 0
    assert r.web_failed == 0
    assert r.recovered_after is not None  # free again once its client stops


def test_every_ping_is_answered_while_the_client_repings_the_peers_it_knows(ftnet):
    """giFT-FastTrack's start (sessions first) and its habit of pinging the nodes it knows
    again: every ping, to a peer already learned too, gets a pong (spoofed: no ping
    reaches a peer), so the client keeps to the addresses p2pwall knows; no session byte
    and no connection get through."""
    r = scenario.run(ftnet, tag="reping", lock=LOCK, seconds=12, mode1=3, mode2=5, connect_first=2, reping=True)
    pings = [x for x in r.client_log if x["kind"] == "ping"]
    again = [x for x in pings if x.get("again")]
    pongs = [x for x in r.client_log if x["kind"] == "pong"]
    assert len(again) >= 100, len(again)  # re-pings to peers already blocked
    assert len(pongs) == len(pings), (len(pongs), len(pings))
    assert not [x for x in r.peer_log if x["kind"] in ("udp_ping", "session_data")]
    sessions = {x["dst"] for x in r.peer_log if x["kind"] == "session_hello"}
    assert len(sessions) == 2  # the two sessions opened before any evidence: their hellos crossed, nothing more
    assert r.client["connected"] == 0 and {x["dst"] for x in r.tcp_reached_peers} <= sessions
    assert r.web_failed == 0
