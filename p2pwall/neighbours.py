"""Who is who on the LAN's own segment: the gateway's neighbour table (ARP for IPv4, NDP
for IPv6), so that a LAN host cannot speak for another one.

The reverse-path check stops a host from sending as an address of another network; it
cannot stop a host from sending as its neighbour on the same segment.  Here the source
MAC of the packet that would earn evidence or a lock is compared with the MAC the
gateway itself resolved for that address: a mismatch is a spoofed packet and earns
nothing.  An address the gateway has not resolved earns nothing either (a host can send
raw frames from any unused address of its segment; with IPv6, from any of its /64), and
evidence from several addresses at one MAC corroborates as one station's, once that
station has been on the LAN for a while (:data:`STANDING`).  What a forged ARP reply
still gains: the gateway's entry for a neighbour's address then names the forger's MAC,
so the forger may speak for that address; the change is logged
(``event=neighbour_changed``), and for :data:`STANDING` seconds after it the address
earns nothing at all (neither the forger's packets nor the neighbour's own: no block, no
lock for that address) and the new MAC cannot corroborate.  Only a forger who keeps the
gateway's entry poisoned longer than that speaks for the neighbour, for that neighbour
alone (client-scoped blocks, its lock), by which time the gateway has been sending the
neighbour's traffic to the forger all along: the ARP forgery itself, not p2pwall, is
what costs the neighbour its connectivity.

The same table keys the per-host bound in the kernel (``KernelSets.sync_stations``
fills the nft ``stations`` sets after each reading): a spoofed packet spends the share of
"unresolved senders at that address", never the neighbour's own.  A forger who poisoned
the entry spends the neighbour's share and leaves it the unresolved one, as above.

The table is read off the packet path: ``reload`` runs at start and then from the
daemon's watch thread (every ``REFRESH`` seconds); ``genuine`` only looks it up, so no
verdict waits for ``ip neigh``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time

from .events import emit
from .packet import ip_bytes, ip_text
from .policy import STATION_TABLE


REFRESH = 1.0  # seconds between readings of the neighbour table
STANDING = 60.0  # seconds a station must have been on the LAN before it corroborates
MAX_STATIONS = STATION_TABLE
log = logging.getLogger("p2pwall.neighbours")


class Neighbours:
    """The gateway's neighbours on the LAN interfaces, and since when each station (MAC)
    has been there.  One host is one station: an address the gateway has not resolved
    earns nothing, and two addresses at one MAC corroborate as one."""

    def __init__(self, interfaces, clock=time.monotonic, read: bool = True, standing: float = STANDING):
        self.interfaces = set(interfaces)
        self.clock = clock
        self.standing = standing
        self._table: dict[bytes, bytes] = {}
        self._since: dict[bytes, float] = {}  # station -> when it appeared (-inf: there before we started)
        self._read_at = -1e9
        self._arp_at = -1e9
        self._first = True
        self.changes = 0  # addresses that moved to another MAC
        self._moved: dict[bytes, float] = {}  # address -> when it moved to another MAC
        if read:
            self.reload()

    def _arp(self) -> dict[bytes, bytes]:
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
        return table

    def reload(self) -> None:
        """Read the gateway's ARP and NDP tables for the LAN interfaces (swapped in whole:
        the loop's lookups never see half a table).  A station seen for the first time, or
        an address now at another MAC (logged as ``event=neighbour_changed``), starts its
        standing from now."""
        table = self._arp()
        done = subprocess.run(["ip", "-j", "-6", "neigh", "show"], capture_output=True, text=True)
        try:
            for n in json.loads(done.stdout or "[]"):
                if n.get("dev") in self.interfaces and n.get("lladdr"):
                    table[ip_bytes(n["dst"])] = bytes.fromhex(n["lladdr"].replace(":", ""))
        except (ValueError, KeyError, TypeError):
            pass
        self._take(table)

    def _take(self, table: dict[bytes, bytes]) -> None:
        now = self.clock()
        since = self._since
        for addr, mac in table.items():
            old = self._table.get(addr)
            if old is not None and old != mac:
                self.changes += 1
                since[mac] = now  # a new MAC for a known address: no standing yet
                if len(self._moved) >= MAX_STATIONS:
                    self._moved.clear()
                self._moved[addr] = now  # and the address itself earns nothing for a while
                emit(log, logging.WARNING, "neighbour_changed", address=ip_text(addr), old=old.hex(":"),
                     new=mac.hex(":"))
            elif mac not in since:
                if len(since) >= MAX_STATIONS:
                    since.clear()  # bounded: everyone starts again
                since[mac] = float("-inf") if self._first else now
        self._first = False
        self._table = table
        self._read_at = now

    def table(self) -> dict[bytes, bytes]:
        """Address -> MAC of every neighbour resolved now (the per-host bound's stations)."""
        return dict(self._table)

    def genuine(self, addr: bytes, mac: bytes | None) -> bool:
        """Whether ``addr`` is a station the gateway resolved, at ``mac`` (bytes, or the
        queue's packet, asked for it now).  An address it has not resolved is no station:
        a host can send from any unused address of its segment, so that earns nothing.
        A packet without a hardware address (not from a LAN segment) is taken as it comes."""
        if mac is not None and not isinstance(mac, bytes):
            mac = mac.get_hw()
        if not mac:
            return True
        known = self._table.get(addr)
        if known is None and len(addr) == 4 and self.clock() - self._arp_at >= 0.2:
            # just arrived (its ARP request made the entry): /proc is cheap, no fork
            self._arp_at = self.clock()
            fresh = self._arp()
            if addr in fresh:
                self._take({**self._table, **fresh})
                known = self._table.get(addr)
        if known is None or known != mac[:len(known)]:
            return False
        moved = self._moved.get(addr)
        if moved is not None:
            if self.clock() - moved < self.standing:
                return False  # just moved to another MAC (a forged ARP reply?): nobody speaks for it yet
            del self._moved[addr]
        return True

    def station(self, addr: bytes):
        """Who ``addr`` is, for corroboration: its MAC once it has stood on the LAN for
        ``standing`` seconds, None before; an address the gateway does not know here (a
        client behind another gateway) is a station of its own."""
        mac = self._table.get(addr)
        if mac is None:
            return addr
        return mac if self.clock() - self._since.get(mac, float("-inf")) >= self.standing else None
