"""Traffic helpers for e2e tests: each runs a real socket inside a namespace."""

from __future__ import annotations

import json
import sys
import time

TOOL = ("-m", "p2pwall.testbed.traffic")


def udp(net, ns, to, port, payload: bytes, sport=0, wait=1.0, count=1):
    done = net.exec(ns, sys.executable, *TOOL, "udp", "--to", to, "--port", str(port),
                    "--hex", payload.hex(), "--sport", str(sport), "--wait", str(wait), "--count", str(count))
    return json.loads(done.stdout)


def tcp(net, ns, to, port, data="", timeout=2.0):
    done = net.exec(ns, sys.executable, *TOOL, "tcp", "--to", to, "--port", str(port),
                    "--data", data, "--timeout", str(timeout))
    return json.loads(done.stdout)


def start_server(net, ns, log_name, udp_ports="5000", tcp_ports="80", seconds=900):
    log = net.dir / log_name
    net.start(ns, sys.executable, *TOOL, "serve", "--log", str(log), "--udp", udp_ports,
              "--tcp", tcp_ports, "--seconds", str(seconds), log=f"{log_name}.out")
    return log


def arrivals(log, **match):
    from .conftest import json_lines

    return [r for r in json_lines(log) if all(r.get(k) == v for k, v in match.items())]


def wait_until(predicate, timeout=10.0, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()
