"""The history, the report and the webhooks against the real kernel and the real daemon:
a LAN host caught by two detectors and locked three times, across a kill -9; the report
in every format (the HTML one opened in headless Chromium); one POST per chosen event."""

from __future__ import annotations

import csv
import io
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pwall_plugins.fasttrack import make_ping

from .helpers import start_server, tcp, udp, wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
LOCK = 1.5
RECEIVER = "127.0.0.1:8099"
CHOSEN = ["client_locked", "lock_expired", "peer_blocked"]


@pytest.fixture(scope="module")
def server(net):
    return start_server(net, net.out, "history.jsonl", udp_ports="1214,5000", tcp_ports="80")


def _report(net, history, *args) -> subprocess.CompletedProcess:
    return net.python(net.fw, "-m", "p2pwall", "report", "--history", str(history), *args)


def _no_locks(d):
    return wait_until(lambda: d.status()["locks"]["count"] == 0, timeout=10)


@pytest.fixture(scope="module")
def caught(net, server, testdet_env):
    """The run: FastTrack blocks a peer for host 0 and locks it, the test detector locks it
    twice more, with a kill -9 between the second and the third lock."""
    own = net.dir / "p2pwall"
    history = own / "history.db"
    notices = net.dir / "notices.jsonl"
    net.start(net.fw, sys.executable, str(ROOT / "examples" / "webhook-receiver.py"), "--listen", RECEIVER,
              "--log", str(notices), log="receiver.out", ready="listening")
    extra = (f'[history]\nfile = "{history}"\n'
             f'[notify]\nurl = "http://{RECEIVER}/p2pwall"\nevents = {json.dumps(CHOSEN)}\ntimeout = 2\n')
    cfg = net.base_config(lock_seconds=LOCK, extra=extra)
    host, peer = net.lan_ips[0], net.outside[1]
    started = time.time()
    d = net.p2pwall(cfg, "--plugin", "fasttrack", "--plugin", "testdet", env=testdet_env, name="hist1")
    udp(net, net.lans[0], peer, 1214, make_ping(), wait=0.5)  # FastTrack: the peer, for this host
    assert tcp(net, net.lans[0], peer, 80, timeout=1)["connected"] is False  # ... and the lock
    assert _no_locks(d)
    udp(net, net.lans[0], net.outside[2], 5000, b"LOCK-1", wait=0.3)  # the test detector's lock
    assert _no_locks(d)
    time.sleep(2.5)  # more than one batch interval: what the crash may lose is the last batch only
    d.stop(signal.SIGKILL)
    d = net.p2pwall(cfg, "--plugin", "fasttrack", "--plugin", "testdet", env=testdet_env, name="hist2")
    try:
        udp(net, net.lans[0], net.outside[2], 5000, b"LOCK-2", wait=0.3)
        assert _no_locks(d)
        time.sleep(1.0)
    finally:
        assert d.stop() == 0
    return {"history": history, "notices": notices, "host": host, "peer": peer, "started": started}


def test_report_shows_exactly_the_run_per_host_and_day(net, caught):
    doc = json.loads(_report(net, caught["history"], "--format", "json").stdout)
    assert [h["host"] for h in doc["hosts"]] == [caught["host"]]
    h = doc["hosts"][0]
    assert h["detectors"] == ["fasttrack", "testdet"] and h["protocols"] == ["FastTrack", "test"]
    assert h["locks"] == 3, h  # the one before the kill -9 too: the history survived the crash
    assert h["peers_blocked_for_it"] == [caught["peer"]]
    assert all(LOCK * 0.9 <= p["end"] - p["start"] <= LOCK + 3 for p in h["locked"]), h["locked"]
    assert doc["totals"]["by_kind"]["client_locked"] == 3 and doc["totals"]["by_kind"]["lock_expired"] == 3
    assert doc["totals"]["by_kind"]["started"] == 2 and doc["totals"]["by_kind"]["stopped"] == 1  # one was killed
    assert {d["detector"]: d["locks"] for d in doc["detectors"]} == {"fasttrack": 1, "testdet": 2}
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert [(d["day"], d["hosts"], d["locks"], d["peers_blocked"]) for d in doc["days"]] == [(today, 1, 3, 1)]
    rows = list(csv.DictReader(io.StringIO(_report(net, caught["history"], "--format", "csv").stdout)))
    assert [(r["day"], r["host"], r["locks"], r["peers_blocked"], r["detectors"]) for r in rows] == [
        (today, caught["host"], "3", "1", "fasttrack testdet")]
    text = _report(net, caught["history"]).stdout
    assert f"{caught['host']}  FastTrack, test (fasttrack, testdet)  3 locks" in text
    assert "fasttrack (FastTrack): 1 hosts, 1 locks, 1 peers blocked for a client" in text
    # --host and --since narrow it; a host that was never caught has nothing
    other = json.loads(_report(net, caught["history"], "--format", "json", "--host", net.lan_ips[1]).stdout)
    assert other["hosts"] == [] and other["totals"]["locks"] == 0
    later = json.loads(_report(net, caught["history"], "--format", "json", "--since", "1s").stdout)
    assert later["totals"]["locks"] == 0


