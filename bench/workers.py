#!/usr/bin/env python3
"""Scaling from 1 to 2 worker processes ([queue] workers) under a UDP flood spread over
many destinations (the kernel balances queues by address pair), every datagram queued.

    python bench/workers.py [--seconds 5]
"""

from __future__ import annotations

import argparse

from common import Network, cpu_model, flood, table


def forwarded(net: Network) -> int:
    out = net.exec(net.fw, "iptables", "-t", "mangle", "-L", "POSTROUTING", "-v", "-x", "-n").stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if "udp dpt:9999" in line)


def spread_flood(net: Network, seconds: float) -> float:
    return flood(net, seconds, lambda: forwarded(net), "--udp", "-p", "9999", "-d", "32",
                 "--rand-dest", "203.0.113.x", "-I", "eth0")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    args = ap.parse_args()
    results = {}
    with Network(lan_hosts=1, outside_addresses=250) as net:
        net.exec(net.fw, "iptables", "-t", "mangle", "-A", "POSTROUTING", "-o", "wan0", "-p", "udp",
                 "--dport", "9999")
        for n in (1, 2):
            d = net.p2pwall(net.base_config(extra=f"[queue]\nudp_packets = 0\nper_host_rate = 0\nworkers = {n}\n"), name=f"w{n}")
            results[n] = spread_flood(net, args.seconds)
            d.stop()
    rows = [("1 worker", f"{results[1]:,.0f} pkt/s", "1.00 (baseline)"),
            ("2 workers", f"{results[2]:,.0f} pkt/s", f"{results[2] / results[1]:.2f}")]
    print(f"UDP flood to 256 destinations, every datagram queued, {args.seconds:g} s each; {cpu_model()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
