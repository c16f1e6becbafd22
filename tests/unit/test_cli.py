"""The command line as users meet it: output, exit codes, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PCAPS = Path(__file__).parents[1] / "captures"


def p2pwall(*args, input=None):
    return subprocess.run([sys.executable, "-m", "p2pwall", *args], capture_output=True, text=True,
                          input=input, timeout=60)


def one_line_error(done, code=2):
    assert done.returncode == code, done
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("p2pwall")


def test_detectors_json_lists_fasttrack_and_the_example():
    done = p2pwall("detectors", "--format", "json")
    assert done.returncode == 0
    found = {d["name"]: d for d in json.loads(done.stdout)}
    assert found["fasttrack"]["origin"] == "built in"
    assert "udp" in found["fasttrack"]["wants"]
    if "directconnect" not in found:
        pytest.skip("the example detector package is not installed")
    assert found["directconnect"]["origin"].startswith("p2pwall-directconnect")


def test_rules_follow_the_detectors():
    done = p2pwall("rules", "--plugin", "fasttrack")
    assert done.returncode == 0
    out = done.stdout
    assert "-I FORWARD 1 -j P2PWALL-F0" in out and "-I INPUT 1 -j P2PWALL-I0" in out
    assert "-p tcp --syn -j NFQUEUE --queue-num 0 --queue-bypass" in out
    assert '--string "X-Kazaa-"' in out and "--connbytes 0:6" in out
    nft = p2pwall("rules", "--format", "nft", "--queue", "3").stdout
    assert "queue num 3 bypass" in nft


@pytest.mark.parametrize("args, text", [
    (("run", "--plugin", "nope"), "unknown detector 'nope'"),
    (("rules", "--plugin", "nope"), "unknown detector"),
    (("replay", "/nonexistent.pcap"), "cannot open"),
    (("replay", __file__), "not a pcap"),
    (("check-config", "/nonexistent.toml"), "no such file"),
    (("bogus",), "No such command"),
    (("run", "--queue", "x"), "--queue"),
    (("replay", "--lan", "banana", __file__), "--lan"),
])
def test_bad_input_is_one_line_and_exit_2(args, text):
    done = p2pwall(*args)
    one_line_error(done)
    assert text in done.stderr


def test_bad_config_kinds(tmp_path):
    for body, text in [("x =", "invalid TOML"), ("[lock]\nsecs = 1", "unknown key [lock] secs"),
                       ("[lock]\nseconds = 'a'", "expected a number"),
                       ("[detectors.fasttrack]\nprobes = 1", "probes"),
                       ("[detectors.nope]\na = 1", "no such detector")]:
        f = tmp_path / "c.toml"
        f.write_text(body)
        for cmd in (("check-config", str(f)), ("run", "--config", str(f))):
            done = p2pwall(*cmd)
            one_line_error(done)
            assert text in done.stderr


def test_a_cut_off_capture_is_replayed_up_to_the_cut_with_a_warning(tmp_path):
    data = (PCAPS / "edonkey.pcap").read_bytes()
    whole = json.loads(p2pwall("replay", "--format", "json", str(PCAPS / "edonkey.pcap")).stdout)
    f = tmp_path / "cut.pcap"
    f.write_bytes(data[: len(data) // 2])
    done = p2pwall("replay", "--format", "json", str(f))
    assert done.returncode == 0 and "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    assert 0 < report["packets"] < whole["packets"]
    assert done.stderr.startswith(f"p2pwall: warning: {f}: truncated after packet {report['packets']} ")
    assert report["warnings"] and f"truncated after packet {report['packets']}" in report["warnings"][0]
    for name in ("dns.pcap", "ssh.pcap"):  # pcapng too
        cut = tmp_path / name
        cut.write_bytes((PCAPS / name).read_bytes()[:-7])
        done = p2pwall("replay", "--format", "json", str(cut))
        assert done.returncode == 0 and "truncated after packet" in done.stderr, done.stderr


def test_run_needs_root():
    if os.geteuid() == 0:  # drop to nobody for this one command
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               sys.executable, "-m", "p2pwall", "run"], capture_output=True, text=True,
                              timeout=60, cwd="/")
    else:
        done = p2pwall("run")
    one_line_error(done)
    assert "root" in done.stderr


def test_status_without_daemon(tmp_path):
    done = p2pwall("status", "--socket", str(tmp_path / "none.sock"))
    one_line_error(done, code=1)


def test_replay_json_shape_for_every_bundled_capture():
    pcaps = sorted(PCAPS.glob("*.pcap"))
    assert pcaps
    for path in pcaps:
        done = p2pwall("replay", "--format", "json", str(path))
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["packets"] == report["verdicts"]["accept"] + report["verdicts"]["drop"]
        assert report["flows"], path
        for flow in report["flows"]:
            assert set(flow) == {"proto", "client", "client_port", "peer", "peer_port", "first_seen",
                                 "packets", "dropped", "detector", "reason", "scope"}
            assert flow["scope"] in (None, "lan", "client") and (flow["scope"] is None) == (flow["detector"] is None
                                                                                          or flow["scope"] is None)
            assert flow["proto"] in ("udp", "tcp")
        assert isinstance(report["events"], list)
        if path.name == "bittorrent.pcap":  # a capture that teaches: its events are told, in order
            blocked = [e for e in report["events"] if e["kind"] == "peer_blocked"]
            assert blocked and [e["time"] for e in report["events"]] == sorted(e["time"] for e in report["events"])


def test_check_config_makes_runs_checks_that_need_no_root(tmp_path):
    from p2pwall.preflight import default_route_device

    f = tmp_path / "c.toml"
    for body, text in [
        ('[network]\nlan_interfaces = ["nosuchif0"]', "no interface named 'nosuchif0'"),
        ("[network]\nlan_interfaces = []", "lan_interfaces is required"),
        ('[network]\nlan_interfaces = ["lo"]', "loopback"),
        ('[network]\nlan_interfaces = ["lo"]\nlan_networks = ["192.0.2.0/24"]\n[daemon]\nuser = "nosuchuser-p2pw"',
         "loopback"),
        ('[lock]\nseconds = inf', "finite"),
        ('[lock]\nseconds = 1e9', "at most a year"),
    ]:
        f.write_text(body)
        for cmd in (("check-config", str(f)), ("run", "--config", str(f))):
            done = p2pwall(*cmd)
            if cmd[0] == "run" and os.geteuid() != 0:
                continue  # run stops at "needs root" first
            one_line_error(done)
            assert text in done.stderr, (body, cmd, done.stderr)
    route = default_route_device()
    if route:
        state = tmp_path / "state" / "s.json"
        f.write_text(f'[network]\nlan_interfaces = ["{route}"]\n[state]\nfile = "{state}"\n')
        done = p2pwall("check-config", str(f))
        assert done.returncode == 0 and "carries the default route" in done.stderr, done.stderr
        f.write_text(f'[network]\nlan_interfaces = ["{route}"]\n[state]\nfile = "{tmp_path}/typo/deeper/s.json"\n'
                     f'[daemon]\nuser = "nosuchuser-p2pw"\n')
        done = p2pwall("check-config", str(f))
        one_line_error(done)
        assert "no such user" in done.stderr
        f.write_text(f'[network]\nlan_interfaces = ["{route}"]\n[state]\nfile = "{state}"\n'
                     f'[status]\ngroup = "nosuchgroup-p2pw"\n')
        done = p2pwall("check-config", str(f))
        one_line_error(done)
        assert "[status] group: no such group" in done.stderr
        f.write_text(f'[network]\nlan_interfaces = ["{route}"]\n[state]\nfile = "{tmp_path}/typo/deeper/s.json"\n')
        done = p2pwall("check-config", str(f))
        one_line_error(done)
        assert "[state] file" in done.stderr


def test_a_cluster_without_a_key_is_refused_unless_declared_a_lab(tmp_path):
    from unittest import mock

    from p2pwall import preflight
    from p2pwall.config import ConfigError, load

    f = tmp_path / "c.toml"
    f.write_text('[cluster]\nurl = "redis://127.0.0.1:6379/0"\n')
    settings = load(f)
    # the cluster check alone: a build machine has no LAN interface to name
    with mock.patch.object(preflight, "lan_ifindexes", lambda s: set()), \
            mock.patch.object(preflight, "default_route_device", lambda: None):
        with pytest.raises(ConfigError, match="without key_file"):
            preflight.check(settings)
        settings.cluster_insecure = True
        assert any("not signed" in w for w in preflight.check(settings))


def test_a_day_of_captures_gzip_read_directly_and_one_bad_file_skipped(tmp_path):
    import gzip

    plain = PCAPS / "bittorrent.pcap"
    packed = tmp_path / "bittorrent.pcap.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    bad = tmp_path / "garbage.pcap"
    bad.write_bytes(b"\x00" * 100)
    want = json.loads(p2pwall("replay", "--format", "json", str(plain)).stdout)
    got = p2pwall("replay", "--format", "json", str(packed))
    assert got.returncode == 0 and json.loads(got.stdout)["flows"] == want["flows"]  # .gz read as it is
    done = p2pwall("replay", "--format", "json", str(bad), str(packed), str(PCAPS / "dns.pcap"))
    assert done.returncode == 1  # the others replayed, the bad one said, exit 1 at the end
    report = json.loads(done.stdout)
    assert len(report["unreadable"]) == 1 and "garbage.pcap" in report["unreadable"][0]
    assert report["packets"] > want["packets"]
    assert "skipped" in done.stderr and done.stderr.strip().splitlines()[-1].startswith("p2pwall: error: 1 of 3")
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(packed.read_bytes()[:len(packed.read_bytes()) // 2])
    done = p2pwall("replay", "--format", "json", str(cut))
    assert done.returncode == 0 and "truncated" in done.stderr and json.loads(done.stdout)["packets"] > 0
    text = p2pwall("replay", str(plain)).stdout
    assert "by host:" in text and "by detector: bittorrent" in text
