"""IPv6 end to end, on a dual-stack test bed (2001:db8::/32): the engine's actions through
ip6tables, the IPv6 nft peer and pair sets and the ``-6`` lock ipset; the FastTrack
client's three modes with spoofed pongs and probes over IPv6; a real aria2 swarm over
IPv6; nothing left after SIGTERM.
Each p2pwall run has its control run (or its counterpart address) so these tests can fail."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from p2pwall_lab.fasttrack import scenario

from .helpers import Browsing, arrivals, start_server, tcp, udp, wait_until
from .swarm import Swarm

pytestmark = pytest.mark.e2e
LOCK = 5


@pytest.fixture(scope="module")
def net6():
    from .conftest import network

    yield from network(201, ipv6=True)  # 200 FastTrack peers and a web server, in each family


@pytest.fixture(scope="module")
def server6(net6):
    return start_server(net6, net6.out, "outside6.jsonl", udp_ports="5000", tcp_ports="81")  # port 80 is the lab's web server


def _ipset(net, name: str) -> str:
    return net.exec(net.fw, "ipset", "list", name, check=False).stdout


def _leftovers(net) -> list[str]:
    found = []
    for tool in ("iptables-save", "ip6tables-save"):
        if "P2PWALL" in net.exec(net.fw, tool).stdout:
            found.append(tool)
    if net.exec(net.fw, "ipset", "list", "-n").stdout.strip():
        found.append("ipset")
    if "p2pwall" in net.exec(net.fw, "nft", "list", "tables").stdout:
        found.append("nft")
    return found


def test_blocks_locks_and_spoofs_over_ipv6_through_the_kernel(net6, server6, testdet_env):
    lan1, lan2 = net6.lans
    c1, c2 = net6.lan_ips6
    blocked, web, spoofed = net6.outside6[1], net6.outside6[2], net6.outside6[3]
    d = net6.p2pwall(net6.base_config(lock_seconds=LOCK), "--plugin", "testdet", env=testdet_env)
    try:
        assert "-A FORWARD -j P2PWALL-F0" in net6.exec(net6.fw, "ip6tables-save").stdout
        assert udp(net6, lan2, blocked, 5000, b"BLOCK-2", wait=0.5)[0]["reply"] is None
        assert (c2, blocked) in net6.kernel_set("pairs6")
        # the client's next datagram to the peer is dropped by the kernel: the engine never sees it
        seen = d.status()["counters"]["packets"]
        assert udp(net6, lan2, blocked, 5000, b"AFTER-2", wait=0.5)[0]["reply"] is None
        assert d.status()["counters"]["packets"] == seen
        assert not arrivals(server6, dst=blocked)
        # one client's packet proves nothing about the other
        assert udp(net6, lan1, blocked, 5000, b"FREE-1", wait=0.5)[0]["reply"] is not None
        # a second client's evidence: LAN-wide, in the IPv6 peer set
        assert udp(net6, lan1, blocked, 5000, b"BLOCK-1", wait=0.5)[0]["reply"] is None
        entry = d.status()["peers"]["entries"][0]
        assert (entry["address"], entry["scope"]) == (blocked, "lan")
        assert blocked in net6.kernel_set("peers6")
        # a SYN to it locks that client (and only it), in the kernel too, until the lock runs out
        assert not tcp(net6, lan2, blocked, 81, timeout=0.5)["connected"]
        assert [e["address"] for e in d.status()["locks"]["entries"]] == [c2]
        assert c2 in _ipset(net6, "p2pwall-locks0-6")
        assert not tcp(net6, lan2, web, 81, timeout=0.5)["connected"]
        assert tcp(net6, lan1, web, 81)["connected"]
        # the per-host bound's stations: the IPv6 neighbours the gateway resolved, at their MACs
        mac1 = net6.exec(lan1, "cat", "/sys/class/net/eth0/address").stdout.strip()
        assert wait_until(lambda: (c1, mac1) in net6.kernel_set("stations6"), timeout=5), net6.kernel_set("stations6")
        assert wait_until(lambda: tcp(net6, lan2, web, 81, timeout=1)["connected"], timeout=LOCK + 6)
        assert c2 not in _ipset(net6, "p2pwall-locks0-6")
        # a spoofed IPv6 answer reaches the LAN client from the peer's address and port
        got = udp(net6, lan1, spoofed, 5000, b"SPOOF-5", sport=7777, wait=2)
        assert (got[0]["reply"], got[0]["from"], got[0]["from_port"]) == (b"SPOOFED".hex(), spoofed, 5000)
        assert not arrivals(server6, dst=spoofed)
        # status text writes IPv6 endpoints unambiguously
        text = net6.python(net6.fw, "-m", "p2pwall", "status", "--address", blocked,
                           "--socket", str(net6.dir / "status.sock")).stdout
        assert blocked in text
    finally:
        assert d.stop() == 0
    assert _leftovers(net6) == []
    assert udp(net6, lan2, blocked, 5000, b"AFTER-stop")[0]["reply"]  # nothing left to drop it


def test_without_p2pwall_the_ipv6_client_gets_through(net6):
    """The control run: the same emulated client and peers over IPv6, nothing in between."""
    r = scenario.run(net6, tag="bare6", p2pwall=False, lock=LOCK, seconds=8, mode1=2, mode2=3, recover=False,
                     ipv6=True)
    assert r.client["pongs"] > 50 and r.client["connected"] > 50
    assert len([x for x in r.peer_log if x["kind"] == "udp_ping" and ":" in x["src"]]) > 50
    assert r.web_failed == 0


@pytest.fixture(scope="module")
def three_modes6(net6):
    capture = net6.dir / "three-modes6.pcap"
    r = scenario.run(net6, tag="ft6", lock=LOCK, seconds=30, mode1=4, mode2=6, capture=capture, ipv6=True)
    return r, capture


def test_fasttrack_client_never_connects_over_ipv6(three_modes6):
    r, _ = three_modes6
    attempts = {x["mode"] for x in r.client_log if x["kind"] == "tcp"}
    assert attempts == {"1", "2", "3"}, attempts
    assert r.client["attempts"] > 100 and r.client["connected"] == 0
    assert r.tcp_reached_peers == []


def test_fasttrack_pings_get_spoofed_ipv6_pongs_and_probes_hold_the_lock(three_modes6, net6):
    r, _ = three_modes6
    pings = [x for x in r.client_log if x["kind"] == "ping"]
    assert len(pings) >= 100 and all(":" in x["peer"] for x in pings)
    assert r.client["pongs"] == len(pings)  # each from the pinged IPv6 address, spoofed by p2pwall
    assert {x["peer"] for x in r.client_log if x["kind"] == "pong"} == {x["peer"] for x in pings}
    assert not [x for x in r.peer_log if x["kind"] == "udp_ping"]
    assert {e["address"] for e in r.status["peers"]["entries"]} == {x["peer"] for x in pings}
    # probes went to the client's IPv6 address, and its answers restarted the lock
    assert r.client["probes_answered"] >= 2 and r.status["events"].get("probe_answered", 0) >= 2
    assert {e["address"] for e in r.status["locks"]["entries"]} <= {net6.lan_ips6[0]}
    mode3 = [x for x in r.client_log if x["kind"] == "tcp" and x["mode"] == "3"]
    assert len(mode3) >= 2 and all(x["result"] != "connected" for x in mode3)
    assert r.web_failed == 0 and r.web_ok >= 20
    assert r.recovered_after is not None and r.recovered_after <= 2 * LOCK


def test_replay_of_the_ipv6_capture_learns_the_same_peers(three_modes6, net6):
    r, capture = three_modes6
    done = net6.python(net6.fw, "-m", "p2pwall", "replay", "--format", "json", "--plugin", "fasttrack",
                       "--lan", "2001:db8:1::/64", str(capture))
    learned = {f["peer"] for f in json.loads(done.stdout)["flows"] if f["reason"] == "FastTrack UDP ping"}
    assert learned and learned == {e["address"] for e in r.status["peers"]["entries"]}
    text = net6.python(net6.fw, "-m", "p2pwall", "replay", "--plugin", "fasttrack",
                       "--lan", "2001:db8:1::/64", str(capture)).stdout
    assert f"[{net6.lan_ips6[0]}]:1214 -> [" in text  # endpoints written unambiguously


def test_fasttrack_http_downloads_over_ipv6_are_stopped(net6):
    r = scenario.run(net6, tag="noudp6", lock=LOCK, seconds=10, no_udp=True, recover=False, ipv6=True)
    assert r.client["attempts"] >= 2
    assert r.client["downloads"] == 0 and not r.downloads_served
    blocked = {e["address"] for e in r.status["peers"]["entries"]}
    assert any(":" in a for a in blocked)  # the IPv6 peers asked for files
    assert net6.outside[0] in blocked  # and the (IPv4) supernode named in X-Kazaa-SupernodeIP
    assert r.web_failed == 0


needs_bt = pytest.mark.skipif(not (shutil.which("aria2c") and shutil.which("opentracker")
                                   and shutil.which("transmission-create")),
                              reason="aria2, opentracker and transmission-cli are not installed")


@needs_bt
def test_aria2_swarm_over_ipv6(net6):
    web = net6.outside6[-1]
    net6.spawn(net6.out, sys.executable, "-m", "http.server", "8080", "--bind", web, "--directory",
               str(net6.dir), log="web6.out")
    url = f"http://[{web}]:8080/"
    assert wait_until(lambda: tcp(net6, net6.lans[1], web, 8080, timeout=1)["connected"], timeout=10)

    bare = Swarm(net6, "bt6-bare", tracker=True, ipv6=True)
    try:
        bare.start()
        bare.leech(stop_after=20)
        assert bare.pieces_received() == len(bare.payload) // (256 * 1024)  # all of it, over IPv6
        assert [c for c in bare.tracker_connections() if c.get("down", 0) > 0]  # opentracker answered
    finally:
        bare.stop()

    swarm = Swarm(net6, "bt6", tracker=True, ipv6=True)
    daemon = net6.p2pwall(net6.base_config(lock_seconds=LOCK), "--plugin", "bittorrent", name="bt6")
    try:
        with Browsing(net6, url) as browsing:
            swarm.start()
            swarm.leech(stop_after=12)
        assert swarm.pieces_received() == 0
        assert not [c for c in swarm.tracker_connections() if c.get("up", 0) > 0]  # no announce crossed
        snap = daemon.status()
        blocked = {e["address"] for e in snap["peers"]["entries"]}
        assert {swarm.tracker_ip, swarm.seeder_ip} <= blocked
        assert snap["drops_by_detector"].get("bittorrent", 0) > 0
        in_kernel = {p for _, p in net6.kernel_set("pairs6")} | net6.kernel_set("peers6") | net6.kernel_set("nolock6")
        assert swarm.seeder_ip in in_kernel
    finally:
        swarm.stop()
        assert daemon.stop() == 0
    assert browsing.results and all(browsing.results), browsing.results
    assert _leftovers(net6) == []