def test_report_errors_are_one_line(net, caught, tmp_path):
    bad = tmp_path / "not-a-history.db"
    bad.write_text("hello")
    for args, text in [(("--history", str(bad)), "not a p2pwall history"),
                       (("--history", str(tmp_path / "none.db")), "no such history file"),
                       (("--history", str(caught["history"]), "--since", "yesterday"), "not a time"),
                       (("--history", str(caught["history"]), "--host", "nope"), "not an IP address")]:
        done = net.python(net.fw, "-m", "p2pwall", "report", *args, check=False)
        assert done.returncode == 2 and text in done.stderr and len(done.stderr.strip().splitlines()) == 1, done


def test_one_post_per_chosen_event(caught):
    notices = [json.loads(line) for line in caught["notices"].read_text().splitlines()]
    kinds = sorted(n["event"] for n in notices)
    assert kinds == sorted(["peer_blocked"] + ["client_locked"] * 3 + ["lock_expired"] * 3), kinds
    locked = [n for n in notices if n["event"] == "client_locked"]
    assert {n["host"] for n in locked} == {caught["host"]}
    assert {n["detector"] for n in locked} == {"fasttrack", "testdet"}
    assert all(caught["started"] - 1 < n["time"] < time.time() and n["until"] > n["time"] for n in locked)


@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium is not installed")
def test_the_html_report_in_headless_chromium(net, caught, tmp_path):
    page = tmp_path / "report.html"
    _report(net, caught["history"], "--format", "html", "--output", str(page))
    html = page.read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained
    shot = tmp_path / "report.png"
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}"]
    done = subprocess.run(base + ["--window-size=1000,1600", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.stat().st_size > 10000, done.stderr[-500:]
    dom = subprocess.run(base + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert f'id="chart-host-{caught["host"]}"' in dom  # the caught host's timeline
    assert dom.count("<rect") >= 3 + 1  # its three locks, the protocol bars
    assert 'id="chart-protocols"' in dom and 'id="chart-hours"' in dom
    totals = dom[dom.index('id="totals"'):]
    assert "<b>1</b> LAN hosts caught; <b>3</b> locks" in totals and "<b>1</b> peers blocked" in totals
    blank = tmp_path / "blank.html"  # the same window with nothing drawn: the charts make the difference
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    subprocess.run(base + ["--window-size=1000,1600", f"--screenshot={tmp_path / 'blank.png'}", blank.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 5 * (tmp_path / "blank.png").stat().st_size


def test_a_reload_moves_the_history_and_the_webhook(net, server, testdet_env):
    own = net.dir / "p2pwall"
    first, second = own / "reload-1.db", own / "reload-2.db"
    cfg = net.base_config(lock_seconds=LOCK, extra=f'[history]\nfile = "{first}"\n')
    d = net.p2pwall(cfg, "--plugin", "testdet", env=testdet_env, name="hist-reload")
    try:
        (net.dir / "hist-reload.toml").write_text(cfg.replace(str(first), str(second)))
        d.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "event=reloaded" in d.output(), timeout=5)
        udp(net, net.lans[1], net.outside[4], 5000, b"LOCK-r", wait=0.3)
        assert _no_locks(d)
    finally:
        assert d.stop() == 0
    kinds = lambda path: json.loads(_report(net, path, "--format", "json").stdout)["totals"]["by_kind"]  # noqa: E731
    assert kinds(first) == {"started": 1}
    assert kinds(second) == {"client_locked": 1, "lock_expired": 1, "stopped": 1}
