#!/usr/bin/env python3
"""Verdict pipeline under a UDP flood, with every built-in detector loaded, against a bare
NetfilterQueue callback that only accepts, on the same queue and rules, in the same run.

Every datagram is queued ([queue] udp_packets = 0) so the pipeline itself is measured;
a second p2pwall figure uses the default (first 8 datagrams of a flow queued), a third
adds the history and a webhook whose receiver is dead (127.0.0.1:9, refused).  The bare
loop runs twice: as is, and on a stateful gateway (conntrack on, which p2pwall needs and
a NAT gateway has anyway), to tell conntrack's share from p2pwall's own.
Each figure is measured in interleaved rounds, and a ratio is the median of the rounds
ratios (with their range): on these shared machines a slow spell of a few seconds would
otherwise land on one measurement only.
Target: p2pwall / bare >= 0.85.    python bench/pipeline.py [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics

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
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[float]] = {k: [] for k in ("plain", "bare", "bare_ct", "every", "default", "notify")}
    with Network(lan_hosts=1, outside_addresses=2) as net:
        target = net.outside[0]
        net.exec(net.out, "iptables", "-A", "INPUT", "-p", "udp", "--dport", "9999", "-j", "DROP")
        rule = ["-I", "FORWARD", "-i", "br0", "-p", "udp", "-j", "NFQUEUE", "--queue-num", "0"]
        # the same loop on a stateful gateway: conntrack on, as p2pwall (and NAT) need it
        stateful_rule = rule[:6] + ["-m", "conntrack", "--ctstate", "NEW,ESTABLISHED"] + rule[6:]
        for n in range(args.rounds):  # interleaved rounds: a slow spell of the machine hits all alike
            runs["plain"].append(flood(net, args.seconds, target))
            for key, r in (("bare", rule), ("bare_ct", stateful_rule)):
                bare_proc = start_bare_queue(net, [r])
                runs[key].append(flood(net, args.seconds, target))
                stop(bare_proc)
                net.exec(net.fw, "iptables", "-D", *r[1:])
            every = "[queue]\nudp_packets = 0\nper_host_rate = 0\n"
            dead = (f'[history]\nfile = "{net.dir}/p2pwall/history-{n}.db"\n[notify]\nurl = "http://127.0.0.1:9/dead"\n'
                    'events = ["client_locked", "lock_expired", "peer_blocked", "peer_blocked_lan", "peer_unblocked", '
                    '"rules_restored", "cluster_down", "cluster_up"]\n')
            for key, extra in (("every", every), ("default", ""), ("notify", every + dead)):
                d = net.p2pwall(net.base_config(extra=extra), name=f"bench-{key}-{n}")
                runs[key].append(flood(net, args.seconds, target))
                d.stop()

    def ratio(key: str, base: str = "bare") -> tuple[float, float, float]:
        values = sorted(a / b for a, b in zip(runs[key], runs[base]))
        return statistics.median(values), values[0], values[-1]

    def cell(key: str, base: str = "bare", note: str = "") -> str:
        mid, lo, hi = ratio(key, base)
        return f"{mid:.2f} ({lo:.2f}-{hi:.2f}){note}"

    med = {k: statistics.median(v) for k, v in runs.items()}
    rows = [
        ("kernel forwarding, nothing queued", f"{med['plain']:,.0f} pkt/s", cell("plain")),
        ("bare NetfilterQueue accept loop", f"{med['bare']:,.0f} pkt/s", "1.00 (baseline)"),
        ("bare accept loop, conntrack on", f"{med['bare_ct']:,.0f} pkt/s", cell("bare_ct")),
        ("p2pwall, all detectors, every datagram", f"{med['every']:,.0f} pkt/s",
         cell("every", note=" (target >= 0.85); ") + cell("every", "bare_ct", " of the conntrack loop")),
        ("p2pwall, all detectors, default config", f"{med['default']:,.0f} pkt/s", cell("default")),
        ("p2pwall, every datagram, history on, [notify] to a dead receiver", f"{med['notify']:,.0f} pkt/s",
         cell("notify", note="; ") + cell("notify", "every", " of the same without")),
    ]
    print(f"UDP flood, 32-byte datagrams, one flow, {args.seconds:g} s each, {args.rounds} interleaved rounds "
          f"(ratios: median of the rounds, range); {cpu_model()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
