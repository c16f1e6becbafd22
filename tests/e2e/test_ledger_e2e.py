"""The ledger's mirrors on the real kernel: a reload that changes the LAN interfaces moves
p2pwall's nft chain (refilled from the ledger), and monitor mode is a dry run that a real
run after it does not inherit."""

from __future__ import annotations

import json

import os
import signal
import time

import pytest

from p2pwall_lab.testbed import _sh

from .helpers import start_server, tcp, udp, wait_until

pytestmark = pytest.mark.e2e

LANB_FW, LANB_HOST = "192.0.2.129", "192.0.2.130"  # a second LAN segment, routed, not bridged


@pytest.fixture(scope="module")
def server(net):
    return start_server(net, net.out, "ledger.jsonl", udp_ports="5000", tcp_ports="80")


@pytest.fixture(scope="module")
def lanb(net):
    """A host on a second LAN interface of the firewall (``lanb``), its own /25."""
    ns = f"{net.prefix}-lanb"
    net._ns(ns)
    _sh("ip", "-n", net.fw, "link", "add", "lanb", "type", "veth", "peer", "name", "eth0", "netns", ns)
    _sh("ip", "-n", net.fw, "addr", "add", f"{LANB_FW}/25", "dev", "lanb")
    _sh("ip", "-n", net.fw, "link", "set", "lanb", "up")
    _sh("ip", "-n", ns, "addr", "add", f"{LANB_HOST}/25", "dev", "eth0")
    _sh("ip", "-n", ns, "link", "set", "eth0", "up")
    _sh("ip", "-n", ns, "route", "add", "default", "via", LANB_FW)
    assert wait_until(lambda: tcp(net, ns, net.outside[0], 80, "hello")["connected"], timeout=10)
    return ns


def config(net, interfaces, state_file=""):
    return net.base_config(lock_seconds=60, state_file=state_file).replace(
        'lan_interfaces = ["br0"]', "lan_interfaces = [" + ", ".join(f'"{i}"' for i in interfaces) + "]")


def test_a_reload_that_changes_the_lan_interfaces_moves_the_kernel_chain(net, server, lanb, testdet_env):
    peer = net.outside[3]
    d = net.p2pwall(config(net, ["br0"]), "--plugin", "testdet", env=testdet_env, name="moves")
    cfg = net.dir / "moves.toml"
    try:
        assert tcp(net, lanb, peer, 80, "control")["connected"]  # the control: the peer answers
        assert net.python(net.fw, "-m", "p2pwall", "block", peer, "--socket",
                          str(net.dir / "status.sock")).returncode == 0
        assert peer in net.kernel_set("nolock4")
        assert not tcp(net, net.lans[0], peer, 80, "x", timeout=1)["connected"]  # br0: enforced
        assert tcp(net, lanb, peer, 80, "x")["connected"]  # lanb: not a LAN interface yet
        cfg.write_text(config(net, ["lanb"]))
        d.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "event=reloaded" in d.output(), timeout=10)
        chain = net.exec(net.fw, "nft", "list", "chain", "inet", "p2pwall0", "pre").stdout
        assert '"lanb"' in chain and '"br0"' not in chain
        assert peer in net.kernel_set("nolock4")  # refilled from the ledger
        assert not tcp(net, lanb, peer, 80, "y", timeout=1)["connected"]  # the new interface: enforced
        assert tcp(net, net.lans[0], peer, 80, "y")["connected"]  # the old one: no longer
    finally:
        assert d.stop() == 0
    assert "p2pwall" not in net.exec(net.fw, "nft", "list", "tables").stdout


def test_a_monitor_run_leaves_nothing_for_the_real_run_after_it(net, server, testdet_env):
    state = net.dir / "monitor-state.json"
    peer, client = net.outside[4], net.lans[0]
    cfg = config(net, ["br0"], state_file=str(state))
    d = net.p2pwall(cfg, "--plugin", "testdet", "--monitor", env=testdet_env, name="dry")
    try:
        got = udp(net, client, peer, 5000, b"BLOCK-dry")
        assert got[0]["reply"] == b"ECHO:BLOCK-dry".hex()  # let through
        udp(net, net.lans[1], net.outside[5], 5000, b"LOCK-dry", wait=0.3)
        snap = d.status()
        counters = snap["counters"]
        assert counters["would_drop"] >= 1 and counters["dropped"] == 0
        assert counters["would_block"] >= 1 and counters["would_lock"] >= 1
        assert [e["address"] for e in snap["peers"]["entries"]] == [peer]  # decided, logged ...
    finally:
        assert d.stop() == 0
    assert not state.exists()  # ... and nothing saved
    d = net.p2pwall(cfg, "--plugin", "testdet", env=testdet_env, name="after-dry")
    try:
        snap = d.status()
        assert snap["peers"]["count"] == 0 and snap["locks"]["count"] == 0
        assert peer not in net.kernel_set("peers4") and all(p != peer for _, p in net.kernel_set("pairs4"))
        assert tcp(net, client, peer, 80, "free")["connected"]
        assert tcp(net, net.lans[1], net.outside[6], 80, "free")["connected"]  # the dry run's lock is not here
    finally:
        d.stop()


