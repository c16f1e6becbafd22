"""The foundation against the real kernel: verdicts, Block, Lock, Spoof, clean stop."""

from __future__ import annotations

import signal
import time

import pytest

from .helpers import arrivals, start_server, tcp, udp, wait_until

pytestmark = pytest.mark.e2e
LOCK = 5  # seconds: short so the expiry is observed, long enough for slow steps


@pytest.fixture(scope="module")
def server(net):
    return start_server(net, net.out, "outside.jsonl", udp_ports="5000", tcp_ports="80")


@pytest.fixture
def daemon(net, server, testdet_env):
    d = net.p2pwall(net.base_config(lock_seconds=LOCK), "--plugin", "testdet", env=testdet_env)
    try:
        yield d
    finally:
        d.stop()


def test_accepted_packets_cross_and_dropped_ones_do_not(net, server, daemon):
    lan1 = net.lans[0]
    peer = net.outside[0]
    ok = udp(net, lan1, peer, 5000, b"HELLO-1")
    assert ok[0]["reply"] == (b"ECHO:HELLO-1").hex()
    dropped = udp(net, lan1, peer, 5000, b"DROP-1", wait=0.5)
    assert dropped[0]["reply"] is None
    assert arrivals(server, data=b"HELLO-1".hex())
    assert not arrivals(server, data=b"DROP-1".hex())
    snap = daemon.status()
    assert snap["counters"]["packets"] >= 2
    assert snap["counters"]["dropped"] >= 1


def test_block_stops_that_client_then_every_lan_host_once_corroborated(net, server, daemon):
    lan1, lan2 = net.lans
    blocked, other = net.outside[1], net.outside[2]
    assert udp(net, lan2, blocked, 5000, b"BLOCK-2", wait=0.5)[0]["reply"] is None
    # later UDP to the noted peer is dropped in the kernel for that client (the nft pair set) ...
    assert udp(net, lan2, blocked, 5000, b"AFTER-2", wait=0.5)[0]["reply"] is None
    assert not arrivals(server, dst=blocked)
    # ... while one client's packet proves nothing about the other
    assert udp(net, lan1, blocked, 5000, b"FREE-1", wait=0.5)[0]["reply"] is not None
    snap = daemon.status()
    assert [(e["address"], e["scope"], e["own_clients"]) for e in snap["peers"]["entries"]] == \
        [(blocked, "client", [net.lan_ips[1]])]
    # a second client's own evidence makes it LAN-wide: TCP too, whoever sends it
    assert udp(net, lan1, blocked, 5000, b"BLOCK-1", wait=0.5)[0]["reply"] is None
    assert daemon.status()["peers"]["entries"][0]["scope"] == "lan"
    assert not tcp(net, lan1, blocked, 80, timeout=1.5)["connected"]
    assert not [a for a in arrivals(server, dst=blocked) if a.get("proto") == "tcp"]
    # lan2 never sent a SYN to the peer: its web traffic elsewhere is untouched
    assert tcp(net, lan2, other, 80)["connected"]


def test_a_locked_clients_syn_to_its_own_blocked_peer_renews_its_lock(net, server, daemon):
    """A peer blocked for one client alone (the nft pair set): each further SYN the locked
    client sends it reaches the engine and restarts the lock, as ftwall's rule says; the
    kernel's lock rule must not drop it first."""
    lan1 = net.lans[0]
    blocked, web = net.outside[5], net.outside[6]
    udp(net, lan1, blocked, 5000, b"BLOCK-5", wait=0.3)
    assert [e["scope"] for e in daemon.status()["peers"]["entries"] if e["address"] == blocked] == ["client"]
    assert not tcp(net, lan1, blocked, 80, timeout=0.5)["connected"]  # locks lan1

    def remaining() -> float:
        return [e["remaining"] for e in daemon.status()["locks"]["entries"] if e["address"] == net.lan_ips[0]][0]

    time.sleep(2.0)
    before = remaining()
    assert before < LOCK - 1.5
    assert not tcp(net, lan1, blocked, 80, timeout=0.5)["connected"]  # locked already: renewed?
    assert remaining() > before + 1.5
    assert not tcp(net, lan1, web, 80, timeout=0.5)["connected"]


