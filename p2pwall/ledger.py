"""The ledger: the one owner of learned peers and time-locked clients.

Every change arrives as a :class:`~p2pwall.records.Record`, whatever made it: a
detector's accepted request (through :mod:`p2pwall.evidence`), an operator, the state
file, a crashed run's kernel sets, another gateway.  Each is checked the same way (never
the LAN, the allowlist, a protected address or a non-unicast one; never beyond a year),
written into the bounded tables (:mod:`p2pwall.tables`), and fanned out to the mirrors
(:mod:`p2pwall.mirrors`): the kernel sets, replay's model, the cluster publisher, or the
dry run of monitor mode.  Which kernel set an entry belongs to is decided here and
nowhere else (:meth:`Ledger.where`).  Expiry, eviction and reload purges are removals
the mirrors hear of too, so what they hold is what the ledger holds.

State changes are told through ``emit(kind, now, detector, **fields)`` (the engine
queues them as events, after the verdict); a lock placed or gone is told to
``on_lock(key, entry, now)`` / ``on_unlock(key)`` (the engine's probe schedule).
"""

from __future__ import annotations

from collections import Counter

from . import events as ev
from .kernelsets import valid_element
from .packet import ip_text
from .records import (BLOCK, CONFIG, EXPIRE, GATEWAY_PREFIX, LOCK, LOCKS, MAX_SECONDS, NAMED, NOLOCK, OPERATOR,
                      OWN, PAIR, PEERS, UNBLOCK, UNLOCK, Record)
from .tables import LockTable, PeerTable

OPERATOR_DETECTOR = "operator"  # the "detector" of entries an operator made by hand