@pytest.mark.parametrize("flush", [["nft", "flush", "ruleset"], ["iptables", "-F"]])
def test_a_firewall_reload_is_undone_within_seconds(net, server, testdet_env, flush):
    """``systemctl restart nftables`` (Debian's nftables.conf starts with ``flush
    ruleset``) or an ``iptables -F`` took p2pwall's rules away and P2P flowed: now the
    daemon notices, puts everything back and fills the sets from its ledger."""
    peer, client = net.outside[7], net.lans[0]
    history = net.dir / "p2pwall" / f"heal-{flush[0]}.db"
    d = net.p2pwall(config(net, ["br0"]) + f'[history]\nfile = "{history}"\n', "--plugin", "testdet",
                    env=testdet_env, name=f"heal-{flush[0]}")
    try:
        udp(net, client, peer, 5000, b"BLOCK-heal", wait=0.3)
        udp(net, net.lans[1], peer, 5000, b"BLOCK-heal", wait=0.3)  # two clients: LAN-wide
        assert peer in net.kernel_set("peers4")
        time.sleep(3)  # more than one check: nothing is missing, nothing put back
        assert "rules_restored" not in d.output()
        reaches = lambda: udp(net, net.lans[1], peer, 5000, b"hello", wait=0.5)[0]["reply"] is not None  # noqa: E731
        assert not reaches()
        # status says what the kernel dropped by itself, and which LAN it enforces
        assert wait_until(lambda: d.status()["queue_health"].get("kernel_drops", {}).get("peers", 0) >= 1, 5)
        assert d.status()["lan"]["interfaces"] == ["br0"]
        d.proc.send_signal(signal.SIGSTOP)  # held still while the firewall is reloaded and the control runs
        try:
            net.exec(net.fw, *flush)
            if flush[0] == "nft":
                assert reaches()  # the control: with the rules gone, P2P flows
        finally:
            d.proc.send_signal(signal.SIGCONT)
        assert wait_until(lambda: "event=rules_restored" in d.output(), timeout=5)
        assert peer in net.kernel_set("peers4")  # refilled from the ledger
        if flush[0] == "nft":  # and the per-host bound's stations from the neighbour table
            assert wait_until(lambda: any(ip == net.lan_ips[1] for ip, _ in net.kernel_set("stations4")), 5)
        assert "P2PWALL-F0" in net.iptables_save()
        assert not reaches()  # enforced again
        assert d.status()["counters"]["rules_restored"] >= 1
    finally:
        assert d.stop() == 0
    assert "p2pwall" not in net.exec(net.fw, "nft", "list", "tables").stdout
    assert "P2PWALL" not in net.iptables_save()
    report = json.loads(net.python(net.fw, "-m", "p2pwall", "report", "--history", str(history),
                                   "--format", "json").stdout)
    assert report["totals"]["rules_restored"] >= 1  # kept in the history too (and told to [notify])


def test_a_second_run_that_cannot_start_touches_nothing_of_the_first(net, server, testdet_env):
    """A second `run` fails on the queue (or, on another queue, on the status socket) and
    leaves the running instance's state file, rules and sets exactly as they were."""
    import subprocess
    import sys

    state = net.dir / "first-state.json"
    cfg = config(net, ["br0"], state_file=str(state))
    d = net.p2pwall(cfg, "--plugin", "testdet", env=testdet_env, name="first")
    try:
        assert net.python(net.fw, "-m", "p2pwall", "block", net.outside[8], "--socket",
                          str(net.dir / "status.sock")).returncode == 0  # saved at once
        before = state.read_bytes()
        ours = lambda: [line for line in net.iptables_save().splitlines() if "P2PWALL" in line]  # noqa: E731
        rules_before = ours()
        assert net.outside[8].encode() in before
        path = net.dir / "second.toml"
        path.write_text(cfg)
        for extra in ([], ["--queue", "1"]):
            done = subprocess.run(["ip", "netns", "exec", net.fw, sys.executable, "-m", "p2pwall", "run",
                                   "--config", str(path), "--plugin", "testdet", *extra],
                                  capture_output=True, text=True, timeout=60, env={**os.environ, **testdet_env})
            assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1, done.stderr
            assert "in use" in done.stderr, done.stderr
            assert state.read_bytes() == before, extra  # byte-identical
            assert ours() == rules_before
            assert net.outside[8] in net.kernel_set("nolock4")
        assert d.status()["peers"]["count"] == 1
    finally:
        assert d.stop() == 0


def test_systemd_is_told_ready_once_the_rules_are_in_and_the_watchdog_is_fed(net, testdet_env):
    import socket as s

    path = net.dir / "notify.sock"
    sock = s.socket(s.AF_UNIX, s.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        env = {**testdet_env, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
        d = net.p2pwall(config(net, ["br0"]), "--plugin", "testdet", env=env, name="notify")
        try:
            first = sock.recv(4096).decode()
            assert first.startswith("READY=1") and "P2PWALL-F0" in net.iptables_save()  # ready: rules in
            assert sock.recv(4096).decode() == "WATCHDOG=1"  # at half the watchdog's period
        finally:
            assert d.stop() == 0
        messages = []
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except s.timeout:
                break
        assert "STOPPING=1" in messages
    finally:
        sock.close()