def test_syn_to_blocked_peer_locks_the_client_until_the_lock_expires(net, server, daemon):
    lan1, lan2 = net.lans
    blocked, web = net.outside[3], net.outside[4]
    udp(net, lan1, blocked, 5000, b"BLOCK-3", wait=0.3)
    assert not tcp(net, lan1, blocked, 80, timeout=0.5)["connected"]  # locks lan1
    locked = daemon.status()["locks"]["entries"]
    assert [e["address"] for e in locked] == [net.lan_ips[0]]
    assert not tcp(net, lan1, web, 80, timeout=0.5)["connected"]
    assert tcp(net, lan2, web, 80)["connected"]  # other hosts untouched
    # no further SYN to the peer: the lock runs out and the web works again
    assert wait_until(lambda: tcp(net, lan1, web, 80, timeout=1)["connected"], timeout=LOCK + 6)
    assert daemon.status()["locks"]["count"] == 0
    assert "event=lock_expired" in daemon.output()


def test_lock_action_stops_syns_and_expires(net, server, daemon):
    lan1, lan2 = net.lans
    web = net.outside[5]
    udp(net, lan1, web, 5000, b"LOCK-4", wait=0.3)
    started = time.monotonic()
    assert not tcp(net, lan1, web, 80, timeout=1)["connected"]
    assert tcp(net, lan2, web, 80)["connected"]
    assert wait_until(lambda: tcp(net, lan1, web, 80, timeout=1)["connected"], timeout=LOCK + 6)
    assert time.monotonic() - started >= LOCK - 1.5


def test_spoof_reaches_the_lan_client_and_never_goes_outward(net, server, daemon):
    lan1 = net.lans[0]
    peer = net.outside[6]
    got = udp(net, lan1, peer, 5000, b"SPOOF-5", sport=7777, wait=2)
    assert got[0]["reply"] == b"SPOOFED".hex()
    assert got[0]["from"] == peer and got[0]["from_port"] == 5000
    out = udp(net, lan1, peer, 5000, b"SENDOUT-6", wait=0.5)
    assert out[0]["reply"] == (b"ECHO:SENDOUT-6").hex()  # the packet itself is accepted
    time.sleep(0.3)
    assert not arrivals(server, data=b"SPOOFED-OUT".hex())
    assert daemon.status()["counters"].get("send_refused", 0) >= 1


def test_a_raising_detector_never_costs_the_verdict(net, server, daemon):
    lan1 = net.lans[0]
    peer = net.outside[7]
    for i in range(5):
        got = udp(net, lan1, peer, 5000, b"RAISE-%d" % i)
        assert got[0]["reply"] == (b"ECHO:RAISE-%d" % i).hex()
    assert daemon.proc.poll() is None
    assert daemon.status()["counters"]["detector_errors"] >= 5
    assert daemon.output().count("event=detector_error") == 1  # rate limited


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_rules_installed_while_running_and_gone_after_stop(net, server, testdet_env, sig):
    d = net.p2pwall(net.base_config(), "--plugin", "testdet", env=testdet_env)
    try:
        rules = net.iptables_save()
        assert "-A FORWARD -j P2PWALL-F0" in rules and "NFQUEUE --queue-num 0 --queue-bypass" in rules
        assert "p2pwall-locks0" in net.exec(net.fw, "ipset", "list", "-n").stdout
        assert "table inet p2pwall0" in net.exec(net.fw, "nft", "list", "tables").stdout
    finally:
        code = d.stop(sig)
    assert code == 0
    assert "P2PWALL" not in net.iptables_save()
    assert net.exec(net.fw, "ipset", "list", "-n").stdout.strip() == ""
    assert "p2pwall" not in net.exec(net.fw, "nft", "list", "tables").stdout
    assert udp(net, net.lans[0], net.outside[8], 5000, b"DROP-after-stop")[0]["reply"]


def test_second_instance_on_the_same_queue_fails_and_touches_nothing(net, server, testdet_env):
    first = net.p2pwall(net.base_config(), "--plugin", "testdet", env=testdet_env)
    try:
        before = net.iptables_save()
        done = net.exec(net.fw, *first_cmd(net), check=False, timeout=30)
        assert done.returncode == 2
        assert "queue 0 is already in use" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert _rules(net.iptables_save()) == _rules(before)
        assert udp(net, net.lans[0], net.outside[9], 5000, b"DROP-7", wait=0.5)[0]["reply"] is None
    finally:
        first.stop()


def first_cmd(net):
    import sys

    path = net.dir / "second.toml"
    path.write_text(net.base_config().replace("status.sock", "status2.sock"))
    return [sys.executable, "-m", "p2pwall", "run", "--config", str(path), "--plugin", "fasttrack"]


def _rules(save: str) -> list[str]:
    return [line for line in save.splitlines() if line.startswith("-")]
