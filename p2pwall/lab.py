"""``p2pwall lab``: a throw-away namespace network, the detectors' demo scenarios, cleanup."""

from __future__ import annotations

from .plugins import load
from .testbed import Network, TestbedError


class LabError(Exception):
    pass


def ordinary_traffic(net, lock_seconds: float, echo) -> bool:
    """Every installed detector runs while both LAN hosts do HTTP, HTTPS, DNS and UDP
    streams: nothing may be dropped."""
    import json
    import sys
    import time

    echo("== ordinary traffic with every installed detector running ==")
    web = net.outside[-1]
    proc = net.spawn(net.out, sys.executable, "-m", "p2pwall.testbed.ordinary", "serve", "--bind", web,
                     "--dir", str(net.dir), log="lab-ordinary.out")
    deadline = time.monotonic() + 20
    while '"ready"' not in (net.dir / "lab-ordinary.out").read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError("the ordinary-traffic server did not start")
        time.sleep(0.1)
    daemon = net.p2pwall(net.base_config(lock_seconds=lock_seconds), name="lab-all")
    try:
        ok = True
        for ns, ip in zip(net.lans, net.lan_ips):
            done = net.exec(ns, sys.executable, "-m", "p2pwall.testbed.ordinary", "client", "--server", web,
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
            if not ordinary_traffic(net, lock_seconds, echo):
                failed += 1
            echo("lab removed: namespaces, rules and processes are gone")
            return 1 if failed else 0
    except TestbedError as exc:
        raise LabError(str(exc)) from None