class Ledger:
    def __init__(self, settings, clock, mirrors=(), counters: Counter | None = None):
        self.clock = clock
        self.peers = PeerTable(settings.peer_max)
        self.locks = LockTable(settings.lock_max)
        self.peers.on_evict = self._peer_evicted
        self.locks.on_evict = self._lock_evicted
        self.mirrors = list(mirrors)
        self.counters = Counter() if counters is None else counters
        self.emit = lambda kind, now, detector, **fields: None
        self.on_lock = lambda key, entry, now: None
        self.on_unlock = lambda key: None
        self.corroborate = settings.corroborate
        self.lock_seconds = settings.lock_seconds
        self.station = None  # address -> station (Neighbours.station): corroboration by stations
        self.remote: dict = {}  # gateway name -> AddressSet of the networks it serves (the cluster's)
        self._locking: dict[str, bool] = {}
        self.lan = self.allow = self.protected = frozenset()

    def configure(self, settings, locking: dict[str, bool], lan, allow, protected) -> None:
        """New settings (start, SIGHUP): bounds, corroboration, which detectors' peers lock,
        and the address sets no entry may concern.  Entries the new settings forbid go, in
        every mirror too; peers whose detector changed its ``locks`` move set."""
        old_locking = self._locking
        self._locking = {**locking, OPERATOR_DETECTOR: False}  # an operator's block locks nobody
        self.corroborate = settings.corroborate
        self.lock_seconds = settings.lock_seconds
        self.lan, self.allow, self.protected = lan, allow, protected
        self.peers.max_entries = settings.peer_max
        self.locks.max_entries = settings.lock_max
        if old_locking:
            self._purge(old_locking)

    def where(self, detector: str | None, locking: dict | None = None) -> str:
        """The kernel set a LAN-wide peer learned by ``detector`` belongs in."""
        return PEERS if (self._locking if locking is None else locking).get(detector, True) else NOLOCK

    def locks_for(self, detector: str | None) -> bool:
        """Whether a SYN to a peer ``detector`` learned locks its sender."""
        return self._locking.get(detector, True)

    # ------------------------------------------------------------------ mirrors
    def _add(self, where: str, record: Record) -> None:
        for mirror in self.mirrors:
            mirror.add(where, record)

    def _remove(self, where: str, record: Record) -> None:
        for mirror in self.mirrors:
            mirror.remove(where, record)

    def flush(self) -> None:
        for mirror in self.mirrors:
            mirror.flush()

    def mirror_counters(self) -> dict:
        out: dict = {}
        for mirror in self.mirrors:
            out.update(mirror.counters())
        return out

    def render(self, mirror) -> int:
        """Write every live entry into ``mirror`` (a kernel table made anew, a reload):
        what the ledger holds, placed as it would have been placed one by one."""
        now = self.clock()
        count = 0
        for key, left, entry in self.peers.full_entries(now):
            base = Record(BLOCK, key, None, left, entry.detector, entry.reason, entry.kind, entry.lanwide, entry.note)
            if entry.lanwide:
                mirror.add(self.where(entry.detector), base)
                count += 1
            else:
                for client in entry.clients:
                    mirror.add(PAIR, base.but(client=client))
                    count += 1
        for key, left, entry in self.locks.full_entries(now):
            mirror.add(LOCKS, Record(LOCK, key, None, left, entry.detector, entry.reason, note=entry.note))
            count += 1
        return count

    # ------------------------------------------------------------------ changes
    def apply(self, record: Record, quiet: bool = False, before: float | None = None) -> bool:
        """Apply one record (any op), checked like a live one.  ``before`` (this clock):
        for an unblock or unlock, what it cancels: evidence up to then; an entry learned
        or restarted after it stays (counted as ``unblock_superseded``)."""
        if record.op in (BLOCK, LOCK) and not 0 < record.seconds <= MAX_SECONDS:
            self.counters["block_refused" if record.op == BLOCK else "lock_refused"] += 1
            return False
        if record.op == BLOCK:
            return self.block(record, quiet=quiet)
        if record.op == LOCK:
            return self.lock(record, quiet=quiet)
        if record.op in (UNBLOCK, UNLOCK) and before is not None and self._newer(record, before):
            self.counters["unblock_superseded"] += 1
            return False
        if record.op == UNBLOCK:
            return self.unblock(record.address, record.reason, record.origin)
        if record.op == UNLOCK:
            return self.unlock(record.address, record.reason, record.origin)
        return False

    def _newer(self, record: Record, before: float) -> bool:
        """Whether the entry an unblock/unlock names was learned (a peer's latest
        evidence, to the second) or placed (a lock's latest start) after ``before``."""
        now = self.clock()
        if record.op == UNBLOCK:
            entry = self.peers.get(record.address, now)
            return entry is not None and entry.last_seen > before
        entry = self.locks.get(record.address, now)
        return entry is not None and entry.until - self.lock_seconds > before + 1e-3

    def restore(self, records) -> int:
        """Take back saved or leftover records, quietly; returns how many entries (peers
        and locks) came back."""
        taken = {(r.op, r.address) for r in records if self.apply(r, quiet=True)}
        return len(taken)

    def block(self, record: Record, now: float | None = None, quiet: bool = False) -> bool:
        """Record evidence against ``record.address`` and enforce what it earns: LAN-wide,
        or for ``record.client`` alone."""
        now = self.clock() if now is None else now
        key, client = record.address, record.client
        if key in self.protected or key in self.lan or not valid_element(key):
            self.counters["block_refused"] += 1
            return False
        remote = False
        if client is not None and (client not in self.lan or not valid_element(client)):
            # evidence concerns LAN clients only: this LAN's, or one another gateway of the
            # cluster serves (kept, so that clients behind two gateways corroborate)
            remote = valid_element(client) and self.gateway_of(client, record.origin) is not None
            if not remote:
                client = None
        if client is None and not record.lanwide:
            self.counters["block_refused"] += 1
            return False
        old = self.peers.get(key, now)
        entry, new, widened = self.peers.learn(key, now, record.seconds, record.detector, record.reason,
                                               record.note, record.kind, client, record.lanwide, self.corroborate,
                                               self.station)
        placed = Record(BLOCK, key, None, entry.until - now, entry.detector, entry.reason, entry.kind,
                        entry.lanwide, entry.note, record.origin)
        if entry.lanwide:
            where = self.where(entry.detector)
            if old is not None and old.lanwide and self.where(old.detector) != where:
                self._remove(self.where(old.detector), placed.but(op=EXPIRE))
            # with the client whose evidence this is (the kernel keys by address; the
            # cluster tells the others whose evidence it was)
            self._add(where, placed.but(client=client) if client is not None and not remote
                      else placed)
            if widened:  # the client-scoped entries it grew out of are covered now
                for c in entry.clients:
                    self._remove(PAIR, placed.but(op=EXPIRE, client=c))
        elif not remote:  # a client behind another gateway sends nothing through this one
            self._add(PAIR, placed.but(client=client, kind=record.kind))
        if not quiet and (new or widened):
            self.emit(ev.PEER_BLOCKED, now, record.detector, peer=ip_text(key), until=entry.until,
                      reason=record.reason, address=ip_text(client) if client and not entry.lanwide else None,
                      scope=placed.scope, evidence=entry.kind,
                      clients=sorted(ip_text(c) for c in entry.clients) if entry.lanwide and entry.clients else None)
        return True

    def lock(self, record: Record, now: float | None = None, quiet: bool = False, answered: bool = False) -> bool:
        """Time-lock LAN host ``record.address`` (or restart its lock)."""
        now = self.clock() if now is None else now
        key = record.address
        if key in self.allow or key not in self.lan or not valid_element(key):
            self.counters["lock_refused"] += 1
            return False
        entry, new = self.locks.put(key, now, record.seconds, record.detector, record.reason, record.note)
        self._add(LOCKS, Record(LOCK, key, None, entry.until - now, entry.detector, entry.reason,
                                note=entry.note, origin=record.origin))
        if not quiet:
            kind = ev.CLIENT_LOCKED if new else (ev.PROBE_ANSWERED if answered else ev.LOCK_RESTARTED)
            self.emit(kind, now, record.detector, address=ip_text(key), until=entry.until, reason=record.reason)
        self.on_lock(key, entry, now)
        return True

    def operator_block(self, key: bytes, seconds: float) -> bool:
        """``p2pwall block``: a peer blocked by hand, for every LAN host, locking nobody."""
        return self.block(Record(BLOCK, key, None, seconds, OPERATOR_DETECTOR, "blocked by an operator",
                                 OPERATOR, True))

    def unblock(self, key: bytes, why: str = "", origin: str = "") -> bool:
        """Take a peer out of the table and every mirror now."""
        entry = self.peers.remove(key)
        if entry is None:
            return False
        self._forget_peer(key, entry, UNBLOCK, why, origin)
        self.emit(ev.PEER_UNBLOCKED, self.clock(), entry.detector, peer=ip_text(key), reason=why)
        return True

    def unlock(self, key: bytes, why: str = "", origin: str = "") -> bool:
        """Free a locked client now (table, mirrors, probe schedule)."""
        entry = self.locks.remove(key)
        if entry is None:
            return False
        self._forget_lock(key, entry, UNLOCK, why, origin)
        self.emit(ev.LOCK_EXPIRED, self.clock(), entry.detector, address=ip_text(key), reason=why)
        return True

    def _forget_peer(self, key: bytes, entry, op: str = EXPIRE, why: str = "", origin: str = "") -> None:
        gone = Record(op, key, None, 0.0, entry.detector, why, entry.kind, entry.lanwide, origin=origin)
        if entry.lanwide:
            self._remove(self.where(entry.detector), gone)
        for client in entry.clients:
            self._remove(PAIR, gone.but(client=client))

    def _forget_lock(self, key: bytes, entry, op: str = EXPIRE, why: str = "", origin: str = "") -> None:
        self._remove(LOCKS, Record(op, key, None, 0.0, entry.detector, why, origin=origin))
        self.on_unlock(key)

    def _peer_evicted(self, key: bytes, entry) -> None:
        self.counters["peers_evicted"] += 1
        self._forget_peer(key, entry)

    def _lock_evicted(self, key: bytes, entry) -> None:
        self.counters["locks_evicted"] += 1
        self._forget_lock(key, entry)

    def expire(self, now: float) -> None:
        """Remove what is due, from the tables and the mirrors (traffic or not)."""
        for key, entry in self.peers.expire(now):
            self.counters["peers_expired"] += 1
            self._forget_peer(key, entry)
        for key, entry in self.locks.expire(now):
            self._forget_lock(key, entry)
            self.emit(ev.LOCK_EXPIRED, now, entry.detector, address=ip_text(key))

    def _purge(self, old_locking: dict[str, bool]) -> None:
        now = self.clock()
        for key, left, entry in list(self.peers.full_entries(now)):
            if key in self.protected or key in self.lan:
                self.unblock(key, why="no longer allowed by the configuration", origin=CONFIG)
            elif entry.lanwide and self.where(entry.detector) != self.where(entry.detector, old_locking):
                placed = Record(BLOCK, key, None, left, entry.detector, entry.reason, entry.kind, True,
                                entry.note, CONFIG)
                self._remove(self.where(entry.detector, old_locking), placed.but(op=EXPIRE))
                self._add(self.where(entry.detector), placed)
        for key, _, _, _ in list(self.locks.entries(now)):
            if key in self.allow or key not in self.lan:
                self.unlock(key, why="no longer allowed by the configuration", origin=CONFIG)
        for table in (self.peers, self.locks):
            for _ in range(max(0, len(table) - table.max_entries)):
                table.evict_one()

    # ------------------------------------------------------------------ reading
    def gateway_of(self, client: bytes, origin: str | None = None) -> str | None:
        """The other gateway that serves ``client`` (outside this LAN), by the networks
        each publishes; with ``origin`` (``gw:<name>``), only that one."""
        if client in self.lan:
            return None
        if origin is not None:
            name = origin[len(GATEWAY_PREFIX):] if origin.startswith(GATEWAY_PREFIX) else None
            nets = self.remote.get(name) if name else None
            return name if nets is not None and client in nets else None
        for name, nets in self.remote.items():
            if client in nets:
                return name
        return None

    def records(self, now: float | None = None):
        """Every live entry as the records that rebuild it (:meth:`restore` takes them
        back): a peer as one record per client it concerns, each with the evidence that
        client gave, the last one LAN-wide if the peer is; a lock as one record."""
        now = self.clock() if now is None else now
        for key, left, e in self.peers.full_entries(now):
            clients = e.clients or (None,)
            for i, client in enumerate(clients):
                own = bool(e.own >> i & 1)
                yield Record(BLOCK, key, client, left, e.detector, e.reason,
                             e.kind if own or e.kind != OWN else NAMED, e.lanwide and i == len(clients) - 1, e.note)
        for key, left, e in self.locks.full_entries(now):
            yield Record(LOCK, key, None, left, e.detector, e.reason, note=e.note)

    def live_entries(self) -> dict[str, list[tuple[bytes, float]]]:
        """Kernel set kind -> [(address, seconds left)] of the LAN-wide sets, for
        rebuilding kernel sets."""
        now = self.clock()
        out: dict[str, list] = {PEERS: [], NOLOCK: [], LOCKS: []}
        for key, left, entry in self.peers.full_entries(now):
            if entry.lanwide:
                out[self.where(entry.detector)].append((key, left))
        out[LOCKS] = [(key, left) for key, left, _, _ in self.locks.entries(now)]
        return out

    def __len__(self) -> int:
        return len(self.peers) + len(self.locks)
