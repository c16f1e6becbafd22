"""The engine: one packet's whole way from parse to verdict, and the timers.

    parse -> direction -> core tables -> detectors -> merge actions -> verdict
    after the verdicts (``flush``): mirror writes, spoofs and probes, then events
    timers: expire tables, probe locked clients

The engine knows no protocol; detectors (``p2pwall_inspect``) recognise, the engine
decides, and the ledger (:mod:`p2pwall.ledger`) records and enforces through its mirrors.
It has no I/O of its own: a source feeds it, a sender (optional) transmits spoofs and
probes, and the clock is injected (replay uses capture times).  Nothing but the verdict
runs on the verdict path: events, their log lines and the ``p2pwall_event`` observers
wait in an outbox until ``flush``.

Why one module past 400 lines: ``handle`` is kept as one readable hot path, and what
it starts (the actions, their sends after the verdict, the probes) is read with it; the
tables, the ledger, evidence, events, the probe schedule (:mod:`p2pwall.probes`) and the
contract types live elsewhere.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from . import events as ev
from . import actions as act
from .actions import Block, Drop, Lock, Probe, Report, Spoof
from .addresses import AddressSet
from .contract import ACCEPTED, UNPARSED, Context, Verdict, address_key as _key
from .config import Settings
from .evidence import Evidence, Refused, nameservers
from .kernelsets import valid_element
from .ledger import Ledger
from .mirrors import KernelMirror
from .packet import FROM_LAN, TCP, TO_FIREWALL, TO_LAN, UDP, UNKNOWN, Packet, ip_text, parse
from .plugins import KINDS, UDP_SERVICE_PORTS, DetectorSet
from .probes import ProbeSchedule
from .records import BLOCK, LOCK, OWN, PAIR, Record, from_kernel
from .streams import Streams

_UDP_SERVICES = frozenset(UDP_SERVICE_PORTS)  # what the UDP lock leaves a client
log = logging.getLogger("p2pwall.engine")

# netfilter hook numbers as NetfilterQueue reports them
HOOK_LOCAL_IN = 1
HOOK_FORWARD = 2


class Engine:
    """Applies the tables and detectors to packets; owns the tables and the timers."""

    def __init__(self, settings: Settings, detectors: DetectorSet, clock=time.monotonic,
                 sender=None, monitor: bool = False, keep_events: int = 0, kernel=None, mirrors=(),
                 observer_thread=None):
        """``mirrors`` receive the ledger's changes (:mod:`p2pwall.mirrors`); ``kernel``, a
        set writer (KernelSets, replay's model), is one more, wrapped in a KernelMirror.
        ``monitor``: every verdict is accept (what would have been dropped is counted as
        ``would_drop``); give it a DryRun mirror and no kernel.  ``observer_thread`` (an
        :class:`p2pwall.observers.ObserverThread`): observers run there, not in line."""
        self.clock = clock
        self.sender = sender
        self.monitor = monitor
        self.counters: Counter[str] = Counter()
        mirrors = list(mirrors) + ([KernelMirror(kernel)] if kernel is not None else [])
        self.ledger = Ledger(settings, clock, mirrors, self.counters)
        self.ledger.emit = self._event
        self.ledger.on_lock = self._locked
        self.ledger.on_unlock = self._unlocked
        self.evidence = Evidence()
        self.streams = Streams()  # TCP openings sent in short segments, joined (rules.py queues them)
        self.onlink = None  # AddressSet of the LAN interfaces' own networks (the daemon sets it)
        self.events = ev.EventLog(keep=keep_events, mark={"monitor": True} if monitor else None)
        # events tell wall-clock times; the live clock is monotonic (replay's and tests' are their own)
        self._wall_offset = time.time() - time.monotonic() if clock is time.monotonic else 0.0
        self._pending_events: list[tuple[ev.Event, str | None]] = []
        self.observer_thread = observer_thread
        self.n_accepted = self.n_dropped = 0  # the hot counters, kept out of the Counter
        self.by_detector: Counter[str] = Counter()
        self.context = Context(self)
        self.outbox: list = []
        self.probes = ProbeSchedule()
        self._error_log: dict[str, tuple[float, int]] = {}
        self.reconfigure(settings, detectors)
        self.started = clock()

    @property
    def peers(self):
        return self.ledger.peers

    @property
    def locks(self):
        return self.ledger.locks

    def reconfigure(self, settings: Settings, detectors: DetectorSet) -> None:
        """Take new settings and detectors (SIGHUP), keeping tables and counters; entries
        the new settings forbid (now allowlisted, now inside the LAN, over a smaller
        bound) go, in the kernel too, and peers whose detector changed its ``locks``
        move to the matching kernel set."""
        self.settings = settings
        self.detectors = detectors
        self._first_bit = settings.first_mark
        self._second_bit = settings.first_mark << 3  # rules.py: the payload after a shape-sized first one
        self.lan = AddressSet(settings.lan_networks)
        self.allow = AddressSet(settings.allow)
        self._no_allow = not settings.allow
        self.protected = AddressSet(list(settings.allow) + list(settings.protect)
                                    + nameservers(settings.resolv_conf))
        self._udp_screen = detectors.udp_screen()
        self._udp_lockers = detectors.udp_locking()  # their locked clients lose their UDP too
        self._answered = tuple(detectors.udp_answered())  # still shown to detectors when to a blocked peer
        # each detector sees only what its own declarations select: its udp_screen, its
        # TCP strings, prefixes and first-payload sizes (the kernel queues their union)
        udp = detectors.udp_screens()
        tcp = {"tcp_payload": detectors.tcp_screens("tcp_payload"),
               "tcp_payload_in": detectors.tcp_screens("tcp_payload_in")}
        self._dispatch = {kind: [(name, fn, udp.get(name) if kind.startswith("udp") else None,
                                  tcp[kind].get(name) if kind in tcp else None)
                                 for name, fn in detectors.impls("p2pwall_inspect", kind)] for kind in KINDS}
        self._probe_makers = dict(detectors.impls("p2pwall_make_probe"))
        self._observers = detectors.impls("p2pwall_event")
        if self.observer_thread is not None:
            self.observer_thread.observers = list(self._observers)
        self.ledger.configure(settings, detectors.locking(), self.lan, self.allow, self.protected)

    def restore_kernel(self, found: dict) -> int:
        """Take back what a crashed run left in the kernel sets (``KernelSets.leftovers``):
        the remaining time, and the detector, evidence and reason kept in each element's
        comment.  Every entry is checked as a live one."""
        records = []
        for where, rows in found.items():
            for row in rows:
                try:
                    if where == "pairs":
                        client, peer, left, tag = row
                        records.append(from_kernel(PAIR, peer, left, tag, client))
                    else:
                        text, left, tag = row
                        records.append(from_kernel(where, text, left, tag))
                except (ValueError, TypeError):
                    continue
        return self.ledger.restore(records)

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
            if (screen(raw, 28, end if end <= len(raw) else len(raw)) is None and raw[16:20] not in self.peers
                    and not (self._udp_lockers and raw[12:16] in self.locks)):
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
                if syn and self.ledger.locks_for(peer.detector):
                    neighbours = self.evidence.neighbours
                    if neighbours is None or neighbours.genuine(packet.src, packet.mac):
                        self.ledger.lock(Record(LOCK, packet.src, None, self.settings.lock_seconds, peer.detector,
                                                "SYN to blocked peer", note=peer.note), now)
                    else:
                        self.counters["evidence_refused.spoofed_neighbour"] += 1
            elif syn:
                locked = self.locks.get(packet.src, now)
                if locked is not None:
                    drop, fired, reason = True, locked.detector, "client locked"
            elif proto == UDP and self._udp_lockers and direction == FROM_LAN and packet.dport not in _UDP_SERVICES:
                locked = self.locks.get(packet.src, now)  # its UDP transport goes with its TCP
                if locked is not None and locked.detector in self._udp_lockers:
                    drop, fired, reason = True, locked.detector, "client locked"

        incoming = direction == TO_LAN
        if to_peer:
            # nothing left to learn (the kernel sets drop these before the queue), but a
            # request a detector answers even to a known peer (udp_answered: a ping's pong)
            answered = self._answered
            kind = ("udp" if answered and proto == UDP and direction == FROM_LAN
                    and bytes(packet.payload[:4]).startswith(answered) else None)
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
                    mark = source.get_mark()
                    packet.first = bool(mark & self._first_bit)
                    packet.second = bool(mark & self._second_bit)
                if packet.first or self.streams.active:  # a stream's start however segmented
                    packet = self.streams.feed(packet, now)
            else:
                kind = None
        else:
            kind = None
        if kind is not None:
            for name, inspect, own_screen, tcp_screen in self._dispatch[kind]:
                if own_screen is not None and own_screen(packet.raw, packet.off, packet.end) is None:
                    continue
                if tcp_screen is not None and not tcp_screen(packet.data, packet.first, packet.second):
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
            if fired:
                self.by_detector[fired] += 1
            if self.monitor:  # a dry run: what would have been dropped is counted, not dropped
                self.counters["would_drop"] += 1
                self.n_accepted += 1
                return Verdict(False, fired, reason)
            self.n_dropped += 1
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
            record = Record(BLOCK, key, client, action.seconds or self.settings.peer_seconds, name,
                            action.reason, kind, lanwide, action.note)
            if self.ledger.block(record, now) and kind == OWN:
                self.evidence.recognised(packet, name, acted=True)  # its replies may teach, on this flow only
        elif isinstance(action, Lock):
            key = self._address(action.client, name, action, now)
            if key is None:
                return False
            try:
                self.evidence.lock(packet, key, now, name)
            except Refused as exc:
                self.counters[f"evidence_refused.{exc.why}"] += 1
                return False
            self.ledger.lock(Record(LOCK, key, None, action.seconds or self.settings.lock_seconds, name,
                                    action.reason, note=action.note), now, answered=packet.direction == TO_FIREWALL)
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

    # ------------------------------------------------------------------ locks
    def _locked(self, key: bytes, entry, now: float) -> None:
        """The ledger placed or restarted a lock: probes at half of what is left."""
        if self.settings.probes_per_lock and entry.detector in self._probe_makers:
            self.probes.schedule(key, now + (entry.until - now) / 2, 0)

    def _unlocked(self, key: bytes) -> None:
        self.probes.cancel(key)
        self.evidence.forget(key)

    # ------------------------------------------------------------------ timers
    def tick(self, now: float | None = None) -> None:
        """Expire what is due and send due probes; called by the loop, traffic or not."""
        now = self.clock() if now is None else now
        self.context.now = now
        self.ledger.expire(now)
        self.streams.expire(now)
        for key, sent in self.probes.due(now):
            entry = self.locks.get(key, now)
            if entry is not None:
                self._probe(key, entry, now, sent)

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
        sent += 1
        if sent < self.settings.probes_per_lock and probe is not None:
            self.probes.schedule(key, now + (entry.until - now) / 2, sent)

    def next_timer(self, now: float | None = None) -> float | None:
        """Seconds until the next timer is due (None: nothing scheduled)."""
        now = self.clock() if now is None else now
        times = [t for t in (self.peers.next_expiry(), self.locks.next_expiry(), self.probes.next_due())
                 if t is not None]
        return max(0.0, min(times) - now) if times else None

    # ------------------------------------------------------------------ side effects
    def flush(self) -> None:
        """Write the mirrors' updates, send the spoofs and probes requested since the last
        flush, then tell the events: side effects, after the verdicts.  Nothing here may
        raise."""
        try:
            self.ledger.flush()
        except Exception as exc:  # ipset gone, a broken pipe: count, keep filtering
            self.counters["kernel_set_errors"] += 1
            ev.emit(log, logging.ERROR, "kernel_set_error", error=str(exc))
        if self.outbox:
            outbox, self.outbox = self.outbox, []
            now = self.clock()
            for name, action in outbox:
                try:
                    self._send(name, action, now)
                except Exception as exc:  # a malformed action that slipped through: its detector's fault
                    self._detector_failed(name, exc)
        self.drain_events()

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
        if self.sender is None:
            self.counters[kind] += 1
            return
        try:
            sent = self.sender.send(action, key)
        except OSError as exc:
            self.counters["send_failed"] += 1
            ev.emit(log, logging.WARNING, "send_failed", detector=name, address=ip_text(key), error=str(exc))
            return
        if sent is None:  # a dry run's sender (monitor mode): nothing left the gateway
            self.counters["would_send"] += 1
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
        """Queue an event; it is counted, logged and observed by ``drain_events``."""
        if fields.get("until") is not None:
            fields["until"] = round(fields["until"] + self._wall_offset, 3)
        fields.setdefault("wall", round(now + self._wall_offset, 3))
        self._pending_events.append((ev.Event(kind, now, detector, **fields), skip))

    def drain_events(self) -> None:
        """Count, log and hand to the observers the events queued since the last drain
        (after the verdicts; replay drains after each packet so their order stays)."""
        while self._pending_events:
            pending, self._pending_events = self._pending_events, []
            thread = self.observer_thread
            for event, skip in pending:
                self.events.record(event)
                if thread is not None:
                    thread.submit(event, skip)
                    continue
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
        if self.streams.joined:
            counters["tcp_segments_joined"] = self.streams.joined
        counters.update(accepted=self.n_accepted, dropped=self.n_dropped,
                        packets=self.n_accepted + self.n_dropped + counters.get("unparsed", 0))
        counters.update(self.ledger.mirror_counters())
        if self.observer_thread is not None:
            for key, value in self.observer_thread.counters.items():
                counters[key] = counters.get(key, 0) + value
        return counters

    def snapshot(self, limit: int = 1000, wall: float | None = None) -> dict:
        """Tables and counters for status; with ``wall`` (the wall-clock now), entries
        also say until when, as wall-clock seconds."""
        now = self.clock()
        peers, locks = self.peers.snapshot(now, limit), self.locks.snapshot(now, limit)
        counters = self.all_counters()
        if wall is not None:
            for e in peers + locks:
                e["until"] = round(wall + e["remaining"], 3)
        return {
            "uptime": round(now - self.started, 3),
            "monitor": self.monitor,
            "detectors": self.detectors.names(),
            "counters": counters,
            "events": dict(self.events.counters),
            "drops_by_detector": dict(self.by_detector),
            "errors_by_detector": {k.split(".", 1)[1]: v for k, v in counters.items()
                                   if k.startswith("detector_errors.")},
            "peers": {"count": len(self.peers), "max": self.peers.max_entries, "entries": peers},
            "locks": {"count": len(self.locks), "max": self.locks.max_entries, "entries": locks},
        }
