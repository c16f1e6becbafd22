"""``p2pwall lab``: a throw-away namespace network, the detectors' demo scenarios, cleanup."""

from __future__ import annotations

from .plugins import load
from .testbed import Network, TestbedError


class LabError(Exception):
    pass


def run_lab(seconds: float, lock_seconds: float, echo) -> int:
    detectors = load()
    scenarios = [(name, fn()) for name, fn in detectors.impls("p2pwall_lab_scenario")]
    scenarios = [(name, s) for name, s in scenarios if s is not None]
    if not scenarios:
        raise LabError("no installed detector offers a lab scenario")
    echo("building the lab: LAN hosts 192.0.2.10-11 behind a firewall (192.0.2.1 | 198.51.100.1),")
    echo("outside peers on 203.0.113.1-200, a web server on 203.0.113.201")
    try:
        with Network(lan_hosts=2, outside_addresses=201) as net:
            failed = 0
            for name, scenario in scenarios:
                if not scenario(net, seconds=seconds, lock_seconds=lock_seconds, echo=echo):
                    failed += 1
            echo("lab removed: namespaces, rules and processes are gone")
            return 1 if failed else 0
    except TestbedError as exc:
        raise LabError(str(exc)) from None
