"""Who is who on the LAN's own segment: the gateway's neighbour table (ARP for IPv4, NDP
for IPv6), so that a LAN host cannot speak for another one.

The reverse-path check stops a host from sending as an address of another network; it
cannot stop a host from sending as its neighbour on the same segment.  Here the source
MAC of the packet that would earn evidence or a lock is compared with the MAC the
gateway itself resolved for that address: a mismatch is a spoofed packet and earns
nothing.  An address the gateway has not resolved (yet) is taken as it comes.

The table is read off the packet path: ``reload`` runs at start and then from the
daemon's watch thread (every ``REFRESH`` seconds); ``genuine`` only looks it up, so no
verdict waits for ``ip neigh``.
"""

from __future__ import annotations

import json
import subprocess
import time

from .packet import ip_bytes


REFRESH = 1.0  # seconds between readings of the neighbour table


class Neighbours:
    def __init__(self, interfaces, clock=time.monotonic, read: bool = True):
        self.interfaces = set(interfaces)
        self.clock = clock
        self._table: dict[bytes, bytes] = {}
        self._read_at = -1e9
        if read:
            self.reload()

    def reload(self) -> None:
        """Read the gateway's ARP and NDP tables for the LAN interfaces (swapped in whole:
        the loop's lookups never see half a table)."""
        table: dict[bytes, bytes] = {}
        try:
            with open("/proc/net/arp") as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) >= 6 and parts[5] in self.interfaces and parts[2] != "0x0":
                        table[ip_bytes(parts[0])] = bytes.fromhex(parts[3].replace(":", ""))
        except (OSError, ValueError):
            pass
        done = subprocess.run(["ip", "-j", "-6", "neigh", "show"], capture_output=True, text=True)
        try:
            for n in json.loads(done.stdout or "[]"):
                if n.get("dev") in self.interfaces and n.get("lladdr"):
                    table[ip_bytes(n["dst"])] = bytes.fromhex(n["lladdr"].replace(":", ""))
        except (ValueError, KeyError, TypeError):
            pass
        self._table = table
        self._read_at = self.clock()

    def genuine(self, addr: bytes, mac: bytes | None) -> bool:
        """False when the gateway knows ``addr`` lives at another MAC than ``mac`` (bytes,
        or the queue's packet, asked for it now)."""
        if mac is not None and not isinstance(mac, bytes):
            mac = mac.get_hw()
        if not mac:
            return True
        known = self._table.get(addr)
        return known is None or known == mac[:len(known)]
