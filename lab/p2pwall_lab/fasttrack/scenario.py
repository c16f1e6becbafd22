"""The FastTrack lab scenario on a test network: used by the e2e tests and ``p2pwall lab``
(registered in the ``p2pwall.lab_scenarios`` entry-point group; the detector itself
never imports it).

An emulated client on LAN host 1 goes through the article's three modes (or, with
``no_udp``, straight to HTTP downloads) against emulated peers outside, while LAN host 2
fetches a web page every second.  The result says what crossed the firewall.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field

EMULATOR = ("-m", "p2pwall_lab.fasttrack.emulator")
PORTS = "1214,2121,3131,4141"


@dataclass
class Result:
    client: dict
    peer_log: list[dict]
    client_log: list[dict]
    web_ok: int = 0
    web_failed: int = 0
    web_failures: list[str] = field(default_factory=list)
    recovered_after: float | None = None
    client_started: float = 0.0  # wall clock, to line the daemon's log up with the client's
    status: dict | None = None
    daemon_log: str = ""

    @property
    def tcp_reached_peers(self) -> list[dict]:
        """TCP connections and UDP follow-ups that arrived at an outside peer."""
        return [r for r in self.peer_log if r["kind"] in ("tcp_accept", "tcp_data", "http_get", "udp_setup")]

    @property
    def downloads_served(self) -> list[dict]:
        return [r for r in self.peer_log if r["kind"] == "download_served"]


def _lines(path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def _http_get(net, ns: str, url: str, timeout: float = 2.0) -> bool:
    done = net.exec(ns, sys.executable, "-m", "p2pwall_lab.testbed.traffic", "http", "--url", url,
                    "--timeout", str(timeout), check=False, timeout=timeout + 10)
    try:
        return json.loads(done.stdout)["ok"]
    except (ValueError, KeyError):
        return False


def run(net, *, tag: str, p2pwall: bool = True, lock: float = 4.0, seconds: float = 30.0,
        mode1: float = 3.0, mode2: float = 6.0, no_udp: bool = False, seed: int | None = None,
        recover: bool = True, echo=None, config_extra: str = "", capture=None, answer: str = "node",
        ipv6: bool = False, connect_first: int = 0, reping: bool = False) -> Result:
    """Run the scenario once on ``net`` (a p2pwall_lab.testbed.Network) and report.  With
    ``ipv6`` (a dual-stack ``net``) the client, its peers and the web server speak IPv6;
    the supernode it names stays IPv4, as FastTrack's header can only name IPv4."""
    say = echo or (lambda *_: None)
    outside, lan_ips = (net.outside6, net.lan_ips6) if ipv6 else (net.outside, net.lan_ips)
    web = outside[-1]
    site = f"http://[{web}]/" if ipv6 else f"http://{web}/"
    peers_at = outside[:-1]
    supernode = f"{net.outside[0]}:1214"
    peer_log = net.dir / f"{tag}-peers.jsonl"
    daemon = dump = peers_proc = web_proc = None
    result = Result({}, [], [])
    try:
        peers_proc = net.start(net.out, sys.executable, *EMULATOR, "peers", "--log", str(peer_log),
                               "--ports", PORTS, "--seconds", str(seconds + 120), log=f"{tag}-peers.out")
        web_proc = net.spawn(net.out, sys.executable, "-m", "http.server", "80", "--bind", web,
                             "--directory", str(net.dir), log=f"{tag}-web.out")
        deadline = time.monotonic() + 10
        while not _http_get(net, net.lans[1], site, timeout=1):
            if time.monotonic() > deadline:
                raise RuntimeError("the web server did not come up")
            time.sleep(0.2)
        if capture is not None:  # what the LAN sent, as the firewall received it
            dump = net.start(net.fw, "tcpdump", "-i", "br0", "-U", "-n", "-s", "0", "-w", str(capture),
                             "udp or tcp", log=f"{tag}-tcpdump.out", ready="listening on")
        if p2pwall:
            config = net.base_config(lock_seconds=lock, extra=config_extra)
            daemon = net.p2pwall(config, "--plugin", "fasttrack", "--log-format", "json", name=f"{tag}-p2pwall")
            say(f"p2pwall running on the firewall: lock {lock:g} s, probes at half the lock")
        else:
            say("no p2pwall: the firewall only forwards")
        client_log = net.dir / f"{tag}-client.jsonl"
        args = ["client", "--log", str(client_log), "--peer-addresses", ",".join(peers_at), "--ports", PORTS,
                "--seconds", str(seconds), "--mode1", str(mode1), "--mode2", str(mode2),
                "--gap", str(lock * 1.25), "--supernode", supernode]
        if seed is not None:
            args += ["--seed", str(seed)]
        if no_udp:
            args.append("--no-udp")
        args += ["--answer", answer, "--connect-first", str(connect_first)] + (["--reping"] if reping else [])
        say(f"emulated FastTrack client starts on {lan_ips[0]}"
            f"{' with UDP disabled (HTTP downloads only)' if no_udp else ''}; "
            f"{lan_ips[1]} browses {site} every second")
        stop = threading.Event()

        def browse():
            while not stop.is_set():
                if _http_get(net, net.lans[1], site):
                    result.web_ok += 1
                else:
                    result.web_failed += 1
                    result.web_failures.append(f"{time.monotonic():.1f}")
                stop.wait(1.0)

        browser = threading.Thread(target=browse, daemon=True)
        browser.start()
        try:
            result.client_started = time.time()
            done = net.exec(net.lans[0], sys.executable, *EMULATOR, *args, timeout=seconds + 60)
        finally:
            stop.set()
            browser.join(15)
        result.client = json.loads(done.stdout.strip().splitlines()[-1])
        say(f"client stopped after {result.client['attempts']} TCP attempts: "
            f"{result.client['connected']} connected, {result.client['downloads']} downloads complete")
        if daemon is not None:
            result.status = daemon.status()
        if recover:
            started = time.monotonic()
            limit = 2 * lock + 5
            while time.monotonic() - started < limit:
                if _http_get(net, net.lans[0], site, timeout=1):
                    result.recovered_after = round(time.monotonic() - started, 1)
                    break
                time.sleep(0.5)
        result.peer_log = _lines(peer_log)
        result.client_log = _lines(client_log)
        return result
    finally:
        if daemon is not None:
            daemon.stop()
            result.daemon_log = daemon.output()
        for proc in [p for p in (peers_proc, web_proc, dump) if p is not None]:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except Exception:
                    proc.kill()


