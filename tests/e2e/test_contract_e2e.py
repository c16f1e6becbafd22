"""The queue policy and core-owned state on the real kernel: a detector's `lock = false`
holds in the kernel sets too, `p2pwall rules` prints what `run` installed, and FastTrack
still probes a host it locked before a SIGHUP or a restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from .helpers import start_server, tcp, udp

pytestmark = pytest.mark.e2e
GNUTELLA_PING = bytes(16) + b"\x00\x01\x00\x00\x00\x00\x00"


@pytest.fixture(scope="module")
def server(net):
    return start_server(net, net.out, "contract.jsonl", udp_ports="6346,1214", tcp_ports="80,6346,1214")


def ipset(net, name) -> str:
    return net.exec(net.fw, "ipset", "list", name).stdout


def test_lock_false_is_kept_by_the_kernel_and_rules_print_what_run_installed(net, server):
    extra = "[detectors.gnutella]\nlock = false\n"
    config = net.base_config(lock_seconds=30, extra=extra)
    d = net.p2pwall(config, "--plugin", "gnutella", name="nolock")
    try:
        lan, peer, web = net.lans[0], net.outside[3], net.outside[4]
        assert udp(net, lan, peer, 6346, GNUTELLA_PING, wait=0.5)[0]["reply"] is None
        assert udp(net, net.lans[1], peer, 6346, GNUTELLA_PING, wait=0.5)[0]["reply"] is None  # LAN-wide now
        assert not tcp(net, lan, peer, 6346, timeout=1)["connected"]  # the peer stays blocked ...
        assert tcp(net, lan, web, 80)["connected"]  # ... and nobody is locked
        assert tcp(net, lan, web, 80)["connected"]
        assert peer in net.kernel_set("nolock4") and peer not in net.kernel_set("peers4")
        assert "192.0.2" not in ipset(net, "p2pwall-locks0").split("Members:")[1]
        snap = d.status()
        assert snap["locks"]["count"] == 0 and snap["peers"]["count"] == 1
        printed = net.python(net.fw, "-m", "p2pwall", "rules", "--config", str(net.dir / "nolock.toml"),
                             "--plugin", "gnutella").stdout
        assert printed == snap["rules"] and "@nolock4 counter drop" in printed
        saved = net.iptables_save()
        for line in printed.splitlines():  # and the kernel holds each of those chains
            if line.startswith(":P2PWALL"):
                assert line.split()[0] in saved
    finally:
        assert d.stop() == 0


def _lock_with_a_ping(net, server_peer):
    from p2pwall_plugins.fasttrack import make_ping

    lan = net.lans[0]
    udp(net, lan, server_peer, 1214, make_ping(), sport=1214, wait=0.3)
    assert not tcp(net, lan, server_peer, 1214, timeout=0.5)["connected"]


def _probe_arrives(net, within: float) -> list:
    done = net.exec(net.lans[0], sys.executable, "-m", "p2pwall_lab.testbed.traffic", "listen", "--port", "1214",
                    "--count", "1", "--seconds", str(within), timeout=within + 20)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("how", ["sighup", "restart"])
def test_fasttrack_still_probes_after_a_reload_or_restart(net, server, how, tmp_path):
    from p2pwall_plugins.fasttrack import make_ping

    state = tmp_path / "state.json"
    config = net.base_config(lock_seconds=8, state_file=str(state))
    d = net.p2pwall(config, "--plugin", "fasttrack", name=f"probe-{how}")
    try:
        _lock_with_a_ping(net, net.outside[5 if how == "sighup" else 6])
        assert d.status()["locks"]["count"] == 1
        if how == "sighup":
            d.proc.send_signal(signal.SIGHUP)
        else:
            assert d.stop() == 0
            d = net.p2pwall(config, "--plugin", "fasttrack", name="probe-restarted")
        got = _probe_arrives(net, within=7)
        assert got and got[0]["from"] == "192.0.2.1" and bytes.fromhex(got[0]["data"]) == make_ping(), got
        assert d.status()["events"].get("probe_sent", 0) >= 1
    finally:
        d.stop()
        subprocess.run(["ip", "netns", "exec", net.fw, "ipset", "list", "-n"], capture_output=True)
