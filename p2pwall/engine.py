"""The engine: one packet's whole way from parse to verdict, and the timers.

    parse -> direction -> core tables -> detectors -> merge actions -> verdict
          -> side effects (spoofs, probes) after the verdict -> events
    timers: expire tables, probe locked clients

The engine knows no protocol; detectors (``p2pwall_inspect``) recognise, the engine
decides and enforces.  It has no I/O of its own: a source feeds it, a sender (optional)
transmits spoofs and probes, and the clock is injected (replay uses capture times).
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import time
from collections import Counter
from typing import NamedTuple

from . import events as ev
from . import actions as act
from .actions import Block, Drop, Lock, Probe, Report, Spoof
from .config import Settings
from .evidence import Evidence, Refused, nameservers
from .kernelsets import valid_element
from .packet import FROM_LAN, TCP, TO_FIREWALL, TO_LAN, UDP, UNKNOWN, Packet, ip_bytes, ip_text, parse
from .plugins import KINDS, DetectorSet
from .tables import NAMED, OPERATOR as OPERATOR_KIND, OWN, LockTable, PeerTable

log = logging.getLogger("p2pwall.engine")

# netfilter hook numbers as NetfilterQueue reports them
HOOK_LOCAL_IN = 1
HOOK_FORWARD = 2


class Verdict(NamedTuple):
    """What the engine decided for one packet."""

    drop: bool
    detector: str | None = None
    reason: str = ""


ACCEPTED = Verdict(False)
OPERATOR = "operator"  # the "detector" of entries an operator made by hand
UNPARSED = Verdict(False, None, "unparsed")


class AddressSet:
    """Fast membership of packed addresses in a list of networks."""

    def __init__(self, networks):
        self.v4 = []
        self.v6 = []
        for net in networks:
            net = ipaddress.ip_network(net, strict=False) if isinstance(net, str) else net
            pair = (int(net.network_address), int(net.netmask))
            (self.v4 if net.version == 4 else self.v6).append(pair)
        self._cache: dict[bytes, bool] = {}

    def __contains__(self, addr: bytes) -> bool:
        hit = self._cache.get(addr)
        if hit is None:
            nets = self.v4 if len(addr) == 4 else self.v6
            value = int.from_bytes(addr, "big")
            hit = any((value & mask) == base for base, mask in nets)
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[addr] = hit
        return hit

    def member_columns(self, hi, lo, v6):
        """The same test for many addresses at once (numpy columns: the high and low 64
        bits, IPv4 in the low half, and whether each is IPv6), for replay."""
        import numpy as np

        hit = np.zeros(len(lo), bool)
        for base, mask in self.v4:
            hit |= ~v6 & ((lo & np.uint64(mask)) == np.uint64(base))
        low = (1 << 64) - 1
        for base, mask in self.v6:
            hit |= v6 & ((hi & np.uint64(mask >> 64)) == np.uint64(base >> 64)) & \
                ((lo & np.uint64(mask & low)) == np.uint64(base & low))
        return hit


class Context:
    """What a detector may ask of the engine while inspecting, and the small, bounded,
    expiring memory the core keeps for it (so a detector keeps no tables of its own)."""

    __slots__ = ("_engine", "now", "detector")

    def __init__(self, engine: Engine):
        self._engine = engine
        self.now = 0.0
        self.detector = ""  # the detector being asked, set by the engine

    def requested(self, packet) -> bool:
        """For a reply towards the LAN: did this detector recognise the client's request
        on this same flow (and act on it)?"""
        from .evidence import flow_key

        return self.detector in self._engine.evidence.asked.get(flow_key(packet, False), ())

    def note_for(self, client, peer, tag: str) -> bytes | None:
        """What this detector kept about ``client`` talking to ``peer`` (``keep_note``)."""
        return self._engine.evidence.note(self.detector, _key(client), _key(peer), tag, self.now)

    def keep_note(self, client, peer, tag: str, data: bytes, seconds: float) -> None:
        """Keep up to 64 bytes about ``client`` talking to ``peer`` for up to an hour
        (bounded by the core: the oldest notes go first)."""
        self._engine.evidence.keep_note(self.detector, _key(client), _key(peer), tag,
                                        bytes(data[:64]), min(max(seconds, 0.0), 3600.0), self.now)

    def is_blocked(self, addr) -> bool:
        return self._engine.peers.live(_key(addr), self.now)

    def is_locked(self, addr) -> bool:
        return self._engine.locks.live(_key(addr), self.now)

    def in_lan(self, addr) -> bool:
        return _key(addr) in self._engine.lan

    @property
    def settings(self) -> Settings:
        return self._engine.settings


def _key(addr) -> bytes:
    if isinstance(addr, bytes) and len(addr) in (4, 16):
        return addr
    return ip_bytes(addr)


def _tag(detector: str, kind: str, reason: str) -> str:
    """The comment a kernel set element carries: enough to take it back after a crash."""
    return f"{detector}|{kind}|{reason}"


class Engine:
    """Applies the tables and detectors to packets; owns the tables and the timers."""

    def __init__(self, settings: Settings, detectors: DetectorSet, clock=time.monotonic,
                 sender=None, monitor: bool = False, keep_events: int = 0, kernel=None):
        self.clock = clock
        self.sender = sender
        self.kernel = kernel  # KernelSets, or None (replay, tests)
        self.monitor = monitor
        self.peers = PeerTable(settings.peer_max)
        self.locks = LockTable(settings.lock_max)
        self.peers.on_evict = self._peer_evicted
        self.locks.on_evict = self._lock_evicted
        self.evidence = Evidence()
        self.onlink = None  # AddressSet of the LAN interfaces' own networks (the daemon sets it)
        self.events = ev.EventLog(keep=keep_events)
        self.counters: Counter[str] = Counter()
        self.n_accepted = self.n_dropped = 0  # the hot counters, kept out of the Counter
        self.by_detector: Counter[str] = Counter()
        self.context = Context(self)
        self.outbox: list = []
        self._probe_heap: list[tuple[float, bytes]] = []
        self._probe_due: dict[bytes, tuple[float, int]] = {}  # at most one per live lock
        self._error_log: dict[str, tuple[float, int]] = {}
        self._locking: dict[str, bool] = {}
        # called for every local change, as replicate(op, address text, seconds left,
        # detector, reason, note): the cluster link publishes them (see cluster.py)
        self.replicate = None
        self.reconfigure(settings, detectors)
        self.started = clock()

    def reconfigure(self, settings: Settings, detectors: DetectorSet) -> None:
        """Take new settings and detectors (SIGHUP), keeping tables and counters; entries
        the new settings forbid (now allowlisted, now inside the LAN, over a smaller
        bound) go, in the kernel too, and peers whose detector changed its ``locks``
        move to the matching kernel set."""
        self.settings = settings
        self.detectors = detectors
        self._first_bit = settings.first_mark
        self.lan = AddressSet(settings.lan_networks)
        self.allow = AddressSet(settings.allow)
        self._no_allow = not settings.allow
        self.protected = AddressSet(list(settings.allow) + list(settings.protect)
                                    + nameservers(settings.resolv_conf))
        self._udp_screen = detectors.udp_screen()
        self.peers.max_entries = settings.peer_max
        self.locks.max_entries = settings.lock_max
        screens = detectors.udp_screens()
        self._dispatch = {kind: [(name, fn, screens.get(name) if kind.startswith("udp") else None)
                                 for name, fn in detectors.impls("p2pwall_inspect", kind)] for kind in KINDS}
        old_locking = self._locking
        self._locking = {**detectors.locking(), OPERATOR: False}  # an operator's block locks nobody
        self._probe_makers = dict(detectors.impls("p2pwall_make_probe"))
        self._observers = detectors.impls("p2pwall_event")
        self._purge(old_locking)

    def _purge(self, old_locking: dict[str, bool]) -> None:
        now = self.clock()
        for key, _, detector, _ in list(self.peers.entries(now)):
            if key in self.protected or key in self.lan:
                self.unblock(key, why="no longer allowed by the configuration", replicate=False)
            elif old_locking and self.set_kind(detector) != self.set_kind(detector, old_locking):
                if self.kernel is not None:
                    entry = self.peers.get(key, now)
                    self.kernel.remove(self.set_kind(detector, old_locking), key)
                    self.kernel.add(self.set_kind(detector), key, entry.until - now,
                                    _tag(entry.detector, entry.kind, entry.reason))
        for key, _, _, _ in list(self.locks.entries(now)):
            if key in self.allow or key not in self.lan:
                self.unlock(key, why="no longer allowed by the configuration", replicate=False)
        for table in (self.peers, self.locks):
            for _ in range(max(0, len(table) - table.max_entries)):
                table.evict_one()

    def set_kind(self, detector: str | None, locking: dict | None = None) -> str:
        return "peers" if (self._locking if locking is None else locking).get(detector, True) else "nolock"

    def restore(self, saved: dict) -> int:
        """Put back peers and locks saved by a previous run (see state.py), each checked
        like a live one; returns how many were taken back."""
        now = self.clock()
        count = 0
        for key, left, detector, reason, note, *evidence in saved.get("peers", []):
            kind, lanwide, clients, own = evidence if evidence else (OWN, True, [], 0)
            if self._restore_peer(key, left, detector, reason, note, kind, lanwide, clients, own, now):
                count += 1
        for key, left, detector, reason, note in saved.get("locks", []):
            if self._lock_key(key, left, detector, reason, note, now, quiet=True):
                count += 1
        return count

    # ------------------------------------------------------------------ packets
    def process_raw(self, raw: bytes, hook: int | None = None, from_lan_if: bool | None = None,
                    source=None) -> Verdict:
        """Parse and judge one queued packet.  ``source``, the queue's own packet, is asked
        only when needed: its mark (the kernel's "first payload" bit) for TCP payloads,
        its source MAC for evidence and locks."""
        # the commonest case first, without building a Packet: a plain IPv4 UDP datagram
        # from the LAN, to no learned peer, that no detector's screen wants
        screen = self._udp_screen
        if (from_lan_if and hook == HOOK_FORWARD and screen is not None and len(raw) >= 28
                and raw[0] == 0x45 and raw[9] == UDP and not (raw[6] & 0x3F or raw[7])):
            end = (raw[2] << 8) | raw[3]
            if screen(raw, 28, end if end <= len(raw) else len(raw)) is None and raw[16:20] not in self.peers:
                self.n_accepted += 1
                return ACCEPTED
        packet = parse(raw)
        if packet is None:
            self.counters["unparsed"] += 1
            return UNPARSED
        packet.direction = self.direction(packet, hook, from_lan_if)
        packet.mac = source
        return self.handle(packet)

    def direction(self, packet: Packet, hook: int | None, from_lan_if: bool | None) -> str:
        if hook == HOOK_LOCAL_IN:
            if from_lan_if is None:
                from_lan_if = packet.src in self.lan
            return TO_FIREWALL if from_lan_if else UNKNOWN
        if from_lan_if is not None:
            return FROM_LAN if from_lan_if else TO_LAN
        src_lan = packet.src in self.lan
        dst_lan = packet.dst in self.lan
        if src_lan and not dst_lan:
            return FROM_LAN
        if dst_lan and not src_lan:
            return TO_LAN
        return UNKNOWN

    def handle(self, packet: Packet) -> Verdict:
        """Judge a parsed packet whose ``direction`` is set.

        The hot path: written for speed (locals, no per-packet allocation when nothing
        matches, a regex screen in front of the UDP detectors)."""
        now = self.clock()
        self.context.now = now
        drop = False
        fired = None
        reason = ""
        to_peer = False
        direction = packet.direction
        proto = packet.proto
        syn = proto == TCP and (packet.flags & 0x12) == 0x02
        if (direction == FROM_LAN or direction == TO_FIREWALL) and (
                self._no_allow or (packet.src not in self.allow and packet.dst not in self.allow)):
            peer = self.peers.get(packet.dst, now)
            if peer is not None and (peer.lanwide or packet.src in peer.clients):
                drop, fired, reason, to_peer = True, peer.detector, "peer blocked", True
                if syn and self._locking.get(peer.detector, True):
                    neighbours = self.evidence.neighbours
                    if neighbours is None or neighbours.genuine(packet.src, packet.mac):
                        self._lock_key(packet.src, self.settings.lock_seconds, peer.detector,
                                       "SYN to blocked peer", peer.note, now)
                    else:
                        self.counters["evidence_refused.spoofed_neighbour"] += 1
            elif syn:
                locked = self.locks.get(packet.src, now)
                if locked is not None:
                    drop, fired, reason = True, locked.detector, "client locked"

        incoming = direction == TO_LAN
        if to_peer:
            kind = None  # nothing left to learn; the kernel sets drop these before the queue
        elif proto == UDP:
            kind = "udp_in" if incoming else "udp"
            screen = self._udp_screen
            if screen is not None and screen(packet.raw, packet.off, packet.end) is None:
                kind = None  # no detector could want this datagram
        elif proto == TCP:
            if syn:
                kind = None if incoming else "tcp_syn"
            elif packet.end > packet.off:
                kind = "tcp_payload_in" if incoming else "tcp_payload"
                source = packet.mac
                if source is not None and not isinstance(source, bytes):
                    packet.first = bool(source.get_mark() & self._first_bit)
            else:
                kind = None
        else:
            kind = None
        if kind is not None:
            for name, inspect, own_screen in self._dispatch[kind]:
                if own_screen is not None and own_screen(packet.raw, packet.off, packet.end) is None:
                    continue
                self.context.detector = name
                try:
                    wanted = inspect(packet, self.context)
                except Exception as exc:  # a detector's bug never costs the verdict
                    self._detector_failed(name, exc)
                    continue
                if not wanted:
                    continue
                if not isinstance(wanted, (list, tuple)):
                    wanted = (wanted,)
                self.evidence.named_in_packet = 0
                for action in wanted:
                    try:
                        asks_drop = self._apply(action, name, packet, now)
                    except Exception as exc:  # whatever a malformed action does, never the verdict
                        self._detector_failed(name, exc)
                        continue
                    if asks_drop:
                        if not drop or fired is None:
                            fired = name
                            reason = action.reason or reason
                        drop = True
                    elif fired is None and isinstance(action, (Block, Lock, Report)):
                        fired, reason = name, action.reason
        if drop:
            self.n_dropped += 1
            if fired:
                self.by_detector[fired] += 1
            if self.monitor:
                self.counters["would_drop"] += 1
                return Verdict(False, fired, reason)
            return Verdict(True, fired, reason)
        self.n_accepted += 1
        return Verdict(False, fired, reason) if fired else ACCEPTED

    def _apply(self, action, name: str, packet: Packet, now: float) -> bool:
        """Carry out one requested action once it is checked; True when it asks for the
        packet's drop.  A malformed action is refused and counted against the detector."""
        why = act.check(action)
        if why is not None:
            self._refuse(name, action, why, now)
            return False
        if isinstance(action, Drop):
            return True
        if isinstance(action, Block):
            key = self._address(action.peer, name, action, now)
            if key is None:
                return False
            try:
                kind, client, lanwide = self.evidence.block(packet, name, key, action.evidence, self.peers, now)
            except Refused as exc:
                self.counters[f"evidence_refused.{exc.why}"] += 1
                return False
            if self._block_key(key, action.seconds or self.settings.peer_seconds, name, action.reason,
                               action.note, now, kind, client, lanwide) and kind == OWN:
                self.evidence.recognised(packet, name)  # its replies may teach, on this flow only
        elif isinstance(action, Lock):
            key = self._address(action.client, name, action, now)
            if key is None:
                return False
            try:
                self.evidence.lock(packet, key, now)
            except Refused as exc:
                self.counters[f"evidence_refused.{exc.why}"] += 1
                return False
            self._lock_key(key, action.seconds or self.settings.lock_seconds, name, action.reason,
                           action.note, now, answered=packet.direction == TO_FIREWALL)
        elif isinstance(action, Report):
            self.counters["reported"] += 1
            self._event(ev.REPORTED, now, name, address=ip_text(packet.src), peer=ip_text(packet.dst),
                        reason=action.reason)
        else:  # Spoof, Probe: sent after the verdict
            self.outbox.append((name, action))
        return False

    def _address(self, addr, name: str, action, now: float) -> bytes | None:
        try:
            return _key(addr)
        except (ValueError, TypeError):
            self._refuse(name, action, f"not an IP address: {addr!r}"[:120], now)
            return None

    def _refuse(self, name: str, action, why: str, now: float) -> None:
        self.counters["actions_refused"] += 1
        self._detector_failed(name, ValueError(f"{type(action).__name__} refused: {why}"), kind=ev.ACTION_REFUSED)

    # ------------------------------------------------------------------ tables
    def _block_key(self, key: bytes, seconds: float, name: str, reason: str, note, now: float,
                   kind: str = OWN, client: bytes | None = None, lanwide: bool = False,
                   quiet: bool = False, remote: bool = False) -> bool:
        """Record evidence against ``key`` and enforce what it earns: LAN-wide in the
        kernel's peer sets, or for ``client`` alone in its pair set."""
        if key in self.protected or key in self.lan or not valid_element(key):
            self.counters["block_refused"] += 1
            return False
        if client is not None and (client not in self.lan or not valid_element(client)):
            client = None  # evidence concerns LAN clients only
        if client is None and not lanwide:
            self.counters["block_refused"] += 1
            return False
        old = self.peers.get(key, now)
        entry, new, widened = self.peers.learn(key, now, seconds, name, reason, note, kind, client, lanwide,
                                               self.settings.corroborate)
        if self.kernel is not None and not self.monitor:
            left = entry.until - now
            if entry.lanwide:
                set_kind = self.set_kind(entry.detector)
                if old is not None and old.lanwide and self.set_kind(old.detector) != set_kind:
                    self.kernel.remove(self.set_kind(old.detector), key)
                self.kernel.add(set_kind, key, left, _tag(entry.detector, entry.kind, entry.reason))
                if widened:  # the client-scoped entries it grew out of are covered now
                    for c in entry.clients:
                        self.kernel.remove_pair(c, key)
            elif client is not None:
                self.kernel.add_pair(client, key, left, _tag(entry.detector, kind, entry.reason))
        if self.replicate is not None and not remote:
            self.replicate("block", ip_text(key), entry.until - now, name, entry.reason, entry.note,
                           kind=kind, client=ip_text(client) if client else None, lanwide=lanwide)
        if not quiet and (new or widened):
            self._event(ev.PEER_BLOCKED, now, name, peer=ip_text(key), until=entry.until, reason=reason,
                        address=ip_text(client) if client and not entry.lanwide else None,
                        scope="lan" if entry.lanwide else "client", evidence=entry.kind)
        return True

    def restore_kernel(self, found: dict) -> int:
        """Take back what a crashed run left in the kernel sets (``KernelSets.leftovers``):
        the remaining time, and the detector, evidence and reason kept in each element's
        comment.  Every entry is checked as a live one."""
        from .kernelsets import parse_comment

        now = self.clock()
        count = 0
        for set_kind in ("peers", "nolock"):
            for text, left, tag in found.get(set_kind, []):
                detector, kind, reason = (parse_comment(tag) + ["", "", ""])[:3]
                try:
                    key = ip_bytes(text)
                except ValueError:
                    continue
                kind = kind if kind in ("own", "reply", "named", OPERATOR_KIND) else OWN
                count += self._block_key(key, left, detector or "kernel", reason, None, now, kind, None, True,
                                         quiet=True, remote=True)
        for client_text, peer_text, left, tag in found.get("pairs", []):
            detector, kind, reason = (parse_comment(tag) + ["", "", ""])[:3]
            try:
                client, key = ip_bytes(client_text), ip_bytes(peer_text)
            except ValueError:
                continue
            kind = kind if kind in ("own", "named") else OWN
            count += self._block_key(key, left, detector or "kernel", reason, None, now, kind, client, False,
                                     quiet=True, remote=True)
        for text, left, tag in found.get("locks", []):
            detector, _, reason = (parse_comment(tag) + ["", "", ""])[:3]
            try:
                key = ip_bytes(text)
            except ValueError:
                continue
            count += self._lock_key(key, left, detector or "kernel", reason, None, now, quiet=True, remote=True)
        return count

    def _restore_peer(self, key, left, detector, reason, note, kind, lanwide, clients, own, now) -> bool:
        clients = [c for c in clients if c in self.lan and valid_element(c)]
        if not lanwide and not clients:
            return False
        ok = False
        for i, client in enumerate(clients or [None]):
            client_kind = kind if (own >> i & 1 or kind != OWN) else NAMED
            ok = self._block_key(key, left, detector, reason, note, now, client_kind, client,
                                 lanwide and i == len(clients or [None]) - 1, quiet=True, remote=True) or ok
        return ok

    def _lock_key(self, key: bytes, seconds: float, name: str, reason: str, note, now: float,
                  answered: bool = False, quiet: bool = False, remote: bool = False) -> bool:
        if key in self.allow or key not in self.lan or not valid_element(key):
            self.counters["lock_refused"] += 1
            return False
        entry, new = self.locks.put(key, now, seconds, name, reason, note)
        if self.kernel is not None and not self.monitor:
            self.kernel.add("locks", key, entry.until - now, _tag(entry.detector, "lock", entry.reason))
        if self.replicate is not None and not remote:
            self.replicate("lock", ip_text(key), entry.until - now, name, entry.reason, entry.note)
        if not quiet:
            kind = ev.CLIENT_LOCKED if new else (ev.PROBE_ANSWERED if answered else ev.LOCK_RESTARTED)
            self._event(kind, now, name, address=ip_text(key), until=entry.until, reason=reason)
        if self.settings.probes_per_lock and name in self._probe_makers:
            self._schedule_probe(key, now + (entry.until - now) / 2, 0)
        return True

    def operator_block(self, key: bytes, seconds: float) -> bool:
        """``p2pwall block``: a peer blocked by hand, for every LAN host, locking nobody."""
        return self._block_key(key, seconds, OPERATOR, "blocked by an operator", None, self.clock(),
                               OPERATOR_KIND, None, True)

    def apply_remote(self, op: str, key: bytes, left: float, detector: str, reason: str, note,
                     why: str = "", kind: str = OWN, client: bytes | None = None, lanwide: bool = False) -> bool:
        """Apply a change another gateway made, through the same checks as a local one
        (allowlist, protected, LAN, unicast, bounds); it is not published again.  Its
        evidence joins this gateway's: two clients behind two gateways corroborate."""
        now = self.clock()
        if op in ("block", "lock"):
            if not 0 < left <= act.MAX_SECONDS:
                return False
            if op == "block":
                if kind not in (OWN, NAMED, "reply", OPERATOR_KIND):
                    return False
                return self._block_key(key, left, detector, reason, note, now, kind, client, lanwide,
                                       quiet=True, remote=True)
            return self._lock_key(key, left, detector, reason, note, now, quiet=True, remote=True)
        if op == "unblock":
            return self.unblock(key, why=why, replicate=False)
        return self.unlock(key, why=why, replicate=False)

    def unblock(self, key: bytes, why: str = "", replicate: bool = True) -> bool:
        """Take a peer out of the table and the kernel now."""
        entry = self.peers.remove(key)
        if entry is None:
            return False
        if self.replicate is not None and replicate:
            self.replicate("unblock", ip_text(key), 0.0, entry.detector, why, None)
        self._kernel_forget_peer(key, entry)
        self._event(ev.PEER_UNBLOCKED, self.clock(), entry.detector, peer=ip_text(key), reason=why)
        return True

    def unlock(self, key: bytes, why: str = "", replicate: bool = True) -> bool:
        """Free a locked client now (table, kernel, probe schedule)."""
        entry = self.locks.remove(key)
        if entry is None:
            return False
        if self.replicate is not None and replicate:
            self.replicate("unlock", ip_text(key), 0.0, entry.detector, why, None)
        self._probe_due.pop(key, None)
        self.evidence.forget(key)
        if self.kernel is not None:
            self.kernel.remove("locks", key)
        self._event(ev.LOCK_EXPIRED, self.clock(), entry.detector, address=ip_text(key), reason=why)
        return True

    def _kernel_forget_peer(self, key: bytes, entry) -> None:
        if self.kernel is None or self.monitor:
            return
        if entry.lanwide:
            self.kernel.remove(self.set_kind(entry.detector), key)
        for client in entry.clients:
            self.kernel.remove_pair(client, key)

    def _peer_evicted(self, key: bytes, entry) -> None:
        self.counters["peers_evicted"] += 1
        self._kernel_forget_peer(key, entry)

    def _lock_evicted(self, key: bytes, entry) -> None:
        self.counters["locks_evicted"] += 1
        self._probe_due.pop(key, None)
        if self.kernel is not None:
            self.kernel.remove("locks", key)

    def live_entries(self) -> dict[str, list[tuple[bytes, float]]]:
        """Kernel set kind -> [(address, seconds left)], for rebuilding kernel sets."""
        now = self.clock()
        out: dict[str, list] = {"peers": [], "nolock": [], "locks": []}
        for key, left, entry in self.peers.full_entries(now):
            if entry.lanwide:
                out[self.set_kind(entry.detector)].append((key, left))
        out["locks"] = [(key, left) for key, left, _, _ in self.locks.entries(now)]
        return out

    # ------------------------------------------------------------------ timers
    def _schedule_probe(self, key: bytes, due: float, sent: int) -> None:
        """At most one heap entry per key: a later ``due`` is found when the entry pops."""
        known = self._probe_due.get(key)
        self._probe_due[key] = (due, sent)
        if known is None or due < known[0]:
            heapq.heappush(self._probe_heap, (due, key))

    def tick(self, now: float | None = None) -> None:
        """Expire what is due and send due probes; called by the loop, traffic or not."""
        now = self.clock() if now is None else now
        self.context.now = now
        kernel = None if self.monitor else self.kernel
        for key, entry in self.peers.expire(now):
            self.counters["peers_expired"] += 1
            if kernel is not None:
                self._kernel_forget_peer(key, entry)
        for key, entry in self.locks.expire(now):
            self._probe_due.pop(key, None)
            self.evidence.forget(key)
            if kernel is not None:
                kernel.remove("locks", key)
            self._event(ev.LOCK_EXPIRED, now, entry.detector, address=ip_text(key))
        heap = self._probe_heap
        while heap and heap[0][0] <= now:
            due, key = heapq.heappop(heap)
            scheduled = self._probe_due.get(key)
            if scheduled is None:
                continue
            if scheduled[0] > due:  # restarted since: wait for the new time
                heapq.heappush(heap, (scheduled[0], key))
                continue
            entry = self.locks.get(key, now)
            if entry is None:
                self._probe_due.pop(key, None)
                continue
            self._probe(key, entry, now, scheduled[1])

    def _probe(self, key: bytes, entry, now: float, sent: int) -> None:
        maker = self._probe_makers.get(entry.detector)
        probe = None
        if maker is not None:
            try:
                probe = maker(key, entry.note, self.context)
            except Exception as exc:
                self._detector_failed(entry.detector, exc)
        if probe is not None and not isinstance(probe, Probe):
            self._refuse(entry.detector, probe, "p2pwall_make_probe must return a Probe or None", now)
            probe = None
        if probe is not None:
            why = act.check(probe)
            if why is not None:
                self._refuse(entry.detector, probe, why, now)
                probe = None
            else:
                self.outbox.append((entry.detector, probe))
        self._probe_due.pop(key, None)
        sent += 1
        if sent < self.settings.probes_per_lock and probe is not None:
            self._schedule_probe(key, now + (entry.until - now) / 2, sent)

    def next_timer(self, now: float | None = None) -> float | None:
        """Seconds until the next timer is due (None: nothing scheduled)."""
        now = self.clock() if now is None else now
        times = [t for t in (self.peers.next_expiry(), self.locks.next_expiry()) if t is not None]
        while self._probe_heap:
            due, key = self._probe_heap[0]
            if key in self._probe_due:
                times.append(due)
                break
            heapq.heappop(self._probe_heap)
        return max(0.0, min(times) - now) if times else None

    # ------------------------------------------------------------------ side effects
    def flush(self) -> None:
        """Write kernel set updates and send the spoofs and probes requested since the
        last flush: side effects, after the verdicts.  Nothing here may raise."""
        if self.kernel is not None:
            try:
                self.kernel.flush()
            except Exception as exc:  # ipset gone, a broken pipe: count, keep filtering
                self.counters["kernel_set_errors"] += 1
                ev.emit(log, logging.ERROR, "kernel_set_error", error=str(exc))
        if not self.outbox:
            return
        outbox, self.outbox = self.outbox, []
        now = self.clock()
        for name, action in outbox:
            try:
                self._send(name, action, now)
            except Exception as exc:  # a malformed action that slipped through: its detector's fault
                self._detector_failed(name, exc)

    def _send(self, name: str, action, now: float) -> None:
        dst = action.dst if isinstance(action, Spoof) else action.client
        key = self._address(dst, name, action, now)
        if key is None:
            return
        onlink = self.onlink if self.onlink is not None else self.lan
        if key not in self.lan or key not in onlink or not valid_element(key):
            # never outward, never beyond the LAN interfaces' own networks, whatever a detector asks
            self.counters["send_refused"] += 1
            self._event(ev.SEND_REFUSED, now, name, address=ip_text(key), reason="not an on-link LAN host")
            return
        kind = ev.SPOOF_SENT if isinstance(action, Spoof) else ev.PROBE_SENT
        if isinstance(action, Probe):
            entry = self.locks.get(key, now)
            self.evidence.probe_sent(key, action.dport, now, entry.until if entry else now + self.settings.lock_seconds)
        if self.monitor:
            self.counters["would_send"] += 1
            return
        if self.sender is None:
            self.counters[kind] += 1
            return
        try:
            sent = self.sender.send(action, key)
        except OSError as exc:
            self.counters["send_failed"] += 1
            ev.emit(log, logging.WARNING, "send_failed", detector=name, address=ip_text(key), error=str(exc))
            return
        if sent:
            if kind == ev.PROBE_SENT:
                self._event(kind, now, name, address=ip_text(key), reason=action.reason)
            else:
                self.counters[kind] += 1
        else:
            self.counters["send_rate_limited"] += 1

    # ------------------------------------------------------------------ events
    def _event(self, kind: str, now: float, detector: str | None, *, skip: str | None = None, **fields) -> None:
        event = ev.Event(kind, now, detector, **fields)
        self.events.record(event)
        for name, observe in self._observers:
            if name == skip:
                continue
            try:
                observe(event)
            except Exception as exc:
                self._detector_failed(name, exc, notify=False)

    def _detector_failed(self, name: str, exc: Exception, kind: str = ev.DETECTOR_ERROR,
                         notify: bool = True) -> None:
        """Count a detector's failure; log it at most once per 10 s per detector (with how
        many were suppressed) and tell observers, except the one that failed."""
        self.counters["detector_errors"] += 1
        self.counters[f"detector_errors.{name}"] += 1
        now = self.clock()
        last, suppressed = self._error_log.get(name, (None, 0))
        if last is None or now - last >= 10.0 or now < last:
            extra = f" (and {suppressed} more since)" if suppressed else ""
            ev.emit(log, logging.ERROR, kind, detector=name, error=f"{type(exc).__name__}: {exc}{extra}"[:300])
            self._error_log[name] = (now, 0)
            if notify:
                self._event(kind, now, name, skip=name, reason=f"{type(exc).__name__}: {exc}"[:200])
        else:
            self._error_log[name] = (last, suppressed + 1)

    # ------------------------------------------------------------------ reporting
    def all_counters(self) -> dict:
        counters = dict(self.counters)
        counters.update(accepted=self.n_accepted, dropped=self.n_dropped,
                        packets=self.n_accepted + self.n_dropped + counters.get("unparsed", 0))
        if self.kernel is not None:
            counters.update(self.kernel.counters())
        return counters

    def snapshot(self, limit: int = 1000, wall: float | None = None) -> dict:
        """Tables and counters for status; with ``wall`` (the wall-clock now), entries
        also say until when, as wall-clock seconds."""
        now = self.clock()
        peers, locks = self.peers.snapshot(now, limit), self.locks.snapshot(now, limit)
        if wall is not None:
            for e in peers + locks:
                e["until"] = round(wall + e["remaining"], 3)
        return {
            "uptime": round(now - self.started, 3),
            "monitor": self.monitor,
            "detectors": self.detectors.names(),
            "counters": self.all_counters(),
            "events": dict(self.events.counters),
            "drops_by_detector": dict(self.by_detector),
            "errors_by_detector": {k.split(".", 1)[1]: v for k, v in self.counters.items()
                                   if k.startswith("detector_errors.")},
            "peers": {"count": len(self.peers), "max": self.peers.max_entries, "entries": peers},
            "locks": {"count": len(self.locks), "max": self.locks.max_entries, "entries": locks},
        }
