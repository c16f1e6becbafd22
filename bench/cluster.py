#!/usr/bin/env python3
"""Several gateways: how fast what one learns reaches the other, and what the cluster link
costs the verdict pipeline.

1. Propagation: two gateways share a redis-server on a management link; the LAN host
   behind gateway 1 pings N distinct FastTrack peers, one every 20 ms; gateway 2 reports
   the delay from gateway 1 learning each peer to gateway 2 applying it (median, p99).
2. Pipeline: the UDP flood of pipeline.py through one gateway, with and without
   [cluster] (a redis-server inside the gateway's namespace), in the same run.
   Goal: at least 0.95 of the run without the cluster.

    python bench/cluster.py [--peers 200] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from common import Network, counter, cpu_model, stop, table
from common import flood as common_flood


def propagation(peers: int) -> dict:
    from p2pwall_lab.testbed.cluster import ClusterNetwork
    from p2pwall_plugins.fasttrack import make_ping

    with ClusterNetwork(outside_addresses=min(250, peers)) as net:
        net.start_redis()
        key = net.dir / "cluster.key"  # signed, as a production cluster runs (sequence numbers too)
        key.write_text("the bench's shared secret\n")
        key.chmod(0o600)
        gws = [net.p2pwall(i, net.config(i, key_file=str(key)), "--plugin", "fasttrack") for i in (0, 1)]
        ping = make_ping().hex()
        code = ("import socket,time,sys\n"
                "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('',1214))\n"
                f"for a in sys.argv[1:]:\n  s.sendto(bytes.fromhex('{ping}'),(a,1214));time.sleep(0.02)\n")
        net.exec(net.lans[0], sys.executable, "-c", code, *net.outside[:peers], timeout=120)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = gws[1].status()
            if status["peers"]["count"] >= min(peers, len(net.outside)):
                break
            time.sleep(0.2)
        cluster = status["cluster"]
        for g in gws:
            g.stop()
        return cluster


def pipeline(seconds: float) -> tuple[float, float]:
    with Network(lan_hosts=1, outside_addresses=2) as net:
        target = net.outside[0]
        net.exec(net.out, "iptables", "-A", "INPUT", "-p", "udp", "--dport", "9999", "-j", "DROP")
        redis = net.spawn(net.fw, "redis-server", "--bind", "127.0.0.1", "--port", "6390", "--save", "",
                          "--appendonly", "no", log="redis.log")
        time.sleep(0.5)
        results = {}
        key = net.dir / "cluster.key"
        key.write_text("the bench's shared secret\n")
        key.chmod(0o600)
        cluster = f'[cluster]\nurl = "redis://127.0.0.1:6390/0"\nkey_file = "{key}"\n'
        for label, extra in (("alone", ""), ("cluster", cluster)):
            d = net.p2pwall(net.base_config(extra="[queue]\nudp_packets = 0\nper_host_rate = 0\n" + extra), name=f"bench-{label}")
            results[label] = common_flood(net, seconds, lambda: counter(net, net.out), "--udp", "-k", "-s", "40000",
                                          "-p", "9999", "-d", "32", target)
            d.stop()
        stop(redis)
    return results["alone"], results["cluster"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=5)
    args = ap.parse_args()
    c = propagation(args.peers)
    alone, clustered = pipeline(args.seconds)
    rows = [
        (f"propagation gateway 1 -> 2, median of {c.get('lag_samples', 0)} peers",
         f"{c.get('lag_p50_seconds', 0) * 1000:.1f} ms", "(goal: within 1 s)"),
        ("propagation gateway 1 -> 2, 99th percentile", f"{c.get('lag_p99_seconds', 0) * 1000:.1f} ms", ""),
        ("pipeline, one gateway alone, every datagram queued", f"{alone:,.0f} pkt/s", "1.00 (baseline)"),
        ("pipeline, same with [cluster] on", f"{clustered:,.0f} pkt/s",
         f"{clustered / alone:.2f} (goal >= 0.95)"),
    ]
    print(f"two gateways, one redis-server; {cpu_model()}")
    print(table(rows))
    print(json.dumps({"cluster": c}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
