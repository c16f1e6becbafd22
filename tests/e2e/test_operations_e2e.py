"""Production behaviour against the real kernel: crashes, restarts, reloads, monitor
mode, dropped privileges, status and metrics."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import pytest

from .helpers import arrivals, start_server, tcp, udp, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(net):
    return start_server(net, net.out, "ops.jsonl", udp_ports="5000", tcp_ports="80")


def _echo_loop(net, ns, peer, seconds, results):
    """One UDP round trip every 50 ms from a single long-lived helper: (time, ok)."""
    code = (
        "import socket,time,json,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(0.2)\n"
        "out=[];end=time.time()+%f;i=0\n"
        "while time.time()<end:\n"
        "  i+=1;t=time.time();s.sendto(b'PING-%%d'%%i,('%s',5000))\n"
        "  try:\n    s.recvfrom(100);out.append((t,1))\n"
        "  except OSError:\n    out.append((t,0))\n"
        "  time.sleep(max(0,0.05-(time.time()-t)))\n"
        "print(json.dumps(out))\n" % (seconds, peer))
    done = net.exec(ns, sys.executable, "-c", code, timeout=seconds + 30)
    results.extend(json.loads(done.stdout))


def test_kill_9_leaves_traffic_flowing_and_the_next_start_cleans_up(net, server, testdet_env):
    d = net.p2pwall(net.base_config(), "--plugin", "testdet", env=testdet_env, name="kill9")
    results: list = []
    loop = threading.Thread(target=_echo_loop, args=(net, net.lans[1], net.outside[10], 4.0, results))
    loop.start()
    time.sleep(1.5)
    killed_at = time.time()
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(5)
    loop.join(60)
    before = [ok for t, ok in results if t < killed_at]
    after = [ok for t, ok in results if t >= killed_at]
    assert before and all(before)
    lost = after.count(0)
    print(f"kill -9: {lost} of {len(after)} round trips lost after the kill")
    assert lost <= 1, results  # at most the packet in flight in the queue at the instant
    assert "P2PWALL-F0" in net.iptables_save()  # a crash leaves its rules behind ...
    again = net.p2pwall(net.base_config(), "--plugin", "testdet", env=testdet_env, name="kill9-again")
    try:
        saved = net.iptables_save()
        assert saved.count("-A FORWARD -j P2PWALL-F0") == 1  # ... and the next start cleans them
        assert saved.count("-A P2PWALL-C0 -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j NFQUEUE") == 1
    finally:
        assert again.stop() == 0
    assert "P2PWALL" not in net.iptables_save()


def test_fail_closed_drops_when_the_daemon_is_gone(net, server, testdet_env):
    cfg = net.base_config(extra="[queue]\nfail_closed = true\n")
    d = net.p2pwall(cfg, "--plugin", "testdet", env=testdet_env, name="closed")
    assert "--queue-bypass" not in net.iptables_save()
    assert udp(net, net.lans[1], net.outside[11], 5000, b"hello")[0]["reply"]
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(5)
    try:
        assert udp(net, net.lans[1], net.outside[11], 5000, b"hello", wait=0.5)[0]["reply"] is None
    finally:
        again = net.p2pwall(net.base_config(), "--plugin", "testdet", env=testdet_env, name="closed-again")
        again.stop()
    assert "P2PWALL" not in net.iptables_save()


def test_learned_peers_and_locks_survive_a_restart(net, server, testdet_env):
    state = str(net.dir / "restart-state.json")
    cfg = net.base_config(lock_seconds=60, state_file=state)
    peer = net.outside[12]
    d = net.p2pwall(cfg, "--plugin", "testdet", env=testdet_env, name="restart1")
    udp(net, net.lans[0], peer, 5000, b"BLOCK-r", wait=0.3)
    udp(net, net.lans[1], net.outside[13], 5000, b"LOCK-r", wait=0.3)
    assert d.stop() == 0
    assert json.loads(open(state).read())["records"][0]["addr"] == peer
    d = net.p2pwall(cfg, "--plugin", "testdet", env=testdet_env, name="restart2")
    try:
        assert "event=state_restored entries=2" in d.output()
        snap = d.status()
        assert [e["address"] for e in snap["peers"]["entries"]] == [peer]
        assert [e["address"] for e in snap["locks"]["entries"]] == [net.lan_ips[1]]
        assert udp(net, net.lans[0], peer, 5000, b"after restart", wait=0.5)[0]["reply"] is None
        assert not tcp(net, net.lans[1], net.outside[14], 80, timeout=1)["connected"]
    finally:
        d.stop()


def test_a_corrupt_state_file_is_set_aside_not_fatal(net, server, testdet_env):
    state = net.dir / "corrupt-state.json"
    state.write_text('{"version": 1, "peers": [{"addr')
    d = net.p2pwall(net.base_config(state_file=str(state)), "--plugin", "testdet", env=testdet_env,
                    name="corrupt")
    try:
        assert "event=state_corrupt" in d.output()
        assert list(net.dir.glob("corrupt-state.json.corrupt-*"))
        assert udp(net, net.lans[0], net.outside[15], 5000, b"hi")[0]["reply"]
    finally:
        d.stop()


def test_sighup_applies_a_new_config_keeps_tables_and_rejects_a_bad_one(net, server, testdet_env):
    d = net.p2pwall(net.base_config(lock_seconds=60), "--plugin", "testdet", env=testdet_env, name="hup")
    cfg = net.dir / "hup.toml"
    peer = net.outside[16]
    try:
        udp(net, net.lans[0], peer, 5000, b"BLOCK-h", wait=0.3)
        cfg.write_text(net.base_config(lock_seconds=60, extra='[network.bogus]\n'))
        d.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "event=reload_rejected" in d.output(), timeout=5)
        assert d.proc.poll() is None
        cfg.write_text(net.base_config(lock_seconds=2).replace(
            '[network]\n', f'[network]\nallow = ["{net.outside[17]}"]\n'))
        d.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "event=reloaded" in d.output(), timeout=5)
        snap = d.status()
        assert [e["address"] for e in snap["peers"]["entries"]] == [peer]  # tables kept
        udp(net, net.lans[0], net.outside[17], 5000, b"BLOCK-allowed", wait=0.3)
        assert [e["address"] for e in d.status()["peers"]["entries"]] == [peer]  # allowlisted: never blocked
        udp(net, net.lans[1], net.outside[18], 5000, b"LOCK-h", wait=0.3)
        lock = d.status()["locks"]["entries"][0]
        assert 0 < lock["remaining"] <= 2  # the new lock time
    finally:
        d.stop()


def test_monitor_mode_decides_and_logs_but_accepts(net, server, testdet_env):
    d = net.p2pwall(net.base_config(), "--plugin", "testdet", "--monitor", env=testdet_env, name="monitor")
    try:
        got = udp(net, net.lans[0], net.outside[19], 5000, b"BLOCK-m")
        assert got[0]["reply"] == b"ECHO:BLOCK-m".hex()
        assert arrivals(server, data=b"BLOCK-m".hex())
        snap = d.status()
        assert snap["monitor"] and snap["counters"]["would_drop"] == 1
        assert "event=peer_blocked" in d.output()
        assert net.exec(net.fw, "ipset", "list", "-n").stdout.strip() == ""  # nothing enforced in the kernel
        assert "p2pwall" not in net.exec(net.fw, "nft", "list", "tables").stdout
    finally:
        d.stop()


def test_privileges_are_dropped_and_everything_still_works(net, server, testdet_env):
    own = net.dir / "p2pwall"  # with [daemon] user, socket and state live in a directory of p2pwall's own
    cfg = (f'[network]\nlan_interfaces = ["br0"]\nlan_networks = ["192.0.2.0/24"]\n[lock]\nseconds = 60\n'
           f'[status]\nsocket = "{own}/status.sock"\n[state]\nfile = "{own}/state.json"\n[daemon]\nuser = "nobody"\n'
           f'[history]\nfile = "{own}/history.db"\n')
    refused = net.base_config(lock_seconds=60, extra='[daemon]\nuser = "nobody"\n')  # a socket in a shared dir
    path = net.dir / "refused.toml"
    path.write_text(refused)
    done = net.python(net.fw, "-m", "p2pwall", "run", "--config", str(path), "--plugin", "fasttrack", check=False)
    assert done.returncode == 2 and "directory of p2pwall's own" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    os.chmod(net.dir, 0o755)  # the daemon's user must reach its own directory inside
    d = net.p2pwall(cfg, "--plugin", "testdet", env=testdet_env, name="unpriv")
    (net.dir / "status.sock").unlink(missing_ok=True)
    (net.dir / "status.sock").symlink_to(own / "status.sock")  # where net.status() asks
    try:
        status = open(f"/proc/{d.proc.pid}/status").read()
        uid = [line for line in status.splitlines() if line.startswith("Uid:")][0].split()[1:]
        assert set(uid) == {"65534"}
        caps = {line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines()
                if line.startswith("Cap")}
        assert caps["CapEff"] == (1 << 12) | (1 << 13) and caps["CapPrm"] == caps["CapEff"]
        peer = net.outside[0]
        udp(net, net.lans[0], peer, 5000, b"BLOCK-p", wait=0.3)  # kernel set update runs unprivileged
        assert wait_until(lambda: f"{net.lan_ips[0]} . {peer}" in net.exec(
            net.fw, "nft", "list", "set", "inet", "p2pwall0", "pairs4").stdout, timeout=3)
        got = udp(net, net.lans[0], net.outside[2], 5000, b"SPOOF-p", sport=7777, wait=2)
        assert got[0]["reply"] == b"SPOOFED".hex()  # the raw socket opened as root still sends
        assert d.status()["counters"]["packets"] >= 2
    finally:
        (net.dir / "status.sock").unlink(missing_ok=True)
        assert d.stop() == 0
    assert "P2PWALL" not in net.iptables_save()  # removed without root
    assert net.exec(net.fw, "ipset", "list", "-n").stdout.strip() == ""
    report = json.loads(net.python(net.fw, "-m", "p2pwall", "report", "--history", str(own / "history.db"),
                                   "--format", "json").stdout)  # the history, written as nobody
    assert report["totals"]["peers_blocked"] == 1 and report["totals"]["by_kind"]["stopped"] == 1
    assert "p2pwall" not in net.exec(net.fw, "nft", "list", "tables").stdout


def test_status_group_reads_and_only_root_changes(net, server, testdet_env):
    import grp

    gid = grp.getgrnam("nogroup").gr_gid
    own = net.dir / "p2pwall"
    sock = own / "status.sock"
    cfg = net.base_config(extra=f'[status]\nsocket = "{sock}"\ngroup = "nogroup"\n').replace(
        f'[status]\nsocket = "{net.dir}/status.sock"\n', "")
    os.chmod(net.dir, 0o755)  # nobody must reach the socket's directory
    d = net.p2pwall(cfg, "--plugin", "testdet", env=testdet_env, name="group")
    (net.dir / "status.sock").unlink(missing_ok=True)
    (net.dir / "status.sock").symlink_to(sock)  # where d.status() asks
    peer = net.outside[3]

    def as_nobody(groups, *args):  # in group "daemon" (1), and maybe in nogroup too
        return net.exec(net.fw, "setpriv", "--reuid=65534", "--regid=1", *groups, sys.executable,
                        "-m", "p2pwall", *args, "--socket", str(sock), check=False)

    try:
        udp(net, net.lans[0], peer, 5000, b"BLOCK-g", wait=0.3)
        assert os.stat(sock).st_gid == gid and oct(os.stat(sock).st_mode & 0o777) == "0o660"
        member = as_nobody([f"--groups={gid}"], "status", "--format", "json")
        assert member.returncode == 0, member.stderr
        assert [e["address"] for e in json.loads(member.stdout)["peers"]["entries"]] == [peer]
        change = as_nobody([f"--groups={gid}"], "unblock", peer)
        assert change.returncode == 2 and "needs root" in change.stderr and "Traceback" not in change.stderr
        raw = net.exec(net.fw, "setpriv", "--reuid=65534", "--regid=1", f"--groups={gid}", sys.executable,
                       "-c", "import json,sys;from p2pwall.status import query;"
                       f"print(json.dumps(query({str(sock)!r},{{'cmd':'unblock','address':{peer!r}}})))")
        assert json.loads(raw.stdout) == {"ok": False, "error": "only root may change p2pwall's tables"}
        assert [e["address"] for e in d.status()["peers"]["entries"]] == [peer]  # nothing changed
        stranger = as_nobody(["--clear-groups"], "status")
        assert stranger.returncode == 2 and "permission denied" in stranger.stderr
        assert "[status] group" in stranger.stderr and len(stranger.stderr.strip().splitlines()) == 1
    finally:
        (net.dir / "status.sock").unlink(missing_ok=True)
        assert d.stop() == 0
    assert not sock.exists()


def test_status_and_metrics(net, server, testdet_env):
    cfg = net.base_config(extra='[metrics]\nlisten = "127.0.0.1:9733"\n')
    d = net.p2pwall(cfg, "--plugin", "testdet", env=testdet_env, name="metrics")
    try:
        udp(net, net.lans[0], net.outside[1], 5000, b"BLOCK-s", wait=0.3)
        snap = d.status()
        peer = snap["peers"]["entries"][0]
        assert peer["reason"] == "asked to block" and peer["detector"] == "testdet"
        assert peer["until"] > time.time() + 80000  # a day ahead, as a wall-clock time
        assert snap["uptime"] > 0 and snap["drops_by_detector"] == {"testdet": 1}
        text = net.python(net.fw, "-m", "p2pwall", "status", "--socket", str(net.dir / "status.sock")).stdout
        assert net.outside[1] in text and "asked to block" in text
        body = net.python(net.fw, "-c", "import urllib.request;print(urllib.request.urlopen("
                          "'http://127.0.0.1:9733/metrics',timeout=5).read().decode())").stdout
        assert 'p2pwall_packets_total{verdict="drop"} 1' in body
        assert 'p2pwall_detections_total{detector="testdet"} 1' in body
        assert 'p2pwall_table_entries{table="peers"} 1' in body
        assert "p2pwall_queue_dropped_total" in body
        sock = net.dir / "status.sock"
        assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
    finally:
        d.stop()


def test_two_workers_share_the_kernel_sets_and_status_merges_them(net, server, testdet_env):
    cfg = net.base_config(lock_seconds=60, extra="[queue]\nworkers = 2\n")
    d = net.p2pwall(cfg, "--plugin", "testdet", env=testdet_env, name="workers")
    try:
        assert "--queue-balance 0:1" in net.iptables_save()
        for i in range(10):  # ten address pairs: the kernel spreads them over both queues
            assert udp(net, net.lans[0], net.outside[i], 5000, b"hello-%d" % i)[0]["reply"]
        peer = net.outside[12]
        udp(net, net.lans[0], peer, 5000, b"BLOCK-w", wait=0.3)
        snap = d.status()
        assert [w["queue"] for w in snap["workers"]] == [0, 1]
        assert all(w["packets"] > 0 for w in snap["workers"]), snap["workers"]
        assert snap["counters"]["packets"] >= 11
        assert [e["address"] for e in snap["peers"]["entries"]] == [peer]
        # whichever worker learned it, the shared kernel set stops that LAN host (and only it)
        assert udp(net, net.lans[0], peer, 5000, b"after", wait=0.5)[0]["reply"] is None
        assert udp(net, net.lans[1], peer, 5000, b"other", wait=0.5)[0]["reply"] is not None
        pids = [w["pid"] for w in snap["workers"]]
    finally:
        assert d.stop() == 0
    assert "P2PWALL" not in net.iptables_save()
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read()


def test_a_crash_forgets_nothing_the_kernel_still_knew(net, server):
    """Learn peers (one client-scoped, one LAN-wide) and a lock, kill -9, restart at
    once with no state file at all: every entry comes back from the kernel sets, with
    its remaining time, detector, evidence and reason, and is still enforced."""
    from p2pwall_plugins.fasttrack import make_ping

    cfg = net.base_config(lock_seconds=60)
    d = net.p2pwall(cfg, "--plugin", "fasttrack", name="crash-1")
    lan1, lan2 = net.lans
    solo, shared, web = net.outside[14], net.outside[15], net.outside[16]
    udp(net, lan1, solo, 5000, make_ping(), wait=0.3)
    udp(net, lan1, shared, 5000, make_ping(), wait=0.3)
    udp(net, lan2, shared, 5000, make_ping(), wait=0.3)
    assert not tcp(net, lan1, solo, 80, timeout=0.5)["connected"]  # locks lan1
    before = {e["address"]: e for e in d.status()["peers"]["entries"]}
    assert before[solo]["scope"] == "client" and before[shared]["scope"] == "lan"
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(5)
    again = net.p2pwall(cfg, "--plugin", "fasttrack", name="crash-2")
    try:
        snap = again.status()
        after = {e["address"]: e for e in snap["peers"]["entries"]}
        assert set(after) == set(before)
        for addr in (solo, shared):
            for key in ("scope", "detector", "reason", "evidence"):
                assert after[addr][key] == before[addr][key], (addr, key, after[addr], before[addr])
            assert before[addr]["remaining"] - 30 < after[addr]["remaining"] <= before[addr]["remaining"] + 1
        assert [e["address"] for e in snap["locks"]["entries"]] == [net.lan_ips[0]]
        assert not tcp(net, lan1, web, 80, timeout=0.5)["connected"]  # still locked
        assert udp(net, lan2, shared, 5000, b"after", wait=0.5)[0]["reply"] is None  # still blocked for all
        assert udp(net, lan2, solo, 5000, b"free", wait=0.5)[0]["reply"] is not None  # and solo only for lan1
        assert "kernel_sets_recovered" in again.output()
    finally:
        assert again.stop() == 0