_SAY = {"peer_blocked": "p2pwall blocks peer {peer} ({reason})",
        "client_locked": "p2pwall locks {address} ({reason})",
        "probe_sent": "p2pwall probes {address}",
        "probe_answered": "{address} answers the probe: lock restarted",
        "lock_expired": "lock on {address} expires: the host is free"}


def daemon_events(log: str, since: float) -> list[tuple[float, str]]:
    """The daemon's state changes (its ``--log-format json`` lines), seconds after
    ``since`` (wall clock)."""
    out = []
    for line in log.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if not isinstance(doc, dict) or doc.get("event") not in _SAY:
            continue
        fields = {k: v for k, v in doc.items() if isinstance(v, str)}
        try:
            out.append((doc["time"] - since, _SAY[doc["event"]].format(**fields)))
        except KeyError:
            continue
    return out


def timeline(result: Result, echo) -> None:
    """A readable account: what the client tried, what p2pwall did, what got through."""
    lines = []
    for r in result.client_log:
        if r["kind"] == "mode":
            label = {"1": "mode 1: UDP ping flood", "2": "mode 2: parallel TCP connects",
                     "3": "mode 3: slow one-at-a-time connects", "http": "HTTP downloads (UDP disabled)"}[r["mode"]]
            lines.append((r["t"], f"client enters {label}"))
    events = daemon_events(result.daemon_log, result.client_started) if result.client_started else []
    blocks = [e for e in events if e[1].startswith("p2pwall blocks")]
    if len(blocks) > 3:  # a ping flood blocks a peer per ping: show the first and a count
        events = [e for e in events if not e[1].startswith("p2pwall blocks")] + blocks[:2]
        total = result.status["peers"]["count"] if result.status else len(blocks)  # the log is rate limited
        lines.append((blocks[2][0], f"... and {total - 2} more peers, one per ping"))
    restarts = [e for e in events if "answers the probe" in e[1]]
    if len(restarts) > 3:
        events = [e for e in events if "answers the probe" not in e[1] and "probes" not in e[1]] + restarts[:1]
        lines.append((restarts[1][0], f"... {len(restarts) - 1} more probes answered, each restarting the lock"))
    lines += [e for e in events if e[0] > -5]
    for t, text in sorted(lines):
        echo(f"  {t:6.1f} s  {text}")
    pings = sum(r["kind"] == "ping" for r in result.client_log)
    pongs = sum(r["kind"] == "pong" for r in result.client_log)
    setups = sum(r["kind"] == "setup" for r in result.client_log)
    probes = sum(r["kind"] == "ping_answered" for r in result.client_log)
    by_mode: dict[str, list] = {}
    for r in result.client_log:
        if r["kind"] in ("tcp", "http"):
            by_mode.setdefault(r.get("mode", "?"), []).append(r["result"])
    if pings:
        echo(f"  client sent {pings} UDP pings, got {pongs} pongs (spoofed by p2pwall if it runs), "
             f"sent {setups} setup requests")
    for mode, outcomes in sorted(by_mode.items()):
        ok = sum(o in ("connected", "download complete") for o in outcomes)
        echo(f"  mode {mode}: {len(outcomes)} TCP attempts, {ok} got through")
    if probes:
        echo(f"  client answered {probes} probes from the firewall (each restarted its lock)")
    arrived = result.tcp_reached_peers
    echo(f"  outside peers saw {len(arrived)} TCP connections/follow-ups and "
         f"{len(result.downloads_served)} downloads")
    echo(f"  other LAN host: {result.web_ok} web pages fetched, {result.web_failed} failed")
    if result.recovered_after is not None:
        echo(f"  offending host browses again {result.recovered_after:.1f} s after its client stopped")
    if result.status:
        s = result.status
        echo(f"  p2pwall as the client stopped: {s['peers']['count']} peers blocked, {s['counters'].get('dropped', 0)} packets dropped, "
             f"{s['events'].get('probe_sent', 0)} probes sent, "
             f"{s['events'].get('probe_answered', 0)} answered")


