"""The queue policy: what the kernel hands to p2pwall, what it drops by itself, and the
sets it keeps, derived once from the settings and the loaded detectors' declarations.

Everything that depends on "what reaches the queue" reads this one object: the iptables
rules (:mod:`p2pwall.rules` renders them), the nft reference script, the kernel sets
(:mod:`p2pwall.kernelsets` creates them), ``p2pwall rules`` (prints exactly what ``run``
installs) and ``replay``'s model of the kernel (``kernel_verdict``).

Learned peers live in two kernel sets per family: ``peers`` (blocked by a detector whose
``locks`` is true: a SYN to one is queued and the engine time-locks its sender) and
``nolock`` (blocked by a detector with ``locks = false``: dropped, nobody locked).  They
are nft sets in p2pwall's own table, beside the client-scoped ``pairs``, all checked by
one chain before conntrack; the locks are an ipset set, which the iptables rules read.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from .config import Settings
from .packet import TCP, UDP

# what the kernel does with a packet before (or instead of) the queue
QUEUE = "queue"  # handed to the engine
PASS = "pass"  # accepted by the kernel, never seen by p2pwall
KERNEL_DROP = "kernel_drop"  # dropped by a kernel set rule, never seen by p2pwall
BASE_PASS, BASE_QUEUE, BASE_CLEAN = 0, 1, 2  # kernel_base: before the sets are consulted

SET_KINDS = ("peers", "nolock", "locks")
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
    lock_seconds: float
    peer_max: int
    lock_max: int
    locking: tuple[tuple[str, bool], ...]  # (detector, do SYNs to its peers lock?)
    first_mark: int = 0x00200000
    per_host_rate: int = 2000
    first_sizes: tuple[int, int] | None = None  # queue first LAN payloads of these sizes (a shape)
    first_sizes_in: tuple[int, int] | None = None

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
            lock_seconds=settings.lock_seconds, peer_max=settings.peer_max, lock_max=settings.lock_max,
            locking=tuple(sorted(detectors.locking().items())), first_mark=settings.first_mark,
            per_host_rate=settings.per_host_rate, first_sizes=detectors.tcp_first_sizes(),
            first_sizes_in=detectors.tcp_first_sizes("tcp_payload_in"))

    # ------------------------------------------------------------------ sets
    def peer_set_kind(self, detector: str | None) -> str:
        """Which kernel set a peer learned by ``detector`` belongs in."""
        return "peers" if dict(self.locking).get(detector, True) else "nolock"

    def sets(self, family: int | None = None) -> list[SetSpec]:
        """The ipset sets (the lock set of each family); the peer sets are nft ones."""
        if not self.kernel_sets:
            return []
        return [SetSpec("locks", fam, set_name(self.queue, "locks", fam), max(64, self.lock_max))
                for fam in ((4, 6) if family is None else (family,))]

    def fairness(self, family: int, where: str) -> str | None:
        """The rule that keeps one LAN host's packets from filling the queue: beyond
        ``per_host_rate`` a second (bursts of two seconds pass), the host's own packets
        that would be queued are dropped; nobody else's are touched."""
        if not self.per_host_rate:
            return None
        rate = self.per_host_rate
        return (f"-m hashlimit --hashlimit-above {rate}/sec --hashlimit-burst {2 * rate} "
                f"--hashlimit-mode srcip --hashlimit-htable-max 65536 --hashlimit-htable-expire 10000 "
                f"--hashlimit-name p2pw{self.queue}{where}{family} -j DROP")

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

    def nft_sets_text(self) -> str:
        """p2pwall's nftables table: the learned peers (``peers``, ``nolock``) and the
        client-scoped blocks (``pairs``: LAN client . peer, with LAN interfaces only), all
        with timeouts, and one chain before conntrack that drops what the LAN sends to
        them, except the SYNs that must reach the engine: those go on with a mark that the
        iptables rules queue before anything else.  One hook and native set lookups:
        an early packet crosses one chain for all of it.  Empty without kernel sets."""
        if not self.kernel_sets:
            return ""
        if self.lan_interfaces:
            names = ", ".join(f'"{n}"' for n in self.lan_interfaces)
            entries = [f"iifname {{ {names} }} jump lan"]
        else:
            entries = []
            for family, word in ((4, "ip"), (6, "ip6")):
                nets = [str(ipaddress.ip_network(n, strict=False)) for n in self.lan_networks]
                nets = [n for n in nets if ipaddress.ip_network(n).version == family]
                if nets:
                    entries.append(f"{word} saddr {{ {', '.join(nets)} }} jump lan")
        if not entries:
            return ""
        # no size: the peer table bounds what the engine mirrors, and a reload that resizes
        # it leaves the sets alone
        sets = ["  set peers4 { type ipv4_addr; flags timeout; }",
                "  set peers6 { type ipv6_addr; flags timeout; }",
                "  set nolock4 { type ipv4_addr; flags timeout; }",
                "  set nolock6 { type ipv6_addr; flags timeout; }"]
        lan = []
        if self.pair_sets:
            sets += ["  set pairs4 { type ipv4_addr . ipv4_addr; flags timeout; }",
                     "  set pairs6 { type ipv6_addr . ipv6_addr; flags timeout; }"]
            lan += ["    ip saddr . ip daddr @pairs4 jump blocked",
                    "    ip6 saddr . ip6 daddr @pairs6 jump blocked"]
        lan += ["    ip daddr @peers4 jump peer", "    ip6 daddr @peers6 jump peer",
                "    ip daddr @nolock4 counter drop", "    ip6 daddr @nolock6 counter drop"]
        return "\n".join([
            f"table inet {self.nft_table} {{", *sets,
            "  chain pre {",
            "    type filter hook prerouting priority -300; policy accept;",
            *(f"    {e}" for e in entries),
            "  }",
            "  chain lan {", *lan, "  }",
            "  chain blocked {",  # blocked for this client alone
            f"    tcp flags & (syn | ack) == syn meta mark set meta mark | 0x{self.peer_syn_mark:x} accept",
            "    counter drop",
            "  }",
            "  chain peer {",  # blocked LAN-wide
            f"    tcp flags & (syn | ack) == syn meta mark set meta mark | 0x{self.peer_syn_mark:x} accept",
            "    counter drop",
            "  }", "}", ""])

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

    # ------------------------------------------------------------------ rendering
    def iptables_text(self) -> str:
        """Everything ``run`` installs, as ``p2pwall rules`` prints it: the nft table, the
        ipset sets, then the iptables-restore input of each family that has rules."""
        from . import rules

        out = []
        table = self.nft_sets_text()
        if table:
            out.append("# first: nft -f - (learned peers and client-scoped blocks)\n")
            out += [f"#   {line}\n" for line in table.splitlines()]
        for rs in self.rule_sets():
            if rs.empty:
                continue
            for spec in self.sets(rs.family):
                out.append(f"# first: ipset {' '.join(spec.create_args())}\n")
            out.append(f"# {'iptables' if rs.family == 4 else 'ip6tables'}-restore --noflush\n")
            out.append(rules.restore_script(rs))
        return "".join(out)

    def rule_sets(self):
        from . import rules

        return [rules.build(self, family) for family in (4, 6)]

    def nft_text(self) -> str:
        from . import rules

        return rules.nft_script(self)

    # ------------------------------------------------------------------ replay's model
    def kernel_verdict(self, packet, outgoing: bool, sent: int, received: int,
                       peer_set: str | None, locked: bool, solicited: bool = True) -> str:
        """What the installed rules do with a forwarded ``packet`` (QUEUE, PASS or
        KERNEL_DROP), given its flow's packet counts so far in each direction (this one
        included, as connbytes counts), the kernel set its LAN-side destination is in
        (``peers``, ``nolock``, ``pair`` or None), whether its sender is in the lock set,
        and whether a LAN host opened the flow (unsolicited inbound traffic is never read).
        One packet through :meth:`kernel_base` and :meth:`kernel_with_sets`."""
        import numpy as np

        if packet.proto not in (TCP, UDP):
            return PASS
        one = lambda v, t=np.int64: np.array([v], t)  # noqa: E731
        cols = KernelColumns(one(packet.proto), one(outgoing, bool), one(solicited, bool), one(sent),
                             one(received), one(packet.is_syn, bool), one(packet.end - packet.off),
                             one(packet.first, bool), one(packet.sport), one(packet.dport),
                             one(packet.version == 6, bool), lambda rows: [packet.data])
        return self.kernel_with_sets(int(self.kernel_base(cols)[0]), outgoing, packet.is_syn, peer_set, locked)

    def kernel_base(self, c: "KernelColumns"):
        """The rules' verdict for many packets at once, before any set is consulted:
        BASE_QUEUE, BASE_PASS, or BASE_CLEAN (passed, the connection marked clean).
        Payload strings are looked at only for the few packets the counts leave."""
        import numpy as np

        tcp = c.proto == TCP
        udp = ~tcp
        out, syn, pay = c.outgoing, c.syn, c.paylen > 0
        udp_limited = bool(self.udp_packets and self.kernel_sets)
        clean_after = np.where(tcp, self.payload_packets + 3, self.udp_packets + 1)
        clean = out & (tcp | udp_limited) & (c.sent > clean_after)
        o = out & ~clean
        queue = o & tcp & syn  # the core always sees SYNs (peer table, time lock)
        if "udp" in self.wants:
            queue |= o & udp & ((c.sent <= self.udp_packets) if udp_limited else True)
        if "tcp_payload" in self.wants:
            maybe = o & tcp & ~syn & pay & (c.sent <= self.payload_packets + 2)
            queue |= _select(maybe, c, lambda data, v6: self._payload_selected_bytes(v6, data))
            queue |= o & tcp & pay & self._sized(c, True)
        i = ~out & c.solicited
        if "udp_in" in self.wants:
            queue |= i & udp & ((c.received <= self.udp_packets) if self.udp_packets else True)
        if "tcp_payload_in" in self.wants:
            maybe = i & tcp & ~syn & pay & (c.received <= self.payload_packets + 2)
            queue |= _select(maybe, c, lambda data, v6: _contains(data, self.tcp_strings_in))
            queue |= i & tcp & ~syn & pay & self._sized(c, False)
        return np.where(queue, BASE_QUEUE, np.where(clean, BASE_CLEAN, BASE_PASS))

    def kernel_with_sets(self, base: int, outgoing: bool, syn: bool, peer_set: str | None, locked: bool) -> str:
        """One packet's verdict from its :meth:`kernel_base` code and the kernel sets."""
        if outgoing and self.kernel_sets:
            if peer_set == "peers":
                return QUEUE if syn else KERNEL_DROP  # a SYN locks in the kernel and is queued
            if peer_set == "nolock":
                return KERNEL_DROP
            if peer_set == "pair" and self.pair_sets:
                return QUEUE if syn else KERNEL_DROP  # the nft pair set; SYNs go on to the engine
        if base == BASE_CLEAN:
            return PASS  # marked clean in conntrack
        if outgoing and self.kernel_sets and syn and locked:
            return KERNEL_DROP
        return QUEUE if base == BASE_QUEUE else PASS

    def _sized(self, c: "KernelColumns", outgoing: bool):
        """First payloads the size rules queue (kernel model for replay)."""
        import numpy as np

        from .capindex import one_of
        from .plugins import SERVICE_PORTS

        sizes = self.first_sizes if outgoing else self.first_sizes_in
        if sizes is None:
            return np.zeros(len(c.proto), bool)
        port = c.dport if outgoing else c.sport
        return (c.first & (c.paylen >= sizes[0]) & (c.paylen <= sizes[1])
                & ~one_of(port, tuple(sorted(SERVICE_PORTS))))

    def _payload_selected_bytes(self, v6: bool, data: bytes) -> bool:
        if self.tcp_prefixes and v6:
            return True  # u32 reads IPv4 headers only: every first payload is queued
        if self.tcp_prefixes and data.startswith(self.tcp_prefixes):
            return True
        return _contains(data, self.tcp_strings)


