"""The TOML configuration: every key optional, every default documented, unknown keys errors.

``examples/p2pwall.toml`` shows and explains each key; keep the two in step.
"""

from __future__ import annotations

import ipaddress
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .records import MAX_SECONDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRIVATE_NETWORKS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                    "fc00::/7", "fe80::/10"]


class ConfigError(Exception):
    """A configuration problem, reported as one line and exit status 2."""


@dataclass
class Settings:
    # [network]
    lan_interfaces: list[str] = field(default_factory=list)
    lan_networks: list[str] = field(default_factory=lambda: list(PRIVATE_NETWORKS))
    allow: list[str] = field(default_factory=list)
    resolv_conf: str = "/etc/resolv.conf"  # its nameservers are never blocked
    # [queue]
    queue_number: int = 0
    fail_closed: bool = False
    queue_maxlen: int = 4096
    payload_packets: int = 4
    udp_packets: int = 8
    workers: int = 1
    kernel_sets: bool = True
    clean_mark: int = 0x00100000
    first_mark: int = 0x00200000  # and the four bits above it
    per_host_rate: int = 2000  # packets per second one LAN host may have queued (0: no bound)
    overflow: str = "accept"  # what a full queue does: "accept" (fail open) or "drop"
    # [lock]
    lock_seconds: float = 120.0
    lock_max: int = 65536
    # [peers]
    peer_seconds: float = 86400.0
    peer_max: int = 1_000_000
    corroborate: int = 2
    protect: list[str] = field(default_factory=list)
    # [probes]
    probes_per_lock: int = 2
    # [sender]
    send_per_second: float = 1000.0
    send_per_client_per_second: float = 100.0
    # [status]
    status_socket: str = "/run/p2pwall/p2pwall.sock"
    status_group: str = ""
    # [state]
    state_file: str = "/var/lib/p2pwall/state.json"
    state_save_seconds: float = 300.0
    # [history]
    history_file: str = "/var/lib/p2pwall/history.db"
    history_days: float = 90.0
    history_max_events: int = 1_000_000
    # [notify]
    notify_url: str = ""
    notify_events: list[str] = field(default_factory=lambda: list(NOTIFY_DEFAULT))
    notify_timeout: float = 5.0
    notify_retries: int = 3
    # [metrics]
    metrics_listen: str = ""
    # [daemon]
    user: str = ""
    # [cluster]
    cluster_url: str = ""
    cluster_name: str = ""  # empty: the host name
    cluster_prefix: str = "p2pwall"
    cluster_password_file: str = ""
    cluster_key_file: str = ""
    cluster_insecure: bool = False  # unsigned changes: for a lab only
    cluster_apply_per_second: float = 2000.0
    cluster_stream_length: int = 100000
    # [log]
    log_level: str = "info"
    log_format: str = "text"
    # [detectors.<name>]
    detectors: dict = field(default_factory=dict)
    explicit: frozenset = frozenset()  # the attributes the file set (the rest are defaults)


def _range(low=None, high=None):
    """A check that a number lies within [low, high] and the words that say so."""
    if high is None:
        text = f"at least {low}" if low else "positive"
        return (lambda v: v >= low if low else v > 0), text
    return (lambda v: low <= v <= high), f"between {low} and {high}"


# the longest an entry may live: what actions, the state file and other gateways accept too
_LIFETIME = ((lambda v: 0 < v <= MAX_SECONDS), f"above 0 and at most a year and a day ({MAX_SECONDS:.0f})")
# what [notify] can tell: a host locked, its lock over, a peer blocked for the whole LAN,
# rules put back after a firewall reload, the cluster unreachable (and back)
NOTIFY_EVENTS = ("client_locked", "lock_expired", "peer_blocked_lan", "peer_blocked", "peer_unblocked",
                 "rules_restored", "cluster_down", "cluster_up")
NOTIFY_DEFAULT = ("client_locked", "lock_expired", "peer_blocked_lan", "rules_restored", "cluster_down")
RESTART = "restart"  # the schema's last column: a SIGHUP cannot apply this key, only a restart


