"""``p2pwall lab``: a throw-away namespace network, the demo scenarios, cleanup.

Scenarios are not part of the detector contract: a package offers one through the
``p2pwall.lab_scenarios`` entry-point group, as a callable
``scenario(net, seconds=..., lock_seconds=..., echo=...)`` that gets a built
:class:`p2pwall_lab.testbed.Network`, runs ``p2pwall run`` through ``net.p2pwall(...)``,
prints a timeline with ``echo`` and returns True when p2pwall held.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from .testbed import Network, TestbedError

GROUP = "p2pwall.lab_scenarios"


class LabError(Exception):
    pass


def ordinary_traffic(net, lock_seconds: float, echo) -> bool:
    """Every installed detector runs while both LAN hosts do HTTP, HTTPS, DNS and UDP
    streams: nothing may be dropped."""
    import json
    import sys

    echo("== ordinary traffic with every installed detector running ==")
    web = net.outside[-1]
    proc = net.start(net.out, sys.executable, "-m", "p2pwall_lab.testbed.ordinary", "serve", "--bind", web,
                     "--dir", str(net.dir), log="lab-ordinary.out", timeout=20)
    daemon = net.p2pwall(net.base_config(lock_seconds=lock_seconds), name="lab-all")
    try:
        ok = True
        for ns, ip in zip(net.lans, net.lan_ips):
            done = net.exec(ns, sys.executable, "-m", "p2pwall_lab.testbed.ordinary", "client", "--server", web,
                            timeout=120)
            r = json.loads(done.stdout)
            streams = all(r[k]["arrived"] == r[k]["sent"] for k in ("quic_udp", "rtp_udp"))
            host_ok = r["http"] is True and r["https"] is True and r["dns"] is True and streams
            ok = ok and host_ok
            echo(f"  {ip}: 1 MiB over HTTP {_word(r['http'])}, 1 MiB over TLS {_word(r['https'])}, "
                 f"DNS {_word(r['dns'])}, QUIC-like UDP {r['quic_udp']['arrived']}/{r['quic_udp']['sent']}, "
                 f"RTP-like UDP {r['rtp_udp']['arrived']}/{r['rtp_udp']['sent']} datagrams arrived")
        snap = daemon.status()
        dropped = snap["counters"].get("dropped", 0)
        echo(f"  detectors: {', '.join(snap['detectors'])}; {snap['counters'].get('packets', 0)} packets "
             f"inspected, {dropped} dropped, {snap['peers']['count']} peers blocked")
        return ok and dropped == 0
    finally:
        daemon.stop()
        proc.terminate()


def _word(value) -> str:
    return "ok" if value is True else str(value)


def run_lab(seconds: float, lock_seconds: float, echo) -> int:
    scenarios = []
    for ep in sorted(entry_points(group=GROUP), key=lambda ep: ep.name):
        try:
            scenarios.append((ep.name, ep.load()))
        except Exception as exc:
            raise LabError(f"lab scenario {ep.name}: cannot load {ep.value}: {exc}") from None
    if not scenarios:
        raise LabError(f"no lab scenario installed (entry-point group {GROUP})")
    echo("building the lab: LAN hosts 192.0.2.10-11 behind a firewall (192.0.2.1 | 198.51.100.1),")
    echo("outside peers on 203.0.113.1-200, a web server on 203.0.113.201")
    try:
        with Network(lan_hosts=2, outside_addresses=201) as net:
            failed = 0
            for name, scenario in scenarios:
                if not scenario(net, seconds=seconds, lock_seconds=lock_seconds, echo=echo):
                    failed += 1
            if not ordinary_traffic(net, lock_seconds, echo):
                failed += 1
            echo("lab removed: namespaces, rules and processes are gone")
            return 1 if failed else 0
    except TestbedError as exc:
        raise LabError(str(exc)) from None