def lab(net, *, seconds: float = 60.0, lock_seconds: float = 8.0, echo=print) -> bool:
    """``p2pwall lab``: the three-mode client, then the UDP-less one, against p2pwall."""
    echo("== FastTrack: an emulated Kazaa client with ~200 peers in its cache ==")
    main_run = max(20.0, seconds * 0.7)
    r = run(net, tag="lab", lock=lock_seconds, seconds=main_run, mode1=4, mode2=min(10, main_run / 4),
            echo=echo)
    timeline(r, echo)
    echo("== FastTrack with UDP disabled: straight to HTTP downloads (the safety net) ==")
    r2 = run(net, tag="lab-noudp", lock=lock_seconds, seconds=max(8.0, seconds * 0.2), no_udp=True,
             recover=False, echo=echo)
    timeline(r2, echo)
    echo("== FastTrack as giFT-FastTrack starts: sessions to two cached nodes before any ping, "
         "then pings, re-pinging the peers it knows every cycle ==")
    r3 = run(net, tag="lab-sessions", lock=lock_seconds, seconds=max(12.0, seconds * 0.25), mode1=3,
             mode2=max(6.0, seconds * 0.15), connect_first=2, reping=True, echo=echo)
    timeline(r3, echo)
    session_bytes = sum(x["size"] for x in r3.peer_log if x["kind"] == "session_data")
    pings3 = sum(x["kind"] == "ping" for x in r3.client_log)
    pongs3 = sum(x["kind"] == "pong" for x in r3.client_log)
    echo(f"  sessions up before the pings: {r3.client.get('sessions_up', 0)}, bytes they carried across: "
         f"{session_bytes}; pings {pings3}, pongs {pongs3} (every ping answered, known peers too)")
    supernode = net.outside[0]
    blocked = {e["address"] for e in (r2.status or {}).get("peers", {}).get("entries", [])}
    held = (r.client.get("connected") == 0 and not r.tcp_reached_peers and r.web_failed == 0
            and r.recovered_after is not None and r2.client.get("downloads") == 0
            and not r2.downloads_served and supernode in blocked
            and session_bytes == 0 and r3.client.get("connected") == 0 and pings3 > 0 and pongs3 == pings3)
    echo("")
    echo("result: " + ("nothing got through; ordinary traffic flowed throughout; the supernode "
                       f"{supernode} named in X-Kazaa-SupernodeIP was blocked" if held else
                       "SOMETHING GOT THROUGH: see above"))
    return held
