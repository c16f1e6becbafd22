"""The history writer, the report's arithmetic and the webhook sender, without root."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from p2pwall.events import Event
from p2pwall.history import COLUMNS, History, HistoryError, read
from p2pwall.notify import Notifier
from p2pwall.report import ReportError, build, parse_when, render_csv

H, P = "192.0.2.10", "203.0.113.5"


def _history(tmp_path, **kw):
    return History(str(tmp_path / "p2pwall" / "history.db"), gateway="gw1",
                   protocols={"bittorrent": "BitTorrent"}, flush_seconds=0.05, **kw)


def test_rows_are_written_in_batches_and_survive_the_writer(tmp_path):
    h = _history(tmp_path)
    h.observe(Event("client_locked", 1.0, "bittorrent", address=H, until=2e9, reason="handshake", wall=1000.0))
    h.observe(Event("probe_sent", 1.0, "bittorrent", address=H, wall=1000.5))  # not a change: not kept
    h.add("rules_restored", 1001.0, reason="nft table")
    time.sleep(0.3)
    # readable while the writer holds the file (WAL), before any close
    rows = [dict(zip(COLUMNS, r)) for r in read([h.path])]
    assert [(r["kind"], r["host"], r["protocol"], r["gateway"]) for r in rows] == [
        ("client_locked", H, "BitTorrent", "gw1"), ("rules_restored", None, None, "gw1")]
    assert sqlite3.connect(h.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    h.close()
    assert h.counters["history_written"] == 2


def test_age_and_size_bounds(tmp_path):
    h = _history(tmp_path, days=1, max_events=1000)
    now = time.time()
    for i in range(1500):
        h.add("lock_restarted", now - 10 + i * 0.001, host=H)
    h.add("client_locked", now - 3 * 86400, host=H)  # older than a day
    h.close()
    h = _history(tmp_path, days=1, max_events=1000)  # pruned at start
    h.close()
    rows = [dict(zip(COLUMNS, r)) for r in read([h.path])]
    assert len(rows) == 1000 and all(r["time"] > now - 86400 for r in rows)
    assert rows[-1]["time"] == pytest.approx(now - 10 + 1499 * 0.001)  # the newest kept


def test_a_full_queue_drops_and_counts_never_waits(tmp_path, monkeypatch):
    import p2pwall.history as history

    monkeypatch.setattr(history, "MAX_PENDING", 10)
    h = _history(tmp_path)
    other = sqlite3.connect(h.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # the writer is stuck behind this lock
    start = time.monotonic()
    for _ in range(200):
        h.add("lock_restarted", time.time(), host=H)
    assert time.monotonic() - start < 0.5 and h.counters["history_dropped"] >= 150
    other.execute("ROLLBACK")
    h.close()


def test_not_a_history_is_one_clear_error(tmp_path):
    bad = tmp_path / "x.db"
    bad.write_text("not sqlite at all")
    with pytest.raises(HistoryError, match="not a p2pwall history"):
        read([str(bad)])
    with pytest.raises(HistoryError, match="no such history file"):
        read([str(tmp_path / "none.db")])


def _row(t, kind, host=H, **kw):
    base = dict(time=t, gateway=None, kind=kind, detector="bittorrent", protocol="BitTorrent", host=host,
                peer=None, scope=None, evidence=None, reason="", until=None, clients=None)
    base.update(kw)
    return tuple(base[c] for c in COLUMNS)


def test_lock_periods_restarts_crashes_and_the_period_end():
    day = 1_795_000_000.0 - 1_795_000_000.0 % 86400
    rows = [
        _row(day + 10, "client_locked", until=day + 130),
        _row(day + 100, "lock_restarted", until=day + 220),
        _row(day + 220, "lock_expired"),                       # 210 s
        _row(day + 1000, "client_locked", until=day + 1120),   # never told its end (a crash) ...
        _row(day + 5000, "client_locked", until=day + 5120),   # ... so it ended by its expiry: 120 s
        _row(day + 5010, "peer_blocked", host=None, peer=P, scope="lan", clients=f"{H},192.0.2.11"),
    ]
    doc = build(rows, None, day + 5060, now=day + 10 ** 6)  # the last lock is cut by the period's end: 60 s
    h = next(x for x in doc["hosts"] if x["host"] == H)
    assert h["locks"] == 3 and h["lock_restarts"] == 1 and h["lock_seconds"] == 210 + 120 + 60
    assert h["peers_blocked_lanwide_on_its_evidence"] == [P] and h["peers_blocked_for_it"] == []
    assert {x["host"] for x in doc["hosts"]} == {H, "192.0.2.11"}
    assert doc["detectors"] == [{"detector": "bittorrent", "protocol": "BitTorrent", "hosts": 2, "locks": 3,
                                 "client_blocks": 0, "lan_blocks": 1, "unblocks": 0}]
    assert render_csv(doc).splitlines()[1].startswith(f"{time.strftime('%Y-%m-%d', time.gmtime(day))},{H},"
                                                      "BitTorrent,bittorrent,3,1,390.0,1,")


def test_parse_when():
    assert parse_when("7d", now=1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_when("90m", now=10_000.0) == 10_000.0 - 5400
    assert parse_when("2026-11-01") == parse_when("2026-11-01T00:00:00Z")
    with pytest.raises(ReportError):
        parse_when("last tuesday")


def test_html_escapes_what_the_history_holds():
    from p2pwall.reporthtml import render_html

    rows = [_row(1_795_000_000.0, "client_locked", detector="<script>alert(1)</script>", until=1_795_000_100.0,
                 protocol="<b>x</b>")]
    page = render_html(build(rows, None, None, now=1_795_000_200.0))
    assert "<script" not in page and "&lt;script&gt;" in page and "<b>x</b>" not in page


class _Receiver(BaseHTTPRequestHandler):
    got: list = []
    fail_first = 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if _Receiver.fail_first > 0:
            _Receiver.fail_first -= 1
            self.send_error(503)
            return
        _Receiver.got.append((body, self.headers["Content-Type"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def receiver():
    _Receiver.got, _Receiver.fail_first = [], 0
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_one_post_per_chosen_event_with_retries(receiver):
    n = Notifier(receiver, ["client_locked", "peer_blocked_lan"], timeout=2, retries=2, gateway="gw1", backoff=0.05)
    _Receiver.fail_first = 2  # the first notice gets through on its third try
    n.observe(Event("client_locked", 1.0, "bittorrent", address=H, until=2e9, wall=1000.0))
    n.observe(Event("peer_blocked", 1.0, "bittorrent", peer=P, scope="client", address=H, wall=1001.0))  # not chosen
    n.observe(Event("peer_blocked", 1.0, "bittorrent", peer=P, scope="lan", clients=[H], wall=1002.0))
    n.observe(Event("lock_expired", 1.0, "bittorrent", address=H, wall=1003.0))  # not chosen
    deadline = time.time() + 10
    while len(_Receiver.got) < 2 and time.time() < deadline:
        time.sleep(0.05)
    n.close()
    assert [(b["event"], b.get("host"), b.get("peer")) for b, _ in _Receiver.got] == [
        ("client_locked", H, None), ("peer_blocked_lan", None, P)]
    assert all(ct == "application/json" for _, ct in _Receiver.got)
    assert _Receiver.got[0][0]["gateway"] == "gw1" and _Receiver.got[0][0]["time"] == 1000.0
    assert n.counters["notify_sent"] == 2 and n.counters["notify_failed"] == 0


def test_a_dead_receiver_costs_the_caller_nothing(monkeypatch):
    import p2pwall.notify as notify

    monkeypatch.setattr(notify, "MAX_PENDING", 20)
    n = Notifier("http://127.0.0.1:9/dead", ["client_locked"], timeout=0.2, retries=1, backoff=0.05)
    start = time.monotonic()
    for i in range(500):
        n.add("client_locked", time.time(), host=H)
    assert time.monotonic() - start < 0.5  # the caller only queues
    assert n.counters["notify_dropped"] >= 450
    deadline = time.time() + 10
    while n.counters["notify_failed"] < 1 and time.time() < deadline:
        time.sleep(0.05)
    assert n.counters["notify_failed"] >= 1 and n.counters["notify_sent"] == 0
    n.close(timeout=0.5)


def test_the_daemons_recorders(tmp_path, receiver):
    from p2pwall.config import ConfigError, from_dict
    from p2pwall.recorders import Recorders

    settings = from_dict({"history": {"file": str(tmp_path / "p2pwall" / "h.db")},
                          "notify": {"url": receiver, "events": ["rules_restored", "cluster_down"]},
                          "cluster": {"name": "gw7"}})
    assert Recorders(settings, {}, monitor=True).observers() == []  # a dry run keeps and tells nothing
    r = Recorders(settings, {"fasttrack": "FastTrack"})
    assert [name for name, _ in r.observers()] == ["history", "notify"]
    r.tell("rules_restored", reason="nft table p2pwall0")
    r.tell("cluster_down", reason="connection refused")
    deadline = time.time() + 10
    while len(_Receiver.got) < 2 and time.time() < deadline:
        time.sleep(0.05)
    r.close()
    assert [(b["event"], b["gateway"], b["reason"]) for b, _ in _Receiver.got] == [
        ("rules_restored", "gw7", "nft table p2pwall0"), ("cluster_down", "gw7", "connection refused")]
    assert [row[2] for row in read([settings.history_file])] == ["rules_restored", "cluster_down"]
    assert r.counters()["history_written"] == 2 and r.counters()["notify_sent"] == 2
    (tmp_path / "bad.db").write_text("no")
    with pytest.raises(ConfigError, match=r"\[history\] file: .*not a p2pwall history"):
        Recorders(from_dict({"history": {"file": str(tmp_path / "bad.db")}}), {})
