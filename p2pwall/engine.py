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

from . import events as ev
from .actions import Block, Drop, Lock, Probe, Spoof
from .config import Settings
from .packet import FROM_LAN, TCP, TO_FIREWALL, TO_LAN, UDP, UNKNOWN, Packet, ip_bytes, ip_text, parse
from .plugins import KINDS, DetectorSet
from .tables import LockTable, PeerTable

log = logging.getLogger("p2pwall.engine")

# netfilter hook numbers as NetfilterQueue reports them
HOOK_LOCAL_IN = 1
HOOK_FORWARD = 2

ACCEPT = False
DROP = True


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


class Context:
    """What a detector may ask of the engine while inspecting (read only)."""

    __slots__ = ("_engine", "now")

    def __init__(self, engine: Engine):
        self._engine = engine
        self.now = 0.0

    def is_blocked(self, addr) -> bool:
        return self._engine.peers.live(_key(addr), self.now)

    def is_locked(self, addr) -> bool:
        return self._engine.locks.live(_key(addr), self.now)

    def in_lan(self, addr) -> bool:
        return _key(addr) in self._engine.lan

    @property
    def settings(self) -> Settings:
        return self._engine.settings


def _unicast(key: bytes) -> bool:
    """Only ordinary unicast addresses can be peers (not multicast, broadcast, 0/8, loopback)."""
    if len(key) == 4:
        return 0 < key[0] < 224 and key[0] != 127 and key != b"\xff\xff\xff\xff"
    return key[0] != 0xFF and key != bytes(15) + b"\x01" and any(key)


def _key(addr) -> bytes:
    if isinstance(addr, bytes) and len(addr) in (4, 16):
        return addr
    return ip_bytes(addr)


