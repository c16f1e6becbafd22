"""Learned state across SIGHUP and restarts (the probe material included), the state
file's checks, event lines that cannot be forged, JSON logs and the metrics text."""

import json
import logging

import pytest

from p2pwall import events, plugins, state
from p2pwall.config import from_dict
from p2pwall.engine import Engine
from p2pwall.metrics import render
from p2pwall.packet import FROM_LAN, TO_FIREWALL, ip_bytes, parse
from p2pwall.testing import Clock, tcp, udp

LAN, PEER = "192.168.1.5", "203.0.113.9"
CONFIG = {"network": {"lan_networks": ["192.168.0.0/16"]}, "lock": {"seconds": 10}}


def engine(clock, config=CONFIG):
    settings = from_dict(config)
    return Engine(settings, plugins.load(["fasttrack"], settings), clock=clock), settings


def feed(e, raw, direction=FROM_LAN):
    p = parse(raw)
    p.direction = direction
    verdict = e.handle(p)
    e.drain_events()  # events are told after the verdict
    return verdict


def locked_fasttrack_client(clock):
    from p2pwall_plugins.fasttrack import make_ping

    e, settings = engine(clock)
    assert feed(e, udp(LAN, PEER, 1214, 3531, make_ping())).drop
    assert feed(e, tcp(LAN, PEER, 40000, 3531)).drop
    assert e.locks.live(ip_bytes(LAN), clock.now)
    return e, settings


def probes(e):
    sent = [a for _, a in e.outbox if type(a).__name__ == "Probe"]
    e.flush()  # "sends" them (no sender here): the engine now expects their answers
    return sent


def test_probe_material_survives_a_reload():
    from p2pwall_plugins.fasttrack import make_ping

    clock = Clock()
    e, settings = locked_fasttrack_client(clock)
    e.reconfigure(settings, plugins.load(["fasttrack"], settings))  # SIGHUP: fresh detector objects
    clock.advance(5.1)
    e.tick()
    sent = probes(e)
    assert len(sent) == 1 and sent[0].payload == make_ping() and sent[0].dport == 1214 and sent[0].sport == 3531


def test_probe_material_survives_a_restart(tmp_path):
    from p2pwall_plugins.fasttrack import make_pong

    clock = Clock()
    e, settings = locked_fasttrack_client(clock)
    path = tmp_path / "state.json"
    state.save(str(path), e.ledger.records(clock.now), wall=1000.0)
    fresh, _ = engine(Clock(5000.0))
    assert fresh.ledger.restore(state.load(str(path), wall=1001.0)) == 2
    assert fresh.peers.note(ip_bytes(PEER)) is not None
    fresh.clock.advance(4.5)  # half of the 9 s left
    fresh.tick()
    assert len(probes(fresh)) == 1
    assert feed(fresh, udp(LAN, "192.168.0.1", 1214, 3531, make_pong()), TO_FIREWALL).detector == "fasttrack"
    assert fresh.events.counters["probe_answered"] == 1


def test_restored_entries_are_checked_like_live_ones(tmp_path):
    doc = {"version": 2, "saved": 0, "peers": [
        {"address": "192.168.1.7", "until": 2000, "detector": "x", "reason": ""},  # a LAN host as peer
        {"address": "0.0.0.0", "until": 2000, "detector": "x", "reason": ""},
        {"address": "203.0.113.7", "until": 2000, "detector": "x", "reason": "ok"}],
        "locks": [{"address": "203.0.113.8", "until": 2000, "detector": "x", "reason": ""}]}  # not in the LAN
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    e, _ = engine(Clock())
    assert e.ledger.restore(state.load(str(path), wall=1000.0)) == 1
    assert len(e.peers) == 1 and len(e.locks) == 0


@pytest.mark.parametrize("until", ["1e400", '"soon"', "true", "1e30"])
def test_a_state_file_with_absurd_times_is_refused_not_a_crash(tmp_path, until):
    path = tmp_path / "s.json"
    path.write_text('{"version": 2, "peers": [{"address": "203.0.113.7", "until": %s, "detector": "x"}]}' % until)
    with pytest.raises(state.StateError):
        state.load(str(path), wall=1000.0)


def test_event_lines_cannot_forge_fields_or_lines(caplog):
    with caplog.at_level(logging.INFO, logger="p2pwall"):
        events.emit(logging.getLogger("p2pwall.test"), logging.INFO, "peer_blocked",
                    reason="x\nevent=client_locked address=1.2.3.4", peer="203.0.113.9")
    text = caplog.records[-1].getMessage()
    assert "\n" not in text and text.count("event=") == 2 and 'reason="x\\nevent=' in text
    assert caplog.records[-1].p2pwall_fields["peer"] == "203.0.113.9"


