"""The LAN a run protects, found from the configuration and the interfaces themselves."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import socket
import subprocess

from .config import ConfigError, Settings


def lan_ifindexes(settings: Settings) -> set[int]:
    """The kernel's indexes of ``[network] lan_interfaces`` (ConfigError if none is
    named, or one does not exist)."""
    if not settings.lan_interfaces:
        raise ConfigError("[network] lan_interfaces is required: name the interfaces that face the LAN "
                          "(only what arrives on them is filtered, and spoofs go only to their hosts)")
    found = set()
    for name in settings.lan_interfaces:
        try:
            found.add(socket.if_nametoindex(name))
        except OSError:
            raise ConfigError(f"[network] lan_interfaces: no interface named {name!r}") from None
    return found


def interface_networks(names) -> list[str]:
    """The networks of the addresses configured on these interfaces (IPv4 and IPv6,
    link-local included): the hosts that are on-link there."""
    nets = []
    for name in names:
        done = subprocess.run(["ip", "-j", "addr", "show", "dev", name], capture_output=True, text=True)
        try:
            for link in json.loads(done.stdout or "[]"):
                for a in link.get("addr_info", []):
                    net = ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False)
                    if str(net) not in nets and net.prefixlen < net.max_prefixlen:
                        nets.append(str(net))
        except (ValueError, KeyError, TypeError):
            continue
    return nets


def with_lan(settings: Settings) -> Settings:
    """``[network] lan_networks`` given in the file, or else the LAN interfaces' own."""
    if "lan_networks" in settings.explicit or not settings.lan_interfaces:
        return settings
    derived = interface_networks(settings.lan_interfaces)
    if not derived:
        raise ConfigError("[network] lan_networks: the LAN interfaces have no addresses to take them from; "
                          "give lan_networks")
    return dataclasses.replace(settings, lan_networks=derived)
