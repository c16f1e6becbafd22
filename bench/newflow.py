#!/usr/bin/env python3
"""A new-flow flood: every datagram to a new address/port pair (a port scan or a DHT
crawler does this), so every one is the first of its flow and queued.  p2pwall against
a bare NetfilterQueue accept loop on the same stateful gateway (conntrack on), same run,
same sender (a non-blocking UDP socket in a tight loop, 36-byte payloads, 250 addresses
x 64k ports).

Rows: the bare loop (baseline); p2pwall with the per-host bound off (the pipeline
itself; target >= 0.85); p2pwall with its default bound (what a flooding host gets:
its excess is dropped before the queue, by design).

    python bench/newflow.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import sys
import time

from common import Network, cpu_model, start_bare_queue, stop, table



def arrived(net: Network) -> int:
    out = net.exec(net.out, "iptables", "-L", "INPUT", "-v", "-x", "-n").stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if " DROP " in line)


def run(net: Network, seconds: float) -> tuple[float, int]:
    before = arrived(net)
    proc = net.spawn(net.lans[0], sys.executable, "-m", "p2pwall_lab.testbed.traffic", "newflows", "--seconds",
                     str(seconds), log="newflow-sender.out")
    proc.wait(seconds + 30)
    time.sleep(0.3)
    sent = int((net.dir / "newflow-sender.out").read_text().split()[-1])
    return (arrived(net) - before) / seconds, sent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4)
    args = ap.parse_args()
    with Network(lan_hosts=1, outside_addresses=250) as net:
        net.exec(net.out, "iptables", "-A", "INPUT", "-p", "udp", "-j", "DROP")
        rule = ["-I", "FORWARD", "-i", "br0", "-p", "udp", "-j", "NFQUEUE", "--queue-num", "0"]
        bare_proc = start_bare_queue(net, [rule])
        bare, bare_sent = run(net, args.seconds)
        stop(bare_proc)
        net.exec(net.fw, "iptables", "-D", *rule[1:])
        rows = [("bare NetfilterQueue accept loop, conntrack on", f"{bare:,.0f} pkt/s", "1.00 (baseline)")]
        for label, extra, note in (("p2pwall, every detector, per-host bound off", "[queue]\nper_host_rate = 0\n",
                                    " (target >= 0.85)"),
                                   ("p2pwall, default config (per-host bound 2000/s)", "", " (the flooder's excess dropped)")):
            d = net.p2pwall(net.base_config(extra=extra), name=f"newflow-{len(rows)}")
            rate, _ = run(net, args.seconds)
            d.stop()
            rows.append((label, f"{rate:,.0f} pkt/s", f"{rate / bare:.2f}{note}"))
    print(f"new-flow UDP flood from one LAN host, {args.seconds:g} s each, sender offered about "
          f"{bare_sent / args.seconds:,.0f} pkt/s; {cpu_model()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
