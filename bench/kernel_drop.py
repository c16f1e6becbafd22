#!/usr/bin/env python3
"""A flood towards a learned (blocked) peer: how fast p2pwall's kernel sets (its nft
table, before conntrack) drop it, against a kernel-only ipset DROP rule in the raw table
in the same run, and against p2pwall without kernel sets (every datagram through user
space) for contrast.

Target: p2pwall / kernel-only >= 0.9.    python bench/kernel_drop.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import re
import sys

from common import Network, cpu_model, flood, table

PING = bytes.fromhex("270000002980") + b"KaZaA\x00"


def dropped_per_second(net: Network, seconds: float, peer: str, count) -> float:
    return flood(net, seconds, count, "--udp", "-k", "-s", "40001", "-p", "9999", "-d", "32", peer)


def _count(net: Network, chain: str, match: str) -> int:
    out = net.exec(net.fw, "iptables", "-t", "raw", "-L", chain, "-v", "-x", "-n").stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if match in line)


def _count_nft(net: Network) -> int:
    """What p2pwall's nft table dropped on its way to peers blocked LAN-wide."""
    out = net.exec(net.fw, "nft", "list", "chain", "inet", "p2pwall0", "peer").stdout
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))


def learn(net: Network, peer: str) -> None:
    """Both LAN hosts ping the peer: corroborated, it is blocked for the whole LAN (in the
    nft table's peer set, which the flood then meets)."""
    for ns in net.lans:
        net.exec(ns, sys.executable, "-m", "p2pwall_lab.testbed.traffic", "udp", "--to", peer,
                 "--port", "1214", "--hex", PING.hex(), "--wait", "0.3")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4)
    args = ap.parse_args()
    with Network(lan_hosts=2, outside_addresses=3) as net:
        peer = net.outside[0]
        net.exec(net.fw, "ipset", "create", "bench-peers", "hash:ip", "timeout", "0")
        net.exec(net.fw, "ipset", "add", "bench-peers", peer, "timeout", "600")
        rule = ["PREROUTING", "-i", "br0", "-m", "set", "--match-set", "bench-peers", "dst", "-j", "DROP"]
        net.exec(net.fw, "iptables", "-t", "raw", "-I", *rule)
        kernel = dropped_per_second(net, args.seconds, peer, lambda: _count(net, "PREROUTING", "bench-peers"))
        net.exec(net.fw, "iptables", "-t", "raw", "-D", *rule)
        net.exec(net.fw, "ipset", "destroy", "bench-peers")

        d = net.p2pwall(net.base_config(), "--plugin", "fasttrack", name="drop-sets")
        learn(net, peer)
        p2p = dropped_per_second(net, args.seconds, peer, lambda: _count_nft(net))
        # the same rules and sets with no p2pwall process at all (killed: its rules stay)
        d.proc.kill()
        d.proc.wait(5)
        rules_only = dropped_per_second(net, args.seconds, peer, lambda: _count_nft(net))
        net.p2pwall(net.base_config(), "--plugin", "fasttrack", name="drop-cleanup").stop()

        d = net.p2pwall(net.base_config(extra="[queue]\nkernel_sets = false\n"), "--plugin", "fasttrack",
                        name="drop-user")
        learn(net, peer)
        user = flood(net, args.seconds, lambda: d.status()["counters"].get("dropped", 0),
                     "--udp", "-k", "-s", "40002", "-p", "9999", "-d", "32", peer)
        d.stop()
    rows = [("kernel-only ipset DROP rule (raw table)", f"{kernel:,.0f} pkt/s", "1.00 (baseline)"),
            ("p2pwall's rules and sets, no process", f"{rules_only:,.0f} pkt/s", f"{rules_only / kernel:.2f}"),
            ("p2pwall, learned peer in kernel set", f"{p2p:,.0f} pkt/s",
             f"{p2p / kernel:.2f} (target >= 0.9); {p2p / rules_only:.2f} of its rules alone"),
            ("p2pwall without kernel sets (user space)", f"{user:,.0f} pkt/s", f"{user / kernel:.2f}")]
    print(f"UDP flood to a blocked peer, {args.seconds:g} s each; {cpu_model()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