class Engine:
    """Applies the tables and detectors to packets; owns the tables and the timers."""

    def __init__(self, settings: Settings, detectors: DetectorSet, clock=time.monotonic,
                 sender=None, monitor: bool = False, keep_events: int = 0, kernel=None):
        self.settings = settings
        self.detectors = detectors
        self.clock = clock
        self.sender = sender
        self.kernel = kernel  # KernelSets, or None (replay, tests)
        self.monitor = monitor
        self.peers = PeerTable(settings.peer_max)
        self.locks = LockTable(settings.lock_max)
        self.events = ev.EventLog(keep=keep_events)
        self.counters: Counter[str] = Counter()
        self.n_accepted = self.n_dropped = 0  # the hot counters, kept out of the Counter
        self.by_detector: Counter[str] = Counter()
        self.context = Context(self)
        self.outbox: list = []
        self.reconfigure(settings, detectors)
        self._probe_heap: list[tuple[float, bytes]] = []
        self._probe_due: dict[bytes, tuple[float, int]] = {}
        self._error_log: dict[str, tuple[float, int]] = {}
        self.started = clock()

    def reconfigure(self, settings: Settings, detectors: DetectorSet) -> None:
        """Take new settings and detectors (SIGHUP), keeping tables and counters."""
        self.settings = settings
        self.detectors = detectors
        self.lan = AddressSet(settings.lan_networks)
        self.allow = AddressSet(settings.allow)
        self._no_allow = not settings.allow
        self._udp_screen = detectors.udp_screen()
        self.peers.max_entries = settings.peer_max
        self.locks.max_entries = settings.lock_max
        screens = detectors.udp_screens()
        self._dispatch = {kind: [(name, fn, screens.get(name) if kind.startswith("udp") else None)
                                 for name, fn in detectors.impls("p2pwall_inspect", kind)] for kind in KINDS}
        self._locking = detectors.locking()
        self._probe_makers = dict(detectors.impls("p2pwall_make_probe"))
        self._observers = detectors.impls("p2pwall_event")

    def restore(self, saved: dict) -> int:
        """Put back peers and locks saved by a previous run (see state.py)."""
        now = self.clock()
        count = 0
        for kind, table in (("peers", self.peers), ("locks", self.locks)):
            for key, left, detector, reason in saved.get(kind, []):
                if key in self.allow:
                    continue
                table.put(key, now, left, detector, reason)
                if self.kernel is not None:
                    self.kernel.add(kind, key, left)
                count += 1
        return count

    # ------------------------------------------------------------------ packets
    def process_raw(self, raw: bytes, hook: int | None = None, from_lan_if: bool | None = None):
        """Parse and judge one queued packet; returns (drop, detector, reason)."""
        packet = parse(raw)
        if packet is None:
            self.counters["unparsed"] += 1
            return ACCEPT, None, "unparsed"
        packet.direction = self.direction(packet, hook, from_lan_if)
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

    def handle(self, packet: Packet):
        """Judge a parsed packet whose ``direction`` is set; returns (drop, detector, reason).

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
            if peer is not None:
                drop, fired, reason, to_peer = True, peer.detector, "peer blocked", True
                if syn and self._locking.get(peer.detector, True):
                    self._lock(packet.src, None, peer.detector, "SYN to blocked peer", now)
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
            else:
                kind = None
        else:
            kind = None
        if kind is not None:
            for name, inspect, own_screen in self._dispatch[kind]:
                if own_screen is not None and own_screen(packet.raw, packet.off, packet.end) is None:
                    continue
                try:
                    wanted = inspect(packet, self.context)
                except Exception as exc:  # a detector's bug never costs the verdict
                    self._detector_failed(name, exc)
                    continue
                if not wanted:
                    continue
                if not isinstance(wanted, (list, tuple)):
                    wanted = (wanted,)
                for action in wanted:
                    if self._apply(action, name, packet, now):
                        if not drop or fired is None:
                            fired = name
                            reason = getattr(action, "reason", "") or reason
                        drop = True
                    elif fired is None and isinstance(action, (Block, Lock)):
                        fired, reason = name, action.reason
        if drop:
            self.n_dropped += 1
            if fired:
                self.by_detector[fired] += 1
            if self.monitor:
                self.counters["would_drop"] += 1
                return ACCEPT, fired, reason
            return DROP, fired, reason
        self.n_accepted += 1
        return ACCEPT, fired, reason

    def _apply(self, action, name: str, packet: Packet, now: float) -> bool:
        """Carry out one requested action; True when it asks for the packet's drop."""
        if isinstance(action, Drop):
            return True
        if isinstance(action, Block):
            self._block(action.peer, action.seconds, name, action.reason, now)
        elif isinstance(action, Lock):
            self._lock(action.client, action.seconds, name, action.reason, now,
                       answered=packet.direction == TO_FIREWALL)
        elif isinstance(action, (Spoof, Probe)):
            self.outbox.append((name, action))
        else:
            self._detector_failed(name, TypeError(f"not an action: {action!r}"))
        return False

    def _block(self, peer, seconds, name, reason, now) -> None:
        try:
            key = _key(peer)
        except ValueError:
            self._detector_failed(name, ValueError(f"Block of a bad address {peer!r}"))
            return
        if key in self.allow or key in self.lan or not _unicast(key):
            self.counters["block_refused"] += 1
            return
        entry, new = self.peers.put(key, now, seconds or self.settings.peer_seconds, name, reason)
        if self.kernel is not None and not self.monitor:
            self.kernel.add("peers", key, entry.until - now)
        if new:
            self._event(ev.PEER_BLOCKED, now, name, peer=ip_text(key), until=entry.until, reason=reason)

    def _lock(self, client, seconds, name, reason, now, answered: bool = False) -> None:
        try:
            key = _key(client)
        except ValueError:
            self._detector_failed(name, ValueError(f"Lock of a bad address {client!r}"))
            return
        if key in self.allow:
            self.counters["lock_refused"] += 1
            return
        seconds = seconds or self.settings.lock_seconds
        entry, new = self.locks.put(key, now, seconds, name, reason)
        if self.kernel is not None and not self.monitor:
            self.kernel.add("locks", key, entry.until - now)
        kind = ev.CLIENT_LOCKED if new else (ev.PROBE_ANSWERED if answered else ev.LOCK_RESTARTED)
        self._event(kind, now, name, address=ip_text(key), until=entry.until, reason=reason)
        if self.settings.probes_per_lock and name in self._probe_makers:
            due = now + (entry.until - now) / 2
            self._probe_due[key] = (due, 0)
            heapq.heappush(self._probe_heap, (due, key))

    # ------------------------------------------------------------------ timers
    def tick(self, now: float | None = None) -> None:
        """Expire what is due and send due probes; called by the loop, traffic or not."""
        now = self.clock() if now is None else now
        self.context.now = now
        for key, entry in self.peers.expire(now):
            self.counters["peers_expired"] += 1
        for key, entry in self.locks.expire(now):
            self._probe_due.pop(key, None)
            self._event(ev.LOCK_EXPIRED, now, entry.detector, address=ip_text(key))
        heap = self._probe_heap
        while heap and heap[0][0] <= now:
            due, key = heapq.heappop(heap)
            scheduled = self._probe_due.get(key)
            if scheduled is None or scheduled[0] != due:
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
                probe = maker(key, self.context)
            except Exception as exc:
                self._detector_failed(entry.detector, exc)
        if isinstance(probe, Probe):
            self.outbox.append((entry.detector, probe))
        sent += 1
        if sent < self.settings.probes_per_lock and probe is not None:
            due = now + (entry.until - now) / 2
            self._probe_due[key] = (due, sent)
            heapq.heappush(self._probe_heap, (due, key))
        else:
            self._probe_due.pop(key, None)

    def next_timer(self, now: float | None = None) -> float | None:
        """Seconds until the next timer is due (None: nothing scheduled)."""
        now = self.clock() if now is None else now
        times = [t for t in (self.peers.next_expiry(), self.locks.next_expiry()) if t is not None]
        while self._probe_heap:
            due, key = self._probe_heap[0]
            if self._probe_due.get(key, (None,))[0] == due:
                times.append(due)
                break
            heapq.heappop(self._probe_heap)
        return max(0.0, min(times) - now) if times else None

    # ------------------------------------------------------------------ side effects
    def flush(self) -> None:
        """Write kernel set updates and send the spoofs and probes requested since the
        last flush: side effects, after the verdicts."""
        if self.kernel is not None:
            self.kernel.flush()
        if not self.outbox:
            return
        outbox, self.outbox = self.outbox, []
        now = self.clock()
        for name, action in outbox:
            dst = action.dst if isinstance(action, Spoof) else action.client
            try:
                key = _key(dst)
            except ValueError:
                self._detector_failed(name, ValueError(f"send to a bad address {dst!r}"))
                continue
            if key not in self.lan:  # never outward, whatever a detector asks
                self.counters["send_refused"] += 1
                self._event(ev.SEND_REFUSED, now, name, address=ip_text(key), reason="not in LAN")
                continue
            kind = ev.SPOOF_SENT if isinstance(action, Spoof) else ev.PROBE_SENT
            if self.monitor:
                self.counters["would_send"] += 1
                continue
            if self.sender is None:
                self.counters[kind] += 1
                continue
            try:
                sent = self.sender.send(action, key)
            except OSError as exc:
                self.counters["send_failed"] += 1
                log.warning("event=send_failed detector=%s address=%s error=%s", name, ip_text(key), exc)
                continue
            if sent:
                if kind == ev.PROBE_SENT:
                    self._event(kind, now, name, address=ip_text(key), reason=action.reason)
                else:
                    self.counters[kind] += 1
            else:
                self.counters["send_rate_limited"] += 1

    # ------------------------------------------------------------------ events
    def _event(self, kind: str, now: float, detector: str | None, **fields) -> None:
        event = ev.Event(kind, now, detector, **fields)
        self.events.record(event)
        for name, observe in self._observers:
            try:
                observe(event)
            except Exception as exc:
                self._detector_failed(name, exc)

    def _detector_failed(self, name: str, exc: Exception) -> None:
        self.counters["detector_errors"] += 1
        self.counters[f"detector_errors.{name}"] += 1
        now = time.monotonic()
        last, suppressed = self._error_log.get(name, (0.0, 0))
        if now - last >= 10.0:
            extra = f" (and {suppressed} more since)" if suppressed else ""
            log.error("event=detector_error detector=%s error=%s: %s%s", name,
                      type(exc).__name__, exc, extra)
            self._error_log[name] = (now, 0)
        else:
            self._error_log[name] = (last, suppressed + 1)

    # ------------------------------------------------------------------ reporting
    def all_counters(self) -> dict:
        counters = dict(self.counters)
        counters.update(accepted=self.n_accepted, dropped=self.n_dropped,
                        packets=self.n_accepted + self.n_dropped + counters.get("unparsed", 0))
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
