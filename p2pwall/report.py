"""``p2pwall report``: what the history says happened, per LAN host, detector, day and hour.

One pass over the rows (oldest first) builds everything: per host its first and last
event, the protocols and detectors that caught it, its locks (a lock runs from
``client_locked`` to ``lock_expired``; restarts and answered probes extend it; one that
never saw its end, a crash or the end of the period, ends at its last known expiry or
the period's end, whichever is first), and the peers blocked for it (for it alone, or
for the whole LAN on evidence it was part of); per detector, per day (UTC) and per hour
of the day (UTC).  Rendered as text, JSON or CSV here, as HTML in ``reporthtml``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections import Counter, defaultdict

LOCK_KINDS = ("client_locked", "lock_restarted", "probe_answered", "lock_expired")


class ReportError(Exception):
    """Bad report arguments: one line, exit status 2."""


def parse_when(text: str, now: float | None = None) -> float:
    """``7d``, ``12h``, ``30m``, ``90s`` ago, or an ISO date/time (UTC unless it says)."""
    import datetime as dt

    now = time.time() if now is None else now
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if m:
        return now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"not a time: {text!r} (use 7d, 12h, 30m, or 2026-11-01 / 2026-11-01T08:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


_DAYS: dict[int, str] = {}


def day_of(epoch: float) -> str:
    """The UTC day of ``epoch``, as 2026-12-01 (cached: a report asks a million times)."""
    n = int(epoch // 86400)
    day = _DAYS.get(n)
    if day is None:
        day = _DAYS[n] = time.strftime("%Y-%m-%d", time.gmtime(n * 86400))
    return day


class _Host:
    __slots__ = ("first", "last", "protocols", "detectors", "locks", "restarts", "periods", "open",
                 "peers", "lan_peers", "events")

    def __init__(self):
        self.first = self.last = None
        self.protocols, self.detectors = Counter(), Counter()
        self.locks = self.restarts = self.events = 0
        self.periods: list[list] = []  # [start, end, detector]
        self.open = None  # [start, until, detector] of the lock running now
        self.peers, self.lan_peers = set(), set()


def build(rows, since: float | None, until: float | None, host: str | None = None,
          files=(), now: float | None = None) -> dict:
    """The report's document (what ``--format json`` prints), from ``history.read``'s
    rows (tuples in ``history.COLUMNS`` order, oldest first)."""
    now = time.time() if now is None else now
    end = min(until, now) if until is not None else now
    hosts: dict[str, _Host] = defaultdict(_Host)
    detectors: dict[str, Counter] = defaultdict(Counter)
    det_hosts: dict[str, set] = defaultdict(set)
    protocol_of: dict[str, str] = {}
    days: dict[str, Counter] = defaultdict(Counter)
    day_hosts: dict[str, set] = defaultdict(set)
    per_day_host: dict[tuple, Counter] = defaultdict(Counter)
    hours = Counter()
    protocol_days: dict[str, Counter] = defaultdict(Counter)
    kinds = Counter()
    gateways = set()
    first = last = None

    def close(h: _Host, at: float, day_host=None):
        start, stop, det = h.open
        stop = max(start, min(stop, at))
        h.periods.append([start, stop, det])
        per_day_host[(day_of(start), day_host)]["lock_seconds"] += stop - start
        h.open = None

    for t, gw, kind, det, proto, addr, peer, scope, _evidence, _reason, until_, clients in rows:
        kinds[kind] += 1
        first = t if first is None else first
        last = t
        if gw:
            gateways.add(gw)
        if det and proto:
            protocol_of[det] = proto
        concerned = [addr] if addr else []
        if kind == "peer_blocked" and clients and not addr:
            concerned = clients.split(",")
        if host is not None and host not in concerned:
            if kind not in ("rules_restored", "cluster_down", "cluster_up", "started", "stopped"):
                continue
        day = day_of(t)
        if concerned:
            days[day]["events"] += 1
            hours[int(t % 86400 // 3600)] += 1
        for a in concerned:
            h = hosts[a]
            if h.first is None:
                h.first = t
            h.last = t
            h.events += 1
            day_hosts[day].add(a)
            dh = per_day_host[(day, a)]
            dh["events"] += 1
            if det and det != "operator":
                h.detectors[det] += 1
                if proto:
                    h.protocols[proto] += 1
                det_hosts[det].add(a)
                dh["d:" + det] = 1  # (this day's detectors and protocols, as keys)
                if proto:
                    dh["p:" + proto] = 1
            if kind == "peer_blocked":
                (h.peers if scope != "lan" else h.lan_peers).add(peer)
                dh["peers_blocked"] += 1
            elif kind == "client_locked":
                if h.open is not None:  # its end was never told (a crash): it ended by its expiry at the latest
                    close(h, t, a)
                h.open = [t, until_ or t, det]
                h.locks += 1
                dh["locks"] += 1
            elif kind in ("lock_restarted", "probe_answered"):
                h.restarts += 1
                dh["lock_restarts"] += 1
                if h.open is None:  # the lock began before the period
                    h.open = [t, until_ or t, det]
                elif until_:
                    h.open[1] = max(h.open[1], until_)
            elif kind == "lock_expired" and h.open is not None:
                close(h, t, a)
        if proto and kind in ("peer_blocked", "client_locked"):
            protocol_days[proto][day] += 1
        if det:
            if kind == "peer_blocked":
                detectors[det]["lan_blocks" if scope == "lan" else "client_blocks"] += 1
                days[day]["peers_blocked"] += 1
            elif kind == "client_locked":
                detectors[det]["locks"] += 1
                days[day]["locks"] += 1
            elif kind == "peer_unblocked":
                detectors[det]["unblocks"] += 1
    for a, h in hosts.items():
        if h.open is not None:
            close(h, end, a)

    host_docs = []
    for a, h in sorted(hosts.items(), key=lambda kv: (-kv[1].locks, -kv[1].events, kv[0])):
        host_docs.append({
            "host": a, "first_seen": iso(h.first), "last_seen": iso(h.last),
            "protocols": sorted(h.protocols), "detectors": sorted(h.detectors),
            "locks": h.locks, "lock_restarts": h.restarts,
            "lock_seconds": round(sum(p[1] - p[0] for p in h.periods), 1),
            "locked": [{"from": iso(p[0]), "to": iso(p[1]), "detector": p[2], "start": p[0], "end": p[1]}
                       for p in h.periods],
            "peers_blocked_for_it": sorted(h.peers), "peers_blocked_lanwide_on_its_evidence": sorted(h.lan_peers),
            "events": h.events,
        })
    busiest = [{"hour": hr, "events": n} for hr, n in sorted(hours.items(), key=lambda kv: (-kv[1], kv[0]))[:3]]
    return {
        "period": {"since": iso(since if since is not None else first), "until": iso(end),
                   "first_event": iso(first), "last_event": iso(last), "host_filter": host,
                   "files": [str(f) for f in files], "gateways": sorted(gateways)},
        "totals": {"events": sum(kinds.values()), "hosts": len(hosts),
                   "locks": sum(h.locks for h in hosts.values()),
                   "lock_seconds": round(sum(d["lock_seconds"] for d in host_docs), 1),
                   "peers_blocked": kinds["peer_blocked"], "rules_restored": kinds["rules_restored"],
                   "cluster_down": kinds["cluster_down"], "by_kind": dict(sorted(kinds.items()))},
        "hosts": host_docs,
        "detectors": [{"detector": d, "protocol": protocol_of.get(d), "hosts": len(det_hosts[d]),
                       "locks": c["locks"], "client_blocks": c["client_blocks"], "lan_blocks": c["lan_blocks"],
                       "unblocks": c["unblocks"]} for d, c in sorted(detectors.items())],
        "days": [{"day": d, "hosts": len(day_hosts[d]), "locks": c["locks"], "peers_blocked": c["peers_blocked"],
                  "events": c["events"]} for d, c in sorted(days.items())],
        "hours": [{"hour": hr, "events": hours.get(hr, 0)} for hr in range(24)],
        "busiest_hours": busiest,
        "protocol_days": {p: dict(sorted(c.items())) for p, c in sorted(protocol_days.items())},
        "host_days": [{"day": d, "host": a, "protocols": sorted(k[2:] for k in c if k.startswith("p:")),
                       "detectors": sorted(k[2:] for k in c if k.startswith("d:")), "locks": c["locks"],
                       "lock_restarts": c["lock_restarts"], "lock_seconds": round(c["lock_seconds"], 1),
                       "peers_blocked": c["peers_blocked"], "events": c["events"]}
                      for (d, a), c in sorted(per_day_host.items()) if a is not None and c["events"]],
    }


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def render_text(doc: dict) -> str:
    p, t = doc["period"], doc["totals"]
    out = [f"p2pwall report: {p['since'] or '-'} to {p['until']}"
           + (f", host {p['host_filter']}" if p["host_filter"] else "")
           + (f", gateways {', '.join(p['gateways'])}" if p["gateways"] else ""),
           f"{t['hosts']} LAN hosts caught, {t['locks']} locks ({duration(t['lock_seconds'])} locked in all), "
           f"{t['peers_blocked']} peers blocked, {t['rules_restored']} rules restores, "
           f"{t['cluster_down']} cluster losses; {t['events']} events", "", "Hosts"]
    if not doc["hosts"]:
        out.append("  (none)")
    for h in doc["hosts"]:
        out.append(f"  {h['host']}  {', '.join(h['protocols']) or '-'} ({', '.join(h['detectors']) or '-'})  "
                   f"{h['locks']} locks, {duration(h['lock_seconds'])} locked, {h['lock_restarts']} restarts, "
                   f"{len(h['peers_blocked_for_it'])} peers blocked for it"
                   + (f", {len(h['peers_blocked_lanwide_on_its_evidence'])} LAN-wide on its evidence"
                      if h["peers_blocked_lanwide_on_its_evidence"] else ""))
        out.append(f"      first {h['first_seen']}, last {h['last_seen']}")
    out += ["", "Detectors"] + [
        f"  {d['detector']} ({d['protocol'] or '?'}): {d['hosts']} hosts, {d['locks']} locks, "
        f"{d['client_blocks']} peers blocked for a client, {d['lan_blocks']} for the LAN, {d['unblocks']} unblocked"
        for d in doc["detectors"]] or ["  (none)"]
    out += ["", "Days (UTC)"] + [
        f"  {d['day']}  {d['hosts']} hosts, {d['locks']} locks, {d['peers_blocked']} peers blocked"
        for d in doc["days"]] or ["  (none)"]
    if doc["busiest_hours"]:
        out += ["", "Busiest hours (UTC): " + ", ".join(f"{b['hour']:02d}:00 ({b['events']} events)"
                                                        for b in doc["busiest_hours"])]
    return "\n".join(out) + "\n"


CSV_FIELDS = ("day", "host", "protocols", "detectors", "locks", "lock_restarts", "lock_seconds",
              "peers_blocked", "events")


def render_csv(doc: dict) -> str:
    """One row per LAN host and day (UTC): which machines ran it, when, how often."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for r in doc["host_days"]:
        w.writerow([" ".join(r[f]) if isinstance(r[f], list) else r[f] for f in CSV_FIELDS])
    return buf.getvalue()


def render_json(doc: dict) -> str:
    return json.dumps(doc, indent=2) + "\n"
