"""Traffic helpers for e2e tests: each runs a real socket inside a namespace."""

from __future__ import annotations

import json
import sys
import threading
import time

TOOL = ("-m", "p2pwall_lab.testbed.traffic")


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


class Browsing:
    """The other LAN host fetches ``url`` every second while a test runs (``start`` and
    ``stop``, or ``with``); ``results`` says which fetches worked."""

    def __init__(self, net, url: str):
        self.net, self.url = net, url
        self.results: list[bool] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            done = self.net.exec(self.net.lans[1], sys.executable, "-m", "p2pwall_lab.testbed.traffic", "http",
                                 "--url", self.url, "--timeout", "3", check=False)
            self.results.append(json.loads(done.stdout or '{"ok": false}')["ok"])
            self._stop.wait(1)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[bool]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        return self.results

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