def test_json_logs_come_from_the_record_fields():
    from p2pwall.cli import _JsonFormatter

    record = logging.LogRecord("p2pwall.x", logging.INFO, __file__, 1, "%s", ("event=y a=1",), None)
    record.p2pwall_fields = {"event": "y", "a": 1, "reason": 'he said "hi" a=2'}
    doc = json.loads(_JsonFormatter().format(record))
    assert doc["event"] == "y" and doc["a"] == 1 and doc["reason"] == 'he said "hi" a=2'
    plain = logging.LogRecord("p2pwall.x", logging.INFO, __file__, 1, "hello", (), None)
    assert json.loads(_JsonFormatter().format(plain))["message"] == "hello"


def test_metrics_render_every_family():
    clock = Clock()
    e, _ = locked_fasttrack_client(clock)
    text = render(e.snapshot(), 0)
    for family in ("p2pwall_packets_total", "p2pwall_detections_total", "p2pwall_table_entries",
                   "p2pwall_events_total", "p2pwall_kernel_set_failures_total", "p2pwall_uptime_seconds"):
        assert f"# TYPE {family}" in text
    assert 'p2pwall_table_entries{table="locks"} 1' in text
    assert 'p2pwall_detections_total{detector="fasttrack"} 2' in text


def test_event_log_keeps_counts_and_a_bounded_recent_list():
    log = events.EventLog(keep=3)
    for i in range(10):
        log.record(events.Event("peer_blocked", float(i), "d", peer=f"203.0.113.{i}"))
    assert log.counters["peer_blocked"] == 10 and len(log.recent) == 3


def test_evidence_and_scope_survive_a_restart(tmp_path):
    from p2pwall_plugins.fasttrack import make_ping

    clock = Clock()
    e, _ = engine(clock)
    feed(e, udp(LAN, PEER, 1214, 1214, make_ping()))  # one client: client-scoped
    feed(e, udp(LAN, "203.0.113.10", 1214, 1214, make_ping()))
    feed(e, udp("192.168.1.6", "203.0.113.10", 1214, 1214, make_ping()))  # two: LAN-wide
    path = tmp_path / "state.json"
    state.save(str(path), e.ledger.records(clock.now), wall=1000.0)
    fresh, _ = engine(Clock(50.0))
    assert fresh.ledger.restore(state.load(str(path), wall=1001.0)) == 2
    one, two = fresh.peers.get(ip_bytes(PEER), 50.0), fresh.peers.get(ip_bytes("203.0.113.10"), 50.0)
    assert not one.lanwide and one.clients == (ip_bytes(LAN),) and one.kind == "own"
    assert two.lanwide and set(two.clients) == {ip_bytes(LAN), ip_bytes("192.168.1.6")}


@pytest.mark.parametrize("make", ["symlink", "fifo", "directory"])
def test_a_state_path_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path, make):
    import os

    path = tmp_path / "state.json"
    if make == "symlink":
        (tmp_path / "elsewhere.json").write_text('{"version": 3, "peers": [], "locks": []}')
        os.symlink(tmp_path / "elsewhere.json", path)
    elif make == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with pytest.raises(state.StateError):
        state.load(str(path))


def test_privilege_drop_refuses_shared_directories():
    from p2pwall.privileges import PrivilegeError, own_directory

    assert own_directory("/run/p2pwall/p2pwall.sock", "[status] socket") == "/run/p2pwall"
    for bad in ("/run/p2pwall.sock", "state.json", "/p2pwall-state.json", "/var/lib/state.json"):
        with pytest.raises(PrivilegeError):
            own_directory(bad, "[state] file")


def test_log_lines_tell_until_as_wall_clock_time_and_mark_a_dry_run(caplog):
    import time as _time

    from p2pwall_plugins.fasttrack import make_ping

    settings = from_dict(CONFIG)
    live = Engine(settings, plugins.load(["fasttrack"], settings), monitor=True)  # the live, monotonic clock
    with caplog.at_level(logging.INFO, logger="p2pwall"):
        feed(live, udp(LAN, PEER, 1214, 1214, make_ping()))
    line = next(r for r in caplog.records if "event=peer_blocked" in r.getMessage())
    until = line.p2pwall_fields["until"]
    assert abs(until - (_time.time() + 86400)) < 60  # epoch seconds, a day ahead (JSON)
    assert _time.strftime("until=%Y-%m-%dT", _time.gmtime(until)) in line.getMessage()  # ISO 8601 (text)
    assert "monitor=true" in line.getMessage() and line.p2pwall_fields["monitor"] is True
