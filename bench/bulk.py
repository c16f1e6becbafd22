#!/usr/bin/env python3
"""Ordinary TCP bulk traffic through the firewall: iperf3 throughput with p2pwall running
(every built-in detector, default config) against plain forwarding in the same run, and,
for contrast, against a kernel string match applied to every TCP packet.

Target: p2pwall / plain >= 0.95.    python bench/bulk.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from common import Network, cpu_model, stop, table


def iperf(net: Network, server: str, seconds: float) -> float:
    done = net.exec(net.lans[0], "iperf3", "-c", server, "-t", str(seconds), "-J", timeout=seconds + 30)
    return json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with Network(lan_hosts=1, outside_addresses=1) as net:
        server = net.outside[0]
        srv = net.spawn(net.out, "iperf3", "-s", "-B", server, log="iperf3.log")
        time.sleep(0.5)
        plain, naive, p2p = [], [], []
        for _ in range(args.rounds):  # interleaved so drift hits all three alike
            plain.append(iperf(net, server, args.seconds))
            rule = ["FORWARD", "-p", "tcp", "-m", "string", "--algo", "bm", "--string", "X-Kazaa-", "-j", "DROP"]
            net.exec(net.fw, "iptables", "-I", *rule)
            naive.append(iperf(net, server, args.seconds))
            net.exec(net.fw, "iptables", "-D", *rule)
            d = net.p2pwall(net.base_config(), name="bulk")
            p2p.append(iperf(net, server, args.seconds))
            d.stop()
        stop(srv)
    med = {k: statistics.median(v) for k, v in (("plain", plain), ("naive", naive), ("p2pwall", p2p))}
    # each round's ratio compares runs seconds apart, so drift of the shared machine cancels
    ratio_naive = statistics.median(n / p for n, p in zip(naive, plain))
    ratio_p2p = statistics.median(x / p for x, p in zip(p2p, plain))
    rows = [("plain forwarding", f"{med['plain'] / 1e9:.2f} Gbit/s", "1.00 (baseline)"),
            ("string match on every TCP packet", f"{med['naive'] / 1e9:.2f} Gbit/s", f"{ratio_naive:.2f}"),
            ("p2pwall, all detectors", f"{med['p2pwall'] / 1e9:.2f} Gbit/s", f"{ratio_p2p:.2f} (target >= 0.95)")]
    print(f"iperf3 TCP, {args.seconds:g} s x {args.rounds} interleaved rounds: medians of figures and of "
          f"per-round ratios; {cpu_model()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
