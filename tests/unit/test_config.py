import pytest

from p2pwall.config import ConfigError, Settings, from_dict, load


def test_defaults_follow_ftwall():
    s = Settings()
    assert s.lock_seconds == 120 and s.peer_seconds == 86400 and s.queue_number == 0
    assert "192.168.0.0/16" in s.lan_networks and "fc00::/7" in s.lan_networks


def test_example_file_is_valid_and_documents_every_key():
    import pathlib

    from p2pwall.config import _SCHEMA

    import tomllib

    path = pathlib.Path(__file__).parents[2] / "examples" / "p2pwall.toml"
    import re

    s = load(path)
    text = path.read_text()
    doc = tomllib.loads(text)
    commented = {}  # keys shown as a commented-out example ("# key = value") because setting them changes a default
    for block in re.split(r"^(?=\[)", text, flags=re.M):
        head = re.match(r"\[([\w.]+)\]", block)
        if head:
            commented[head.group(1)] = set(re.findall(r"^# (\w+) = \S", block, flags=re.M))
    for section, keys in _SCHEMA.items():
        assert section in doc, f"[{section}] is missing from the example"
        shown = set(doc[section]) | commented[section]
        assert shown == set(keys), f"[{section}]: {set(keys) ^ shown}"
        assert not set(doc[section]) & commented[section], f"[{section}]: a key both set and commented out"
    assert commented["network"] == {"lan_networks"}  # set, it would override the interfaces' own networks
    assert set(doc) - {"detectors"} == set(_SCHEMA)
    from p2pwall import plugins

    for name, table in doc["detectors"].items():  # each detector table is complete and valid
        plugins.load([name], from_dict({"detectors": {name: table}}))
    assert s.lock_seconds == 120


@pytest.mark.parametrize("data, message", [
    ({"lock": {"secs": 1}}, "unknown key [lock] secs"),
    ({"bogus": {}}, "unknown section [bogus]"),
    ({"lock": {"seconds": "x"}}, "[lock] seconds: expected a number"),
    ({"lock": {"seconds": -1}}, "[lock] seconds: must be above 0"),
    ({"lock": {"seconds": float("inf")}}, "[lock] seconds: must be a finite number"),
    ({"peers": {"seconds": float("inf")}}, "[peers] seconds: must be a finite number"),
    ({"lock": {"seconds": 1e9}}, "[lock] seconds: must be above 0 and at most a year"),  # what the state file refuses
    ({"state": {"save_seconds": float("nan")}}, "[state] save_seconds: must be a finite number"),
    ({"queue": {"number": 70000}}, "[queue] number: must be between 0 and 65535"),
    ({"queue": {"fail_closed": "yes"}}, "expected true or false"),
    ({"network": {"lan_networks": ["nope"]}}, "not an address or network"),
    ({"network": {"lan_interfaces": "eth1"}}, "expected a list of strings"),
    ({"notify": {"url": "ftp://example.invalid/x"}}, "[notify] url: expected an http:// or https:// URL"),
    ({"notify": {"events": ["client_lockd"]}}, "[notify] events: unknown event 'client_lockd'"),
    ({"history": {"max_events": 10}}, "[history] max_events: must be between"),
])
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    assert message in str(e.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[lock\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load(bad)


def test_two_instances_never_share_default_paths():
    from p2pwall.config import per_queue

    zero = per_queue(from_dict({}))
    three = per_queue(from_dict({"queue": {"number": 3}}))
    assert zero.status_socket != three.status_socket and zero.state_file != three.state_file
    assert "3" in three.status_socket and "3" in three.state_file
    mine = per_queue(from_dict({"queue": {"number": 3}, "status": {"socket": "/run/x.sock"}}))
    assert mine.status_socket == "/run/x.sock"  # what the operator names is kept
