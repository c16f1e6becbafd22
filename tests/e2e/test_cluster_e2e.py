"""Two gateways, one memory, on the real kernel with a real redis-server: what one
gateway learns is enforced by the other within a second, an HA failover lets nothing
through, a Redis outage costs no filtering and no entry, operators' commands reach
every gateway, and entries written without the key are ignored."""

from __future__ import annotations

import json
import sys
import threading
import time

import pytest

from p2pwall_lab.testbed import nft_set

from .conftest import _need_root

pytestmark = pytest.mark.e2e
TOOL = ("-m", "p2pwall_lab.testbed.traffic")


@pytest.fixture(scope="module")
def cnet():
    _need_root()
    import shutil

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is missing (scripts/setup.sh installs it)")
    from p2pwall_lab.testbed.cluster import ClusterNetwork

    net = ClusterNetwork(outside_addresses=40)
    try:
        net.start_redis()
        net.prepare(udp="1214,5000", tcp="80,1214")
        yield net
    finally:
        net.close()


@pytest.fixture(scope="module")
def gateways(cnet):
    daemons = [cnet.p2pwall(i, cnet.config(i, key_file=cnet.key_file,
                                           extra=f'[history]\nfile = "{cnet.dir}/p2pwall/gw{i + 1}.db"\n'),
                            "--plugin", "fasttrack", "--log-format", "json") for i in (0, 1)]
    try:
        yield daemons
    finally:
        for d in daemons:
            d.stop()


def udp(net, ns, to, port, payload: bytes, sport=0):
    done = net.exec(ns, sys.executable, *TOOL, "udp", "--to", to, "--port", str(port), "--hex", payload.hex(),
                    "--sport", str(sport), "--wait", "0.3")
    return json.loads(done.stdout)[0]


def connects(net, ns, to, port=80, timeout=1.0) -> bool:
    done = net.exec(ns, sys.executable, *TOOL, "tcp", "--to", to, "--port", str(port), "--timeout", str(timeout))
    return json.loads(done.stdout)["connected"]


def peers_of(d) -> set:
    return {e["address"] for e in d.status()["peers"]["entries"]}


def locks_of(d) -> set:
    return {e["address"] for e in d.status()["locks"]["entries"]}


def _scope(d, addr):
    for e in d.status()["peers"]["entries"]:
        if e["address"] == addr:
            return e["scope"]
    return None


def wait_for(predicate, timeout, step=0.05):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    return None


def test_what_one_gateway_learns_the_other_enforces_within_a_second(cnet, gateways):
    from p2pwall_plugins.fasttrack import make_ping

    gw1, gw2 = gateways
    peer = cnet.outside[0]
    lan1, lan2 = cnet.lans
    assert connects(cnet, lan2, peer, 1214), "control: gateway 2 lets the peer through before it is learned"
    start = time.monotonic()
    assert udp(cnet, lan1, peer, 1214, make_ping(), sport=1214)["reply"] is not None  # the spoofed pong
    assert not connects(cnet, lan1, peer, 1214, timeout=0.5)  # gateway 1: blocked, and lan1 locked
    assert cnet.lan_ips[0] in locks_of(gw1)
    took = wait_for(lambda: peer in peers_of(gw2) and cnet.lan_ips[0] in locks_of(gw2), 5)
    assert took is not None, gw2.status().get("cluster")
    print(f"propagation: peer and lock applied on gateway 2 {time.monotonic() - start:.2f} s after the ping "
          f"(cluster lag {gw2.status()['cluster']['lag_max_seconds'] * 1000:.0f} ms)")
    assert gw2.status()["cluster"]["lag_max_seconds"] < 1.0
    pairs = cnet.exec(cnet.fws[1], "nft", "list", "set", "inet", "p2pwall0", "pairs4").stdout
    assert f"{cnet.lan_ips[0]} . {peer}" in pairs  # in gateway 2's kernel, for that client
    # one client's evidence is that client's business: lan2 still reaches the peer ...
    assert connects(cnet, lan2, peer, 1214)
    # ... until it runs P2P against it too: two clients behind two gateways corroborate
    udp(cnet, lan2, peer, 1214, make_ping(), sport=1214)
    assert wait_for(lambda: _scope(gw1, peer) == "lan" and _scope(gw2, peer) == "lan", 5) is not None
    assert peer in nft_set(cnet, cnet.fws[0], "peers4")
    assert not connects(cnet, lan2, peer, 1214)


