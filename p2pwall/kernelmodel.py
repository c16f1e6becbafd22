"""Replay's model of the kernel: what the installed rules and sets do with a packet that
never reaches p2pwall, from the same queue policy the rules are rendered from.

- :func:`kernel_base` (columns of many packets at once) and :func:`kernel_with_sets` (one
  packet and the sets) follow :func:`p2pwall.rules.build` rule for rule, with the same
  thresholds (``QueuePolicy.payload_window``, ``tcp_clean_after``, ``udp_clean_after``);
  :func:`kernel_verdict` is one packet through both;
- :class:`KernelModel` stands in for the kernel sets: it is one of the ledger's mirrors
  (:mod:`p2pwall.mirrors`), so the engine writes it exactly as it writes the real sets,
  and it keeps each element's life in packets.

A change to the rules is a change here: the replay tests compare the two on real captures.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .kernelsets import _timeout, valid_element
from .packet import TCP, UDP
from .policy import QueuePolicy
from .records import LOCKS, PAIR, UDPLOCKS, Record

# what the kernel does with a packet before (or instead of) the queue
QUEUE = "queue"  # handed to the engine
PASS = "pass"  # accepted by the kernel, never seen by p2pwall
KERNEL_DROP = "kernel_drop"  # dropped by a kernel set rule, never seen by p2pwall
BASE_PASS, BASE_QUEUE, BASE_CLEAN = 0, 1, 2  # kernel_base: before the sets are consulted
_V6_KEY = 1 << 128


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
    second: object = None  # the payload after a first one of a shape-read size (see rules.py)
    iplen: object = None  # IP packet lengths (the short-first-payload rule reads them)
    after_short: object = None  # a payload after a short first one of its connection (see rules.py)


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


def kernel_verdict(policy: QueuePolicy, packet, outgoing: bool, sent: int, received: int,
                   peer_set: str | None, locked: bool, solicited: bool = True, second: bool = False,
                   udp_locked: bool = False, after_short: bool = False) -> str:
    """What the installed rules do with a forwarded ``packet`` (QUEUE, PASS or
    KERNEL_DROP), given its flow's packet counts so far in each direction (this one
    included, as connbytes counts), the kernel set its LAN-side destination is in
    (``peers``, ``nolock``, ``pair`` or None), whether its sender is in the lock set,
    and whether a LAN host opened the flow (unsolicited inbound traffic is never read).
    ``second``: it is the payload after a first one of a shape-read size; ``udp_locked``:
    its sender is in the UDP lock set (``udplocks``); ``after_short``: a payload of a
    connection whose first payload, earlier, was short (:func:`short_first`).  One packet through
    :func:`kernel_base` and :func:`kernel_with_sets`."""
    import numpy as np

    if packet.proto not in (TCP, UDP):
        return PASS
    one = lambda v, t=np.int64: np.array([v], t)  # noqa: E731
    cols = KernelColumns(one(packet.proto), one(outgoing, bool), one(solicited, bool), one(sent),
                         one(received), one(packet.is_syn, bool), one(packet.end - packet.off),
                         one(packet.first, bool), one(packet.sport), one(packet.dport),
                         one(packet.version == 6, bool), lambda rows: [packet.data], one(second, bool),
                         one(packet.end), one(after_short, bool))
    udp_locked = udp_locked and packet.proto == UDP and udp_lock_port(packet.dport)
    answered = outgoing and packet.proto == UDP and answered_datagram(policy, packet.data)
    return kernel_with_sets(policy, int(kernel_base(policy, cols)[0]), outgoing, packet.is_syn, peer_set, locked,
                            udp_locked, answered)


def answered_datagram(policy: QueuePolicy, payload: bytes) -> bool:
    """A UDP payload the nft chains still queue to a blocked peer (``udp_answered``; their
    rate bound is not modelled)."""
    return bool(policy.udp_answered) and payload[:4].startswith(policy.udp_answered)

def kernel_base(policy: QueuePolicy, c: "KernelColumns"):
    """The rules' verdict for many packets at once, before any set is consulted:
    BASE_QUEUE, BASE_PASS, or BASE_CLEAN (passed, the connection marked clean).
    Payload strings are looked at only for the few packets the counts leave."""
    import numpy as np

    tcp = c.proto == TCP
    udp = ~tcp
    out, syn, pay = c.outgoing, c.syn, c.paylen > 0
    udp_limited = bool(policy.udp_packets and policy.kernel_sets)
    clean_after = np.where(tcp, policy.tcp_clean_after, policy.udp_clean_after)
    clean = out & (tcp | udp_limited) & (c.sent > clean_after)
    o = out & ~clean
    queue = o & tcp & syn  # the core always sees SYNs (peer table, time lock)
    if "udp" in policy.wants:
        queue |= o & udp & ((c.sent <= policy.udp_packets) if udp_limited else True)
    if "tcp_payload" in policy.wants:
        maybe = o & tcp & ~syn & pay & (c.sent <= policy.payload_window)
        queue |= _select(maybe, c, lambda data, v6: _payload_selected_bytes(policy, v6, data))
        queue |= o & tcp & pay & _sized(policy, c, True)
        if c.second is not None and policy.first_sizes:
            queue |= o & tcp & c.second
        queue |= o & tcp & ~syn & _short_queued(policy, c, c.sent)
    i = ~out & c.solicited
    if "udp_in" in policy.wants:
        queue |= i & udp & ((c.received <= policy.udp_packets) if policy.udp_packets else True)
    if "tcp_payload_in" in policy.wants:
        maybe = i & tcp & ~syn & pay & (c.received <= policy.payload_window)
        queue |= _select(maybe, c, lambda data, v6: _contains(data, policy.tcp_strings_in))
        queue |= i & tcp & ~syn & pay & _sized(policy, c, False)
        queue |= i & tcp & ~syn & _short_queued(policy, c, c.received)
    return np.where(queue, BASE_QUEUE, np.where(clean, BASE_CLEAN, BASE_PASS))

def udp_lock_port(port: int) -> bool:
    """A UDP destination port the UDP lock takes (every one but the service ports)."""
    from .plugins import UDP_SERVICE_PORTS

    return port not in UDP_SERVICE_PORTS


def kernel_with_sets(policy: QueuePolicy, base: int, outgoing: bool, syn: bool, peer_set: str | None, locked: bool,
                     udp_locked: bool = False, answered: bool = False) -> str:
    """One packet's verdict from its :func:`kernel_base` code and the kernel sets
    (``udp_locked``: a UDP datagram from a client in ``udplocks`` to a port it takes;
    ``answered``: a datagram of a ``udp_answered`` prefix)."""
    if outgoing and policy.kernel_sets:
        if peer_set == "peers":
            return QUEUE if syn or answered else KERNEL_DROP  # a SYN locks in the kernel and is queued
        if peer_set == "nolock":
            return KERNEL_DROP
        if peer_set == "pair" and policy.pair_sets:
            return QUEUE if syn or answered else KERNEL_DROP  # the nft pair set; SYNs go on to the engine
        if udp_locked and policy.udp_lockers:
            return KERNEL_DROP  # the udplock chain: established flows included
    if base == BASE_CLEAN:
        return PASS  # marked clean in conntrack
    if outgoing and policy.kernel_sets and syn and locked:
        return KERNEL_DROP
    return QUEUE if base == BASE_QUEUE else PASS

def sized_first(sizes, paylen, port):
    """Payloads whose size the rules read by shape, off the service ports (numpy arrays;
    ``port``: the outside end's)."""
    from .capindex import one_of
    from .plugins import SERVICE_PORTS

    return (paylen >= sizes[0]) & (paylen <= sizes[1]) & ~one_of(port, tuple(sorted(SERVICE_PORTS)))


def short_first(iplen, v6):
    """Packet lengths the short-first-payload rule takes (rules._short; numpy arrays)."""
    import numpy as np

    from .policy import SHORT_PAYLOAD

    ip = np.where(v6, 40, 20)
    return (iplen >= ip + 21) & (iplen <= ip + 60 + SHORT_PAYLOAD - 1)


def _short_queued(policy: QueuePolicy, c: "KernelColumns", count):
    """What the short-first-payload rules queue in one direction: a short first payload,
    and any payload within the window after one (``after_short``)."""
    import numpy as np

    out = np.zeros(len(c.proto), bool)
    pay = c.paylen > 0
    if c.iplen is not None:
        out |= pay & c.first & short_first(c.iplen, c.v6)
    if c.after_short is not None:
        out |= pay & c.after_short & (count <= policy.payload_window)
    return out


def _sized(policy: QueuePolicy, c: "KernelColumns", outgoing: bool):
    """First payloads the size rules queue (kernel model for replay)."""
    import numpy as np

    sizes = policy.first_sizes if outgoing else policy.first_sizes_in
    if sizes is None:
        return np.zeros(len(c.proto), bool)
    return c.first & sized_first(sizes, c.paylen, c.dport if outgoing else c.sport)

def _payload_selected_bytes(policy: QueuePolicy, v6: bool, data: bytes) -> bool:
    if policy.tcp_prefixes and v6:
        return True  # u32 reads IPv4 headers only: every first payload is queued
    if policy.tcp_prefixes and data.startswith(policy.tcp_prefixes):
        return True
    return _contains(data, policy.tcp_strings)


class KernelModel:
    """Replay's stand-in for :class:`p2pwall.kernelsets.KernelSets`: the engine adds and
    removes elements as it does live; each element's life is kept as the packets it
    covers (from the packet after the one that added it, until its timeout or removal),
    so packets the engine never sees are judged by what the kernel held then."""

    def __init__(self, clock, pairs: bool, udp_lockers: frozenset = frozenset()):
        self.clock = clock
        self.pairs = pairs  # the pair set exists (QueuePolicy.pair_sets): else, as live, no pair is held
        self.udp_lockers = udp_lockers  # QueuePolicy.udp_lockers: their locks are in udplocks too
        self.at = -1  # the packet being handled; a change applies from the next one
        # kind -> element (an address; a (client, peer) pair) -> [first packet, until,
        # removed at or None, note]: what the set holds now, and every element's lives
        self.live: dict[str, dict] = {kind: {} for kind in ("peers", "nolock", "pair", "locks", UDPLOCKS)}
        self.history: dict[str, dict] = {kind: {} for kind in self.live}

    def _add(self, kind: str, key, seconds: float, note: str) -> bool:
        now = self.clock.now
        # the engine takes an element out when its own entry expires (its tick runs every
        # second live), before the kernel's whole-second timeout would: its time counts
        until = now + min(seconds, _timeout(seconds))
        live = self.live[kind]
        cur = live.get(key)
        if cur is not None and cur[2] is None and now < cur[1]:
            cur[1], cur[3] = until, note or cur[3]  # ipset add -exist: a new timeout
            return True
        entry = [self.at + 1, until, None, note]
        live[key] = entry
        self.history[kind].setdefault(key, []).append(entry)
        return True

    def _remove(self, kind: str, key) -> None:
        cur = self.live[kind].get(key)
        if cur is not None and cur[2] is None:
            cur[2] = self.at + 1

    @staticmethod
    def key(addr: bytes) -> int:
        """An address as the model keys it: its number, IPv6 ones above 2**128."""
        return int.from_bytes(addr, "big") | (_V6_KEY if len(addr) == 16 else 0)

    # the mirror interface (mirrors.py), with the kernel's own refusals
    def add(self, where: str, record: Record) -> None:
        if where == PAIR:
            if self.pairs and valid_element(record.client) and valid_element(record.address):
                self._add(PAIR, (self.key(record.client), self.key(record.address)), record.seconds, record.comment())
        elif valid_element(record.address):
            self._add(where, self.key(record.address), record.seconds, record.comment())
            if where == LOCKS and record.detector in self.udp_lockers:
                self._add(UDPLOCKS, self.key(record.address), record.seconds, record.comment())

    def remove(self, where: str, record: Record) -> None:
        if where == PAIR:
            self._remove(PAIR, (self.key(record.client), self.key(record.address)))
        else:
            self._remove(where, self.key(record.address))
            if where == LOCKS:
                self._remove(UDPLOCKS, self.key(record.address))

    def flush(self) -> None:
        pass

    def counters(self) -> dict:
        return {}

    def holds(self, kind: str, key, i: int, now: float) -> str | None:
        """The note of the element if the kernel held it for packet ``i``, else None."""
        cur = self.live[kind].get(key)
        if cur is None or cur[0] > i or now >= cur[1] or (cur[2] is not None and cur[2] <= i):
            return None
        return cur[3]

    def judge(self, src: int, dst: int, i: int, now: float) -> tuple[str | None, str | None, str | None]:
        """For packet ``i`` from ``src`` to ``dst`` (as :meth:`key` makes them): the set
        that holds ``dst`` (``peers``, ``nolock``, ``pair``: checked in the rules' order)
        or None, its note, and the lock set's note for ``src`` (None: not locked)."""
        live = self.live
        locked = None
        e = live["locks"].get(src)
        if e is not None and e[0] <= i and now < e[1] and (e[2] is None or e[2] > i):
            locked = e[3]
        e = live["peers"].get(dst)
        if e is not None and e[0] <= i and now < e[1] and (e[2] is None or e[2] > i):
            return "peers", e[3], locked
        e = live["nolock"].get(dst)
        if e is not None and e[0] <= i and now < e[1] and (e[2] is None or e[2] > i):
            return "nolock", e[3], locked
        pairs = live["pair"]
        if pairs:
            e = pairs.get((src, dst))
            if e is not None and e[0] <= i and now < e[1] and (e[2] is None or e[2] > i):
                return "pair", e[3], locked
        return None, None, locked