# section -> key -> (Settings attribute, kind, range check or None[, RESTART])
_SCHEMA = {
    "network": {
        "lan_interfaces": ("lan_interfaces", "iflist", None),
        "lan_networks": ("lan_networks", "netlist", None),
        "allow": ("allow", "netlist", None),
        "resolv_conf": ("resolv_conf", "optstr", None),
    },
    "queue": {
        "number": ("queue_number", "int", _range(0, 65535), RESTART),
        "fail_closed": ("fail_closed", "bool", None),
        "maxlen": ("queue_maxlen", "int", _range(), RESTART),
        "payload_packets": ("payload_packets", "int", _range(1, 64)),
        "udp_packets": ("udp_packets", "int", _range(0, 1000)),
        "workers": ("workers", "int", _range(1, 64), RESTART),
        "kernel_sets": ("kernel_sets", "bool", None, RESTART),
        "clean_mark": ("clean_mark", "int", (lambda v: v > 0 and v & (v - 1) == 0 and v < 2**32,
                                              "a single bit of the 32-bit conntrack mark")),
        "per_host_rate": ("per_host_rate", "int", _range(0, 10_000_000)),
        "overflow": ("overflow", "choice:accept,drop", None, RESTART),
        "first_mark": ("first_mark", "int", (lambda v: v > 0 and v & (v - 1) == 0 and v < 2**27,
                                              "a single bit of the 32-bit mark, below the top five")),
    },
    "lock": {
        "seconds": ("lock_seconds", "number", _LIFETIME),
        "max": ("lock_max", "int", _range()),
    },
    "peers": {
        "seconds": ("peer_seconds", "number", _LIFETIME),
        "max": ("peer_max", "int", _range()),
        "corroborate": ("corroborate", "int", _range(2, 4)),
        "protect": ("protect", "netlist", None),
    },
    "probes": {
        "per_lock": ("probes_per_lock", "int", _range(0, 8)),
    },
    "sender": {
        "per_second": ("send_per_second", "number", _range(0, 1e6)),
        "per_client_per_second": ("send_per_client_per_second", "number", _range(0, 1e6)),
    },
    "status": {
        "socket": ("status_socket", "str", None, RESTART),
        "group": ("status_group", "optstr", None, RESTART),
    },
    "state": {
        "file": ("state_file", "optstr", None),
        "save_seconds": ("state_save_seconds", "number", _range()),
    },
    "history": {
        "file": ("history_file", "optstr", None),
        "days": ("history_days", "number", _range(0.01, 3660)),
        "max_events": ("history_max_events", "int", _range(1000, 1_000_000_000)),
    },
    "notify": {
        "url": ("notify_url", "webhook", None),
        "events": ("notify_events", "notifylist", None),
        "timeout": ("notify_timeout", "number", _range(0.1, 120)),
        "retries": ("notify_retries", "int", _range(0, 20)),
    },
    "metrics": {
        "listen": ("metrics_listen", "listen", None, RESTART),
    },
    "daemon": {
        "user": ("user", "optstr", None, RESTART),
    },
    "cluster": {
        "url": ("cluster_url", "redisurl", None, RESTART),
        "name": ("cluster_name", "optstr", None, RESTART),
        "prefix": ("cluster_prefix", "str", None, RESTART),
        "password_file": ("cluster_password_file", "optstr", None, RESTART),
        "key_file": ("cluster_key_file", "optstr", None, RESTART),
        "insecure": ("cluster_insecure", "bool", None, RESTART),
        "apply_per_second": ("cluster_apply_per_second", "number", _range(1, 1e6)),
        "stream_length": ("cluster_stream_length", "int", _range(100, 10_000_000)),
    },
    "log": {
        "level": ("log_level", "choice:debug,info,warning,error", None, RESTART),
        "format": ("log_format", "choice:text,json", None, RESTART),
    },
}


# what Linux accepts as an interface name (and iptables' trailing '+' wildcard)
_IFNAME = re.compile(r"[A-Za-z0-9_.:-]{1,15}\+?")


def _network(where: str, text: str) -> str:
    """A network in its normal form, or a ConfigError; such values reach iptables rules, so
    nothing but an address and a prefix length survives (no IPv6 scope id, no spaces)."""
    if not re.fullmatch(r"[0-9A-Fa-f.:/]+", text):
        raise ConfigError(f"{where}: not an address or network: {text!r}")
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ConfigError(f"{where}: not an address or network: {text!r}") from None


