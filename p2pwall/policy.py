"""The queue policy: what the kernel hands to p2pwall, what it drops by itself, and the
sets it keeps, derived once from the settings and the loaded detectors' declarations.

Everything that depends on "what reaches the queue" reads this one object: the iptables
rules (:mod:`p2pwall.rules` renders them), the nft reference script, the ipset sets
(:mod:`p2pwall.kernelsets` creates them), ``p2pwall rules`` (prints exactly what ``run``
installs) and ``replay``'s model of the kernel (``kernel_verdict``).

Learned peers live in two kernel sets per family: ``peers`` (blocked by a detector whose
``locks`` is true: a SYN to one time-locks its sender, in the kernel) and ``nolock``
(blocked by a detector with ``locks = false``: dropped, nobody locked).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .config import Settings
from .packet import TCP, UDP

# what the kernel does with a packet before (or instead of) the queue
QUEUE = "queue"  # handed to the engine
PASS = "pass"  # accepted by the kernel, never seen by p2pwall
KERNEL_DROP = "kernel_drop"  # dropped by a kernel set rule, never seen by p2pwall

SET_KINDS = ("peers", "nolock", "locks")


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
        if not self.kernel_sets:
            return []
        out = []
        for fam in (4, 6) if family is None else (family,):
            for kind in SET_KINDS:
                size = self.lock_max if kind == "locks" else self.peer_max
                out.append(SetSpec(kind, fam, set_name(self.queue, kind, fam), max(64, size)))
        return out

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

    def pairs_text(self) -> str:
        """The nftables table of client-scoped blocks: sets of (LAN client . peer) with
        timeouts, and one chain before conntrack that drops what a client sends to a peer
        blocked for it, except its SYNs, which go on to the queue (the engine locks the
        client).  Empty without kernel sets or LAN interfaces."""
        if not self.kernel_sets or not self.lan_interfaces:
            return ""
        names = ", ".join(f'"{n}"' for n in self.lan_interfaces)
        size = max(64, self.peer_max)
        return "\n".join([
            f"table inet {self.nft_table} {{",
            f"  set pairs4 {{ type ipv4_addr . ipv4_addr; flags timeout; size {size}; }}",
            f"  set pairs6 {{ type ipv6_addr . ipv6_addr; flags timeout; size {size}; }}",
            "  chain pre {",
            "    type filter hook prerouting priority -300; policy accept;",
            f"    iifname {{ {names} }} ip saddr . ip daddr @pairs4 jump blocked",
            f"    iifname {{ {names} }} ip6 saddr . ip6 daddr @pairs6 jump blocked",
            "  }",
            "  chain blocked {",
            "    tcp flags & (syn | ack) == syn accept",
            "    drop",
            "  }", "}", ""])

    def set_names(self, family: int) -> dict[str, str]:
        return {kind: set_name(self.queue, kind, family) for kind in SET_KINDS}

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
        """Everything ``run`` installs, as ``p2pwall rules`` prints it: the ipset sets,
        then the iptables-restore input of each family that has rules."""
        from . import rules

        out = []
        pairs = self.pairs_text()
        if pairs:
            out.append("# first: nft -f - (client-scoped blocks)\n")
            out += [f"#   {line}\n" for line in pairs.splitlines()]
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
        and whether a LAN host opened the flow (unsolicited inbound traffic is never read)."""
        proto = packet.proto
        if proto not in (TCP, UDP):
            return PASS
        syn = packet.is_syn
        if outgoing:
            if self.kernel_sets:
                if peer_set == "peers":
                    return QUEUE if syn else KERNEL_DROP  # a SYN locks in the kernel and is queued
                if peer_set == "nolock":
                    return KERNEL_DROP
                if peer_set == "pair" and self.lan_interfaces:
                    return QUEUE if syn else KERNEL_DROP  # the nft pair set; SYNs go on to the engine
            clean_after = self.payload_packets + 3 if proto == TCP else self.udp_packets + 1
            limited = proto == TCP or (self.udp_packets and self.kernel_sets)
            if limited and sent > clean_after:
                return PASS  # marked clean in conntrack
            if self.kernel_sets and syn and locked:
                return KERNEL_DROP
            if proto == UDP:
                if "udp" in self.wants and (not limited or sent <= self.udp_packets):
                    return QUEUE
                return PASS
            if syn:
                return QUEUE  # the core always sees SYNs (peer table, time lock)
            if ("tcp_payload" in self.wants and packet.end > packet.off
                    and sent <= self.payload_packets + 2 and self._payload_selected(packet)):
                return QUEUE
            if "tcp_payload" in self.wants and self.sized(packet, True):
                return QUEUE
            return PASS
        if not solicited:
            return PASS
        if proto == UDP:
            if "udp_in" in self.wants and (not self.udp_packets or received <= self.udp_packets):
                return QUEUE
            return PASS
        if ("tcp_payload_in" in self.wants and not syn and packet.end > packet.off
                and received <= self.payload_packets + 2 and _contains(packet.data, self.tcp_strings_in)):
            return QUEUE
        if "tcp_payload_in" in self.wants and not syn and packet.end > packet.off and self.sized(packet, False):
            return QUEUE
        return PASS

    def sized(self, packet, outgoing: bool) -> bool:
        """A first payload the size rules queue (kernel model for replay)."""
        from .plugins import SERVICE_PORTS

        sizes = self.first_sizes if outgoing else self.first_sizes_in
        if sizes is None or not packet.first:
            return False
        port = packet.dport if outgoing else packet.sport
        return sizes[0] <= packet.end - packet.off <= sizes[1] and port not in SERVICE_PORTS

    def _payload_selected(self, packet) -> bool:
        if self.tcp_prefixes and packet.version == 6:
            return True  # u32 reads IPv4 headers only: every first payload is queued
        data = packet.data
        if self.tcp_prefixes and data.startswith(self.tcp_prefixes):
            return True
        return _contains(data, self.tcp_strings)


def _contains(data: bytes, strings) -> bool:
    if strings is None:
        return True
    return any(s in data for s in strings)
