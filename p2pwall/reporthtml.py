"""The HTML form of ``p2pwall report``: one self-contained page (no CDN, no script),
its charts drawn as inline SVG, readable on screen and on paper, each figure saying what
it shows.  Everything in it comes from the report's document (``report.build``); every
value from the history is escaped."""

from __future__ import annotations

from html import escape

from .report import duration, iso

W, LEFT, RIGHT = 900, 150, 20  # chart width, label column, right margin
PALETTE = ("#c0392b", "#2471a3", "#1e8449", "#b9770e", "#7d3c98", "#148f77", "#5d6d7e")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1b1b1b;margin:2em auto;max-width:960px;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%;margin:.5em 0} th,td{text-align:left;padding:.25em .5em;border-bottom:1px solid #e3e3e3;vertical-align:top}
th{background:#f3f3f3} td.n{text-align:right;font-variant-numeric:tabular-nums}
p.what{color:#444;font-size:.92em;margin:.3em 0 .8em} .muted{color:#666}
figure{margin:1em 0;break-inside:avoid} figcaption{font-size:.9em;color:#444}
svg text{font:11px system-ui,sans-serif;fill:#333} .tot{font-size:1.05em}
@media print{body{margin:0;max-width:none} h2{break-after:avoid} table,figure{break-inside:avoid}}
"""


def _x(t, t0, t1):
    span = max(t1 - t0, 1.0)
    return LEFT + (W - LEFT - RIGHT) * (t - t0) / span


def _axis(t0, t1, y):
    """Ticks at 5 evenly spaced times, labelled with their UTC date (and hour if short)."""
    parts = [f'<line x1="{LEFT}" y1="{y}" x2="{W - RIGHT}" y2="{y}" stroke="#999"/>']
    short = t1 - t0 < 3 * 86400
    for i in range(5):
        t = t0 + (t1 - t0) * i / 4
        x = _x(t, t0, t1)
        label = iso(t)[5:16].replace("T", " ") if short else iso(t)[:10]
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" stroke="#999"/>'
                     f'<text x="{x:.1f}" y="{y + 16}" text-anchor="{anchor}">{escape(label)}</text>')
    return "".join(parts)


def host_timeline(doc, t0, t1) -> str:
    """One row per host: its locks as bars over the period."""
    hosts = doc["hosts"]
    row = 22
    height = 30 + row * len(hosts)
    colours = {d["detector"]: PALETTE[i % len(PALETTE)] for i, d in enumerate(doc["detectors"])}
    parts = [f'<svg id="timeline-hosts" role="img" width="{W}" height="{height}" viewBox="0 0 {W} {height}">'
             f'<title>Locks per host over time</title>']
    for i, h in enumerate(hosts):
        y = 6 + i * row
        parts.append(f'<g id="chart-host-{escape(h["host"])}"><text x="{LEFT - 8}" y="{y + 13}" '
                     f'text-anchor="end">{escape(h["host"])}</text>'
                     f'<rect x="{LEFT}" y="{y + 3}" width="{W - LEFT - RIGHT}" height="{row - 8}" fill="#f4f4f4"/>')
        for p in h["locked"]:
            x0, x1 = _x(p["start"], t0, t1), _x(p["end"], t0, t1)
            parts.append(f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(x1 - x0, 2):.1f}" height="{row - 8}" '
                         f'fill="{colours.get(p["detector"], "#c0392b")}"><title>{escape(h["host"])} locked by '
                         f'{escape(str(p["detector"]))} {escape(p["from"])} to {escape(p["to"])}</title></rect>')
        parts.append("</g>")
    parts.append(_axis(t0, t1, height - 22) + "</svg>")
    return "".join(parts)


def bars(series: list[tuple[str, dict]], labels: list[str], svg_id: str, title: str) -> str:
    """Grouped bars: for each label (a day, an hour) one bar per series (a protocol)."""
    height, base = 200, 170
    top = max([v for _, values in series for v in values.values()] + [1])
    slot = (W - LEFT - RIGHT) / max(len(labels), 1)
    width = max(min(slot / max(len(series), 1) - 1, 40), 1)
    parts = [f'<svg id="{svg_id}" role="img" width="{W}" height="{height + 20 * len(series)}" '
             f'viewBox="0 0 {W} {height + 20 * len(series)}">'
             f'<title>{escape(title)}</title>',
             f'<line x1="{LEFT}" y1="{base}" x2="{W - RIGHT}" y2="{base}" stroke="#999"/>',
             f'<text x="{LEFT - 8}" y="{base - 140 + 4}" text-anchor="end">{top}</text>',
             f'<text x="{LEFT - 8}" y="{base + 4}" text-anchor="end">0</text>']
    step = max(1, len(labels) // 12)
    for i, label in enumerate(labels):
        x = LEFT + i * slot
        for j, (name, values) in enumerate(series):
            v = values.get(label, 0)
            if v:
                h = 140 * v / top
                parts.append(f'<rect x="{x + j * (width + 1):.1f}" y="{base - h:.1f}" width="{width:.1f}" '
                             f'height="{h:.1f}" fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(name)} '
                             f'{escape(label)}: {v}</title></rect>')
        if i % step == 0:
            parts.append(f'<text x="{x + slot / 2:.1f}" y="{base + 14}" text-anchor="middle">{escape(label)}</text>')
    for j, (name, _) in enumerate(series):
        y = height + 4 + 20 * j
        parts.append(f'<rect x="{LEFT}" y="{y}" width="12" height="12" fill="{PALETTE[j % len(PALETTE)]}"/>'
                     f'<text x="{LEFT + 18}" y="{y + 10}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(head, rows) -> str:
    cells = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f'<td class="n">{v}</td>' if isinstance(v, (int, float)) else f"<td>{escape(str(v))}</td>"
                                   for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body or '<tr><td>(none)</td></tr>'}</tbody></table>"


def render_html(doc: dict) -> str:
    p, t = doc["period"], doc["totals"]
    import calendar
    import time

    def epoch(text, default):
        return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")) if text else default

    t1 = epoch(p["until"], time.time())
    t0 = min(epoch(p["since"], t1 - 86400), t1 - 60)
    days = [d["day"] for d in doc["days"]]
    hours = {f"{h['hour']:02d}": h["events"] for h in doc["hours"]}
    out = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>p2pwall report {escape(p['since'] or '')}"
           f" to {escape(p['until'])}</title><style>{CSS}</style></head><body>",
           f"<h1>p2pwall report</h1><p class=muted>{escape(p['since'] or '-')} to {escape(p['until'])} (UTC)"
           + (f", host {escape(p['host_filter'])}" if p["host_filter"] else "")
           + (f", gateways {escape(', '.join(p['gateways']))}" if p["gateways"] else "") + "</p>",
           f'<p class=tot id=totals><b>{t["hosts"]}</b> LAN hosts caught; <b>{t["locks"]}</b> locks, '
           f'<b>{escape(duration(t["lock_seconds"]))}</b> locked in all; <b>{t["peers_blocked"]}</b> peers blocked; '
           f'{t["rules_restored"]} rules restores; {t["cluster_down"]} cluster losses.</p>',
           "<p class=what>A <b>lock</b> cuts a LAN host off from new outside connections for a while after it "
           "reached for a P2P network; a <b>blocked peer</b> is an outside address nothing may reach, for one "
           "host or for the whole LAN. Times are UTC.</p>",
           "<h2>Hosts</h2><p class=what>Each LAN host p2pwall caught: which protocols and detectors caught it, "
           "how often it was locked and for how long in all, and how many outside peers were blocked for it.</p>",
           _table(["host", "protocols", "detectors", "locks", "locked", "restarts", "peers blocked", "first seen",
                   "last seen"],
                  [[h["host"], ", ".join(h["protocols"]), ", ".join(h["detectors"]), h["locks"],
                    duration(h["lock_seconds"]), h["lock_restarts"], len(h["peers_blocked_for_it"]),
                    h["first_seen"], h["last_seen"]] for h in doc["hosts"]]),
           "<figure>" + host_timeline(doc, t0, t1) + "<figcaption>Locks per host over the period: each bar is "
           "one lock, from the moment the host was locked to the moment it was free again, coloured by the "
           "detector that locked it.</figcaption></figure>",
           "<h2>Protocols</h2><figure>"
           + bars(sorted(doc["protocol_days"].items()), days, "chart-protocols", "Detections per protocol and day")
           + "<figcaption>Detections per protocol and day: peers blocked and hosts locked, each counted once, "
           "by the protocol of the detector that acted.</figcaption></figure>",
           _table(["detector", "protocol", "hosts", "locks", "peers blocked for a client", "for the LAN", "unblocked"],
                  [[d["detector"], d["protocol"] or "", d["hosts"], d["locks"], d["client_blocks"], d["lan_blocks"],
                    d["unblocks"]] for d in doc["detectors"]]),
           "<h2>Days</h2><p class=what>Per day (UTC): how many LAN hosts were caught, locks begun and peers "
           "blocked.</p>",
           _table(["day", "hosts", "locks", "peers blocked"],
                  [[d["day"], d["hosts"], d["locks"], d["peers_blocked"]] for d in doc["days"]]),
           "<h2>Hours</h2><figure>" + bars([("events", hours)], list(hours), "chart-hours", "Events per hour of day")
           + "<figcaption>Events concerning LAN hosts per hour of the day (UTC), summed over the period: when "
           "P2P is run. Busiest: "
           + escape(", ".join(f"{b['hour']:02d}:00 ({b['events']})" for b in doc["busiest_hours"]) or "-")
           + ".</figcaption></figure>",
           f"<p class=muted>From {escape(', '.join(p['files']))}; made by p2pwall report.</p></body></html>"]
    return "\n".join(out)