def _check(section: str, key: str, value, kind: str, check) -> object:
    where = f"[{section}] {key}"
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number of seconds, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
    elif kind == "str":
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    elif kind == "optstr":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
    elif kind == "listen":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected \"address:port\", got {value!r}")
        if value:
            host, sep, port = value.rpartition(":")
            try:
                ipaddress.ip_address(host.strip("[]"))
                ok = sep and 0 < int(port) < 65536
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"{where}: expected \"address:port\" such as \"127.0.0.1:9733\", got {value!r}")
    elif kind == "redisurl":
        sentinel = r"redis\+sentinel://[^\s/,]+:\d{1,5}(,[^\s/,]+:\d{1,5})*/[A-Za-z0-9_.-]+(/\d+)?"
        if not isinstance(value, str) or (value and not (re.match(r"^(redis|rediss|unix)://\S+$", value)
                                                         or re.fullmatch(sentinel, value))):
            raise ConfigError(f"{where}: expected a URL such as \"redis://host:6379/0\" "
                              f"(rediss:// for TLS, redis+sentinel://host:26379[,host:26379...]/service[/db] "
                              f"for Sentinel), got {value!r}")
    elif kind == "webhook":
        if not isinstance(value, str) or (value and not re.match(r"^https?://[^\s/]+\S*$", value)):
            raise ConfigError(f"{where}: expected an http:// or https:// URL, got {value!r}")
    elif kind == "notifylist":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of event names, got {value!r}")
        unknown = [v for v in value if v not in NOTIFY_EVENTS]
        if unknown:
            raise ConfigError(f"{where}: unknown event {unknown[0]!r}; one of {', '.join(NOTIFY_EVENTS)}")
    elif kind.startswith("choice:"):
        choices = kind[7:].split(",")
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    elif kind in ("strlist", "netlist", "iflist"):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        if kind == "netlist":
            value = [_network(where, v) for v in value]
        elif kind == "iflist":
            for v in value:
                if not _IFNAME.fullmatch(v):
                    raise ConfigError(f"{where}: not an interface name: {v!r}")
    if check is not None and not check[0](value):
        raise ConfigError(f"{where}: must be {check[1]}, got {value!r}")
    return value


def from_dict(data: dict) -> Settings:
    """Validate a parsed TOML document into :class:`Settings`."""
    settings = Settings()
    for section, body in data.items():
        if section == "detectors":
            if not isinstance(body, dict) or not all(isinstance(v, dict) for v in body.values()):
                raise ConfigError("[detectors]: expected one table per detector, like [detectors.<name>]")
            settings.detectors = body
            continue
        schema = _SCHEMA.get(section)
        if schema is None:
            raise ConfigError(f"unknown section [{section}]")
        if not isinstance(body, dict):
            raise ConfigError(f"[{section}]: expected a table")
        for key, value in body.items():
            if key not in schema:
                raise ConfigError(f"unknown key [{section}] {key}")
            attr, kind, check = schema[key][:3]
            setattr(settings, attr, _check(section, key, value, kind, check))
            settings.explicit = settings.explicit | {attr}
    if settings.clean_mark in tuple(settings.first_mark << k for k in range(5)):
        raise ConfigError("[queue] first_mark: its bit and the four above it must differ from clean_mark")
    return settings


def restart_only() -> dict[str, str]:
    """Settings attribute -> "[section] key" of every key a reload cannot apply."""
    return {entry[0]: f"[{section}] {key}" for section, keys in _SCHEMA.items()
            for key, entry in keys.items() if entry[3:] == (RESTART,)}


def per_queue(settings: Settings) -> Settings:
    """Two instances on one host (different ``[queue] number``) never share a default
    status socket or state file: the defaults name the queue unless it is 0."""
    import dataclasses

    q = settings.queue_number
    if q == 0:
        return settings
    changes = {}
    if "status_socket" not in settings.explicit and settings.status_socket == Settings.status_socket:
        changes["status_socket"] = f"/run/p2pwall/p2pwall-{q}.sock"
    if "state_file" not in settings.explicit and settings.state_file == Settings.state_file:
        changes["state_file"] = f"/var/lib/p2pwall/state-{q}.json"
    return dataclasses.replace(settings, **changes) if changes else settings


def load(path: str | Path | None) -> Settings:
    """Read and validate a config file; ``None`` gives the defaults."""
    if path is None:
        return Settings()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def gateway_name(settings: Settings, worker: int = 0) -> str:
    """This gateway's name among several (``[cluster] name``, else the host name), a
    worker's with its number: what the cluster, the history and the webhooks call it."""
    import socket

    return (settings.cluster_name or socket.gethostname()) + (f"/worker{worker}" if worker else "")