@dataclass
class KernelColumns:
    """Per-packet facts the kernel model reads (numpy arrays of one length): protocol,
    direction, whether a LAN host opened the connection, connbytes-style counts in each
    direction, SYN, payload length, first payload of its direction, ports, family; and
    ``payloads(rows)``, the payload bytes of those packets (read only when the counts leave
    it in question)."""

    proto: object
    outgoing: object
    solicited: object
    sent: object
    received: object
    syn: object
    paylen: object
    first: object
    sport: object
    dport: object
    v6: object
    payloads: object


def _select(mask, c: KernelColumns, keep):
    """``mask`` narrowed to the rows whose payload ``keep(payload, is_ipv6)`` accepts."""
    import numpy as np

    rows = np.flatnonzero(mask)
    if len(rows):
        mask = mask.copy()
        mask[rows] = [bool(keep(data, v6)) for data, v6 in zip(c.payloads(rows), c.v6[rows].tolist())]
    return mask


def _contains(data: bytes, strings) -> bool:
    if strings is None:
        return True
    if len(strings) <= 4:  # a few substring searches beat the regex engine
        return any(x in data for x in strings)
    return _finder(strings)(data) is not None


@functools.lru_cache(maxsize=8)
def _finder(strings: tuple[bytes, ...]):
    """One compiled search for any of ``strings`` (what the rules' string matches find)."""
    return re.compile(b"|".join(re.escape(x) for x in strings)).search