def test_ha_failover_lets_nothing_through_the_second_gateway(cnet, gateways):
    from p2pwall_plugins.fasttrack import make_ping

    gw1, gw2 = gateways
    lan1 = cnet.lans[0]
    peers = cnet.outside[10:20]
    for p in peers:  # the P2P client meets its peers through gateway 1
        udp(cnet, lan1, p, 1214, make_ping(), sport=1214)
    assert wait_for(lambda: set(peers) <= peers_of(gw2), 5) is not None
    cnet.failover(cnet.lan_ips[0], 1)
    try:
        reached = []
        stop = threading.Event()

        def client():  # it keeps trying its peers, now through gateway 2
            while not stop.is_set():
                for p in peers:
                    if connects(cnet, lan1, p, 1214, timeout=0.3):
                        reached.append(p)
                    udp(cnet, lan1, p, 5000, b"follow-up", sport=1214)

        t = threading.Thread(target=client)
        t.start()
        time.sleep(4)
        stop.set()
        t.join(30)
        assert not reached, reached
        arrived = [json.loads(line) for line in (cnet.dir / "out.jsonl").read_text().splitlines()]
        assert not [r for r in arrived if r.get("src") == cnet.lan_ips[0] and r.get("data") == b"follow-up".hex()]
        assert gw2.status()["drops_by_detector"].get("fasttrack", 0) > 0
    finally:
        cnet.failover(cnet.lan_ips[0], 0)


def test_a_redis_outage_costs_no_filtering_and_no_entry(cnet, gateways):
    from p2pwall_plugins.fasttrack import make_ping

    gw1, gw2 = gateways
    lan1 = cnet.lans[0]
    cnet.kill_redis()
    assert wait_for(lambda: gw1.status()["cluster"]["state"] == "down", 10) is not None
    during = cnet.outside[25]
    udp(cnet, lan1, during, 1214, make_ping(), sport=1214)  # learned while Redis is away
    assert during in peers_of(gw1)
    assert not connects(cnet, lan1, cnet.outside[0], 1214, timeout=0.5)  # filtering goes on
    assert during not in peers_of(gw2)
    cnet.start_redis()  # back, and empty
    took = wait_for(lambda: during in peers_of(gw2) and gw1.status()["cluster"]["state"] == "up", 10)
    assert took is not None and took < 5, gw2.status()["cluster"]
    print(f"resync after Redis came back: {took:.2f} s")
    live = {e["address"] for e in gw1.status()["peers"]["entries"]}
    keys = {k.split(":", 2)[2].split("@")[0] for k in cnet.redis_cli("--scan", "--pattern", "p2pwall:peers:*").split()}
    assert live <= keys  # no live entry lost: every one is back in Redis
    assert live <= peers_of(gw2)
    logs = gw1.output()
    assert '"event": "cluster_down"' in logs and '"event": "cluster_up"' in logs
    # the history has the outage, and both gateways' files merge into one report
    files = [str(cnet.dir / "p2pwall" / f"gw{i}.db") for i in (1, 2)]
    assert wait_for(lambda: json.loads(cnet.exec(cnet.fws[0], sys.executable, "-m", "p2pwall", "report", "--history",
                                                 files[0], "--format", "json").stdout)["totals"]["cluster_down"] >= 1,
                    5) is not None
    merged = json.loads(cnet.exec(cnet.fws[0], sys.executable, "-m", "p2pwall", "report", "--history", files[0],
                                  "--history", files[1], "--format", "json").stdout)
    assert set(merged["period"]["gateways"]) == {"gw1", "gw2"} and merged["totals"]["cluster_down"] >= 2


