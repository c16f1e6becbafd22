"""Shared pieces of the benchmark scripts: the namespace network and counters."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from p2pwall_lab.testbed import Network  # noqa: E402

BARE_QUEUE = """
import signal, sys
from netfilterqueue import NetfilterQueue
q = NetfilterQueue()
q.bind(0, lambda p: p.accept(), max_len=4096)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
print("ready", flush=True)
try:
    q.run()
finally:
    q.unbind()
"""


def rss() -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def counter(net: Network, ns: str, chain: str = "INPUT", match: str = "udp dpt:9999") -> int:
    """Packets counted by the first rule of ``chain`` in ``ns`` that mentions ``match``."""
    out = net.exec(ns, "iptables", "-L", chain, "-v", "-x", "-n").stdout
    for line in out.splitlines():
        if match in line:
            return int(line.split()[0])
    raise RuntimeError(f"no counter for {match!r} in {ns}")


def start_bare_queue(net: Network, rules: list[list[str]]) -> subprocess.Popen:
    for rule in rules:
        net.exec(net.fw, "iptables", *rule)
    return net.start(net.fw, sys.executable, "-c", BARE_QUEUE, log="bare-queue.log", ready="ready")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


def table(rows: list[tuple[str, str, str]]) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"{'measurement':<{width}}  {'figure':>16}  ratio"]
    lines += [f"{name:<{width}}  {figure:>16}  {ratio}" for name, figure, ratio in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        text = open("/proc/cpuinfo").read()
        return re.search(r"model name\s*:\s*(.*)", text).group(1)
    except (OSError, AttributeError):
        return "unknown"


def flood(net: Network, seconds: float, count, *hping_args: str, log: str = "hping3.log") -> float:
    """Run an hping3 flood from the LAN host for ``seconds``; ``count()`` reads the
    packet counter that judges it. Returns its increase per second."""
    before = count()
    proc = net.spawn(net.lans[0], "hping3", "--flood", "-q", *hping_args, log=log)
    time.sleep(seconds)
    stop(proc)
    time.sleep(0.3)
    return (count() - before) / seconds
