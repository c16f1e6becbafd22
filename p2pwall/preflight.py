"""The checks of a configuration that need no root, made alike by ``p2pwall check-config``
and by ``p2pwall run`` before it touches anything: what passes one passes the other.

Errors raise :class:`~p2pwall.config.ConfigError` (one line, exit status 2, systemd does
not restart on it); warnings are returned, for the caller to print or log.
"""

from __future__ import annotations

import importlib.util
import json
import grp
import os
import pwd
import subprocess

from .config import ConfigError, Settings
from .lan import interface_networks, lan_ifindexes


def check(settings: Settings) -> list[str]:
    """Raise ConfigError for what ``run`` would refuse; return the warnings."""
    warnings = []
    lan_ifindexes(settings)  # named, and existing
    for name in settings.lan_interfaces:
        if name == "lo":
            raise ConfigError("[network] lan_interfaces: lo is the loopback, not a LAN")
        if not interface_networks([name]) and "lan_networks" not in settings.explicit:
            raise ConfigError(f"[network] lan_interfaces: {name} carries no address to take the LAN from; "
                              f"give it one, or give [network] lan_networks")
    route = default_route_device()
    if route in settings.lan_interfaces:
        warnings.append(f"[network] lan_interfaces: {route} carries the default route: is it the WAN side?")
    if settings.user:
        try:
            pwd.getpwnam(settings.user)
        except KeyError:
            raise ConfigError(f"[daemon] user: no such user {settings.user!r}") from None
    if settings.status_group:
        try:
            grp.getgrnam(settings.status_group)
        except KeyError:
            raise ConfigError(f"[status] group: no such group {settings.status_group!r}") from None
    if settings.cluster_url and importlib.util.find_spec("redis") is None:
        raise ConfigError("[cluster] url is set but redis-py is missing: pip install 'p2pwall[cluster]'")
    if settings.cluster_url and not settings.cluster_key_file:
        if not settings.cluster_insecure:
            raise ConfigError("[cluster] url is set without key_file: whoever can write to Redis would control "
                              "every gateway; give a key_file (or insecure = true, for a lab only)")
        warnings.append("[cluster] insecure = true: changes are not signed, whoever can write to Redis "
                        "controls every gateway")
    for what, path in (("[state] file", settings.state_file), ("[history] file", settings.history_file)):
        if not path:
            continue
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent) and not os.path.isdir(os.path.dirname(parent)):
            raise ConfigError(f"{what}: neither {parent} nor the directory above it exists "
                              f"(a typo? p2pwall makes one directory level, not a tree)")
    return warnings


def default_route_device() -> str | None:
    """The interface the IPv4 default route leaves by, if any."""
    done = subprocess.run(["ip", "-j", "route", "show", "default"], capture_output=True, text=True)
    try:
        routes = json.loads(done.stdout or "[]")
    except ValueError:
        return None
    return routes[0].get("dev") if routes and isinstance(routes[0], dict) else None