def test_operator_commands_act_on_every_gateway(cnet, gateways):
    gw1, gw2 = gateways
    for ip in cnet.lan_ips:  # the earlier tests locked both hosts: free them, on one gateway each
        if ip in locks_of(gw1):
            assert gw1.ask("unlock", ip).returncode == 0
    assert wait_for(lambda: not locks_of(gw1) and not locks_of(gw2), 5) is not None
    assert connects(cnet, cnet.lans[1], cnet.outside[31], 80)
    target = cnet.outside[30]
    assert gw1.ask("block", target, "--seconds", "600").returncode == 0
    assert wait_for(lambda: target in peers_of(gw2), 5) is not None
    assert not connects(cnet, cnet.lans[1], target, 80)  # blocked through gateway 2 too ...
    assert connects(cnet, cnet.lans[1], cnet.outside[31], 80)  # ... and an operator's block locks nobody
    assert gw2.ask("unblock", target).returncode == 0
    assert wait_for(lambda: target not in peers_of(gw1), 5) is not None
    assert connects(cnet, cnet.lans[0], target, 80)
    done = gw2.ask("unblock", target)
    assert done.returncode == 1 and "is not blocked" in done.stderr


def test_entries_written_without_the_key_are_ignored_and_logged(cnet, gateways):
    gw1, gw2 = gateways
    forged = json.dumps({"op": "block", "addr": cnet.outside[35], "until": time.time() + 600,
                         "detector": "fasttrack", "reason": "forged", "gw": "intruder", "ts": time.time()})
    cnet.redis_cli("SET", f"p2pwall:peers:{cnet.outside[35]}", forged, "PX", "600000")
    cnet.redis_cli("XADD", "p2pwall:changes", "*", "m", forged)
    time.sleep(1.5)
    assert cnet.outside[35] not in peers_of(gw1) | peers_of(gw2)
    assert gw1.status()["cluster"]["rejected"] >= 1
    assert gw1.status()["cluster"]["rejected_by_gateway"].get("intruder", 0) >= 1  # who it claimed to be
    assert "missing or bad signature" in gw2.output()
    assert connects(cnet, cnet.lans[1], cnet.outside[35], 80)


def _latest(cnet, op, addr):
    """The newest change in the stream with this op and address, as written (signed)."""
    out = cnet.redis_cli("--no-raw", "XREVRANGE", "p2pwall:changes", "+", "-", "COUNT", "200")
    for line in out.splitlines():
        text = line.split(") ", 1)[-1].strip().strip('"').replace('\\"', '"')
        if text.startswith("{") and f'"op":"{op}"' in text and f'"addr":"{addr}"' in text:
            return text
    raise AssertionError(f"no {op} of {addr} in the stream")


