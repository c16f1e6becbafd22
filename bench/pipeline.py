#!/usr/bin/env python3
"""Verdict pipeline under a UDP flood, with every built-in detector loaded, against a bare
NetfilterQueue callback that only accepts, on the same queue and rules, in the same run.

Every datagram is queued ([queue] udp_packets = 0) so the pipeline itself is measured;
a second p2pwall figure uses the default (first 8 datagrams of a flow queued).  The bare
loop runs twice: as is, and on a stateful gateway (conntrack on, which p2pwall needs and
a NAT gateway has anyway), to tell conntrack's share from p2pwall's own.
Target: p2pwall / bare >= 0.85.    python bench/pipeline.py [--seconds 5]
"""

from __future__ import annotations

import argparse

from common import Network, counter, cpu_model, start_bare_queue, stop, table
from common import flood as common_flood


_PORTS = iter(range(40000, 41000))


def flood(net: Network, seconds: float, target: str) -> float:
    """hping3 floods one UDP flow from the LAN host; returns packets/s that arrived outside.
    Each flood is a flow of its own (its own source port): a connection conntrack already
    knows from an earlier measurement would not be a new one to the rules."""
    return common_flood(net, seconds, lambda: counter(net, net.out),
                        "--udp", "-k", "-s", str(next(_PORTS)), "-p", "9999", "-d", "32", target)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    args = ap.parse_args()
    with Network(lan_hosts=1, outside_addresses=2) as net:
        target = net.outside[0]
        net.exec(net.out, "iptables", "-A", "INPUT", "-p", "udp", "--dport", "9999", "-j", "DROP")
        plain = flood(net, args.seconds, target)
        rule = ["-I", "FORWARD", "-i", "br0", "-p", "udp", "-j", "NFQUEUE", "--queue-num", "0"]
        bare_proc = start_bare_queue(net, [rule])
        bare = flood(net, args.seconds, target)
        stop(bare_proc)
        net.exec(net.fw, "iptables", "-D", *rule[1:])
        # the same loop on a stateful gateway: conntrack on, as p2pwall (and NAT) need it
        stateful_rule = rule[:6] + ["-m", "conntrack", "--ctstate", "NEW,ESTABLISHED"] + rule[6:]
        bare_proc = start_bare_queue(net, [stateful_rule])
        bare_ct = flood(net, args.seconds, target)
        stop(bare_proc)
        net.exec(net.fw, "iptables", "-D", *stateful_rule[1:])
        results = {}
        for label, extra in (("every datagram", "[queue]\nudp_packets = 0\nper_host_rate = 0\n"), ("default", "")):
            d = net.p2pwall(net.base_config(extra=extra), name=f"bench-{label.split()[0]}")
            results[label] = flood(net, args.seconds, target)
            d.stop()
    rows = [
        ("kernel forwarding, nothing queued", f"{plain:,.0f} pkt/s", f"{plain / bare:.2f}"),
        ("bare NetfilterQueue accept loop", f"{bare:,.0f} pkt/s", "1.00 (baseline)"),
        ("bare accept loop, conntrack on", f"{bare_ct:,.0f} pkt/s", f"{bare_ct / bare:.2f}"),
        ("p2pwall, all detectors, every datagram", f"{results['every datagram']:,.0f} pkt/s",
         f"{results['every datagram'] / bare:.2f} (target >= 0.85); "
         f"{results['every datagram'] / bare_ct:.2f} of the conntrack loop"),
        ("p2pwall, all detectors, default config", f"{results['default']:,.0f} pkt/s",
         f"{results['default'] / bare:.2f}"),
    ]
    print(f"UDP flood, 32-byte datagrams, one flow, {args.seconds:g} s each; {cpu_model()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
