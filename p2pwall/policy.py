"""The queue policy: what the kernel hands to p2pwall, what it drops by itself, and the
sets it keeps, derived once from the settings and the loaded detectors' declarations.

It is data: everything that depends on "what reaches the queue" reads this one object,
and nothing here renders it.  :mod:`p2pwall.rules` renders the iptables rules, p2pwall's
nft table and the nft reference script; :mod:`p2pwall.kernelsets` creates the sets;
``p2pwall rules`` prints exactly what ``run`` installs; :mod:`p2pwall.kernelmodel` is
replay's model of the same rules.  The thresholds both the rules and the model use are
named here once (``payload_window``, ``tcp_clean_after``, ``udp_clean_after``).

Learned peers live in two kernel sets per family: ``peers`` (blocked by a detector whose
``locks`` is true: a SYN to one is queued and the engine time-locks its sender) and
``nolock`` (blocked by a detector with ``locks = false``: dropped, nobody locked).  They
are nft sets in p2pwall's own table, beside the client-scoped ``pairs``, all checked by
one chain before conntrack; the locks are an ipset set, which the iptables rules read.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .config import Settings
from .streams import SHORT

SET_KINDS = ("peers", "nolock", "locks")
ANSWERED_RATE = 100  # datagrams a second (per LAN host and prefix) the kernel queues to blocked peers (udp_answered)
NFT_KINDS = ("peers", "nolock")  # in p2pwall's nft table (with the pairs); the locks are ipset


@dataclass(frozen=True)
class SetSpec:
    kind: str  # one of SET_KINDS
    family: int
    name: str
    maxelem: int

    def create_args(self) -> list[str]:
        fam = "inet" if self.family == 4 else "inet6"
        return ["create", self.name, "hash:ip", "family", fam, "timeout", "0", "maxelem", str(self.maxelem),
                "comment"]


SHORT_PAYLOAD = SHORT  # a first TCP payload shorter than this: what follows is queued and joined
STATION_TABLE = 65536  # most stations the nft stations sets hold (neighbours.MAX_STATIONS)
BOUND_CAP = 262144  # most keys of the per-host bound's table of unresolved senders


def set_name(queue: int, kind: str, family: int) -> str:
    return f"p2pwall-{kind}{queue}{'' if family == 4 else '-6'}"


@dataclass(frozen=True)
class QueuePolicy:
    queue: int
    workers: int
    fail_closed: bool
    lan_interfaces: tuple[str, ...]
    lan_networks: tuple[str, ...]
    wants: frozenset
    tcp_strings: tuple[bytes, ...] | None  # None: every first LAN payload
    tcp_strings_in: tuple[bytes, ...] | None
    tcp_prefixes: tuple[bytes, ...]
    udp_packets: int
    payload_packets: int
    kernel_sets: bool
    clean_mark: int
    lock_max: int
    first_mark: int = 0x00200000
    per_host_rate: int = 2000
    first_sizes: tuple[int, int] | None = None  # queue first LAN payloads of these sizes (a shape)
    first_sizes_in: tuple[int, int] | None = None
    udp_lockers: frozenset = frozenset()  # detectors whose locks take the client's UDP too (udplocks sets)
    udp_answered: tuple[bytes, ...] = ()  # UDP prefixes still queued to blocked peers (DetectorInfo.udp_answered)

    @classmethod
    def build(cls, settings: Settings, detectors) -> "QueuePolicy":
        strings, strings_in = detectors.tcp_strings(), detectors.tcp_strings("tcp_payload_in")
        return cls(
            queue=settings.queue_number, workers=settings.workers, fail_closed=settings.fail_closed,
            lan_interfaces=tuple(settings.lan_interfaces), lan_networks=tuple(settings.lan_networks),
            wants=frozenset(detectors.wants()),
            tcp_strings=None if strings is None else tuple(strings),
            tcp_strings_in=None if strings_in is None else tuple(strings_in),
            tcp_prefixes=tuple(detectors.tcp_prefixes()),
            udp_packets=settings.udp_packets, payload_packets=settings.payload_packets,
            kernel_sets=settings.kernel_sets, clean_mark=settings.clean_mark,
            lock_max=settings.lock_max, first_mark=settings.first_mark,
            per_host_rate=settings.per_host_rate, first_sizes=detectors.tcp_first_sizes(),
            first_sizes_in=detectors.tcp_first_sizes("tcp_payload_in"),
            udp_lockers=detectors.udp_locking() if settings.kernel_sets else frozenset(),
            udp_answered=tuple(detectors.udp_answered()))

    # ------------------------------------------------------------------ thresholds
    # named once: the rules (rules.py) and replay's model of them (kernelmodel.py) read these
    @property
    def payload_window(self) -> int:
        """A connection's first packets, per direction, whose payloads may be queued."""
        return self.payload_packets + 2

    @property
    def tcp_clean_after(self) -> int:
        """Packets (original direction) after which a TCP connection is marked clean."""
        return self.payload_packets + 3

    @property
    def udp_clean_after(self) -> int:
        """Packets (original direction) after which a UDP flow is marked clean (with
        kernel sets and ``udp_packets``)."""
        return self.udp_packets + 1

    # ------------------------------------------------------------------ sets
    def sets(self, family: int | None = None) -> list[SetSpec]:
        """The ipset sets (the lock set of each family); the peer sets are nft ones."""
        if not self.kernel_sets:
            return []
        return [SetSpec("locks", fam, set_name(self.queue, "locks", fam), max(64, self.lock_max))
                for fam in ((4, 6) if family is None else (family,))]

    def fairness(self, family: int, where: str) -> list[str]:
        """The rules that keep one LAN host's packets from filling the queue: beyond
        ``per_host_rate`` a second (bursts of two seconds pass), the host's own packets
        that would be queued are dropped; nobody else's are touched.

        The kernel's bound counts by source address, and a host can send with its
        neighbour's.  So with the stations (``stations``: LAN interfaces and kernel
        sets), a packet whose address and MAC are a pair the gateway itself resolved
        (the nft ``stations`` sets mark it) spends that station's share, and any other
        (a spoofed neighbour's address at the spoofer's MAC, an address nobody resolved
        yet) spends the share of "unresolved senders at that address" (IPv6: that /64):
        a spoofer spends only a share it shares with nobody real.  Each table is sized
        to what can meet it (the stations sets' size; the LAN's addresses, its /64s for
        IPv6), so a full table, which drops every new key, cannot happen (up to
        ``BOUND_CAP`` keys: a larger LAN is capped there)."""
        if not self.per_host_rate:
            return []
        rate = self.per_host_rate
        bound = (f"-m hashlimit --hashlimit-above {rate}/sec --hashlimit-burst {2 * rate} --hashlimit-mode srcip "
                 f"--hashlimit-htable-expire 10000")
        by_prefix = " --hashlimit-srcmask 64" if family == 6 else ""
        name = f"p2pw{self.queue}{where}{family}"
        lan = f"--hashlimit-htable-max {self.lan_keys(family)}"
        if not self.stations:
            return [f"{bound}{by_prefix} {lan} --hashlimit-name {name} -j DROP"]
        mark = f"0x{self.station_mark:x}"
        return [f"-m mark --mark {mark}/{mark} {bound} --hashlimit-htable-max {STATION_TABLE} "
                f"--hashlimit-name {name}s -j DROP",
                f"-m mark ! --mark {mark}/{mark} {bound}{by_prefix} {lan} --hashlimit-name {name}u -j DROP"]

    def lan_keys(self, family: int) -> int:
        """How many keys the bound of unresolved senders can meet: the LAN networks'
        addresses (IPv6: their /64s), at least 1,024, at most ``BOUND_CAP`` (the cap also
        when only interfaces name the LAN)."""
        total = 0
        for text in self.lan_networks:
            net = ipaddress.ip_network(text, strict=False)
            if net.version == family:
                total += 2 ** max(0, (32 if family == 4 else 64) - net.prefixlen)
        return min(max(total, 1024), BOUND_CAP) if total else BOUND_CAP

    @property
    def stations(self) -> bool:
        """Whether the per-host bound tells the gateway's resolved stations from other
        senders (the nft ``stations`` sets, filled from the neighbour table)."""
        return bool(self.per_host_rate) and self.pair_sets

    @property
    def station_mark(self) -> int:
        """Packet mark the nft table gives a packet whose source address and MAC are a
        station the gateway resolved (the per-host bound's key, ``fairness``)."""
        return self.first_mark << 4

    @property
    def nft_table(self) -> str:
        return f"p2pwall{self.queue}"

    @property
    def pair_sets(self) -> bool:
        """Whether the nft table holds the client-scoped pair sets: a client's own address
        is only known on its own interface, so they need the LAN interfaces."""
        return self.kernel_sets and bool(self.lan_interfaces)

    @property
    def peer_syn_mark(self) -> int:
        """Packet mark the nft table gives a LAN host's SYN to a peer blocked for it (LAN-wide
        or for it alone), so that the iptables rules queue it before anything else, lock
        or clean connection: the engine (re)locks its sender."""
        return self.first_mark << 2

    def set_names(self, family: int) -> dict[str, str]:
        """The ipset sets' names, by kind (the locks; the peer sets are nft ones)."""
        return {kind: set_name(self.queue, kind, family) for kind in SET_KINDS if kind not in NFT_KINDS}

    def lan_sources(self, family: int, towards: bool = False) -> list[str]:
        """iptables clauses selecting packets from the LAN (``towards``: to it)."""
        if self.lan_interfaces:
            flag = "-o" if towards else "-i"
            return [f"{flag} {name}" for name in self.lan_interfaces]
        nets = [str(ipaddress.ip_network(n, strict=False)) for n in self.lan_networks]
        nets = [n for n in nets if ipaddress.ip_network(n).version == family]
        return [f"{'-d' if towards else '-s'} {n}" for n in nets]