def test_replayed_signed_changes_and_poison_are_refused_and_both_gateways_stay_up(cnet, gateways):
    """Whoever can write to Redis but holds no key replays captured signed changes: a block
    after an operator's unblock, a lock after an unlock, an old unblock against a newer
    block (in the stream and as keys set again), and a deeply nested value: each refused
    and counted, nothing changes on either gateway, and both stay up."""
    from p2pwall_plugins.fasttrack import make_ping

    gw1, gw2 = gateways
    lan1, lan2 = cnet.lans
    peer = cnet.outside[36]
    for d in (gw1, gw2):  # start from no lock (earlier tests locked the hosts)
        for ip in cnet.lan_ips:
            if ip in locks_of(d):
                d.ask("unlock", ip)
    assert wait_for(lambda: not locks_of(gw1) and not locks_of(gw2), 5) is not None
    udp(cnet, lan1, peer, 1214, make_ping(), sport=1214)
    assert not connects(cnet, lan1, peer, 1214, timeout=0.5)  # lan1 locked by its SYN to the peer
    assert wait_for(lambda: peer in peers_of(gw2) and cnet.lan_ips[0] in locks_of(gw2), 5) is not None
    block, lock = _latest(cnet, "block", peer), _latest(cnet, "lock", cnet.lan_ips[0])
    assert '"sig":' in block and '"seq":' in block
    assert gw1.ask("unblock", peer).returncode == 0 and gw1.ask("unlock", cnet.lan_ips[0]).returncode == 0
    assert wait_for(lambda: peer not in peers_of(gw2) and not locks_of(gw2), 5) is not None
    unblock = _latest(cnet, "unblock", peer)
    before = {k: gw2.status()["cluster"].get(k, 0) for k in ("replayed", "cancelled")}
    for text in (block, lock):  # replayed into the stream, and set again as keys
        cnet.redis_cli("XADD", "p2pwall:changes", "*", "m", text)
    cnet.redis_cli("SET", f"p2pwall:peers:{peer}", block, "PX", "600000")
    cnet.redis_cli("SET", f"p2pwall:locks:{cnet.lan_ips[0]}", lock, "PX", "600000")
    time.sleep(1.5)
    for d in (gw1, gw2):
        assert peer not in peers_of(d) and not locks_of(d), d.status()["cluster"]
    assert connects(cnet, lan1, cnet.outside[37], 80)  # lan1 is free
    # new evidence blocks the peer again (for lan2, through gateway 2); an old unblock replayed leaves it
    udp(cnet, lan2, peer, 1214, make_ping(), sport=1214)
    assert wait_for(lambda: peer in peers_of(gw1) and peer in peers_of(gw2), 5) is not None
    cnet.redis_cli("XADD", "p2pwall:changes", "*", "m", unblock)
    # and poison: a value nested past any parser's depth, as a key and in the stream
    cnet.redis_cli("SET", f"p2pwall:peers:{cnet.outside[38]}", "[" * 4000, "PX", "600000")
    cnet.redis_cli("XADD", "p2pwall:changes", "*", "m", "[" * 4000)
    time.sleep(1.5)
    assert peer in peers_of(gw1) and peer in peers_of(gw2)
    after = gw2.status()["cluster"]
    assert after.get("replayed", 0) >= before["replayed"] + 3, after  # block, lock, the old unblock
    assert after["state"] == "up" and gw1.status()["cluster"]["state"] == "up"
    # a gateway that starts now, knowing nothing, reads the stream back first: the lock key
    # set again with the captured value stays refused (its unlock is in the stream)
    cnet.redis_cli("SET", f"p2pwall:locks:{cnet.lan_ips[0]}", lock, "PX", "600000")
    gw2.stop()
    fresh = cnet.p2pwall(1, cnet.config(1, key_file=cnet.key_file), "--plugin", "fasttrack", "--log-format", "json",
                         name="fw2-fresh")
    try:
        assert wait_for(lambda: fresh.status()["cluster"].get("resyncs", 0) >= 1, 5) is not None
        assert fresh.status()["cluster"].get("cancelled", 0) >= 2, fresh.status()["cluster"]  # the block and the lock
        assert cnet.lan_ips[0] not in locks_of(fresh)
    finally:
        fresh.stop()


def test_a_cluster_url_without_a_key_is_refused_by_check_config_and_run(cnet):
    """Whoever can write to Redis would control every gateway: ``url`` without
    ``key_file`` (and without an explicit ``insecure = true``) is refused, in one line."""
    config = cnet.dir / "nokey.toml"
    config.write_text(cnet.config(0, key_file="").replace("insecure = true\n", "")
                      + '[history]\nfile = ""\n')
    for args in (("check-config", str(config)), ("run", "--config", str(config), "--plugin", "fasttrack")):
        done = cnet.exec(cnet.fws[0], sys.executable, "-m", "p2pwall", *args, check=False, timeout=30)
        assert done.returncode != 0, (args, done.stdout, done.stderr)
        assert "without key_file" in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
