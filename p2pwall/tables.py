"""Peer and lock tables: bounded maps from address to an expiring entry.

Each entry carries its own expiry; ``expire(now)`` removes what is due without any
traffic having to arrive (the engine's scheduler calls it), and lookups ignore entries
that are already past their time.  When a table is full the entry due to expire first
goes (with one lifetime per table, that is the one refreshed longest ago).

Built for a million entries, evidence included, in well under 200 MB: an entry is one
dict slot mapping the packed address to a single int holding, from the low bits up, the
index of its interned (detector, reason, kind) triple, its expiry in milliseconds, and
(peers only) its evidence: first and last seen, scope, and the LAN clients it concerns.
Expiry works through quarter-second buckets instead of a heap of tuples.
"""

from __future__ import annotations

import heapq
from itertools import islice

from .packet import ip_text
from .records import OWN, rank as _rank

_META_BITS = 12
_META_MASK = (1 << _META_BITS) - 1
_UNTIL_BITS = 42  # milliseconds: 139 years of any clock the engine is given
_UNTIL_MASK = (1 << _UNTIL_BITS) - 1
_SHIFT = _META_BITS + _UNTIL_BITS
_BUCKET_MS = 250

MAX_CLIENTS = 4  # LAN clients remembered per peer: enough for any corroboration setting


class Entry:
    """One address in a table, as lookups return it: until when, who, why, on what."""

    __slots__ = ("until", "detector", "reason", "note", "kind", "lanwide", "clients", "own",
                 "first_seen", "last_seen")

    def __init__(self, until: float, detector: str, reason: str, note: bytes | None = None,
                 kind: str = OWN, lanwide: bool = True, clients=(), own: int = 0,
                 first_seen: float = 0.0, last_seen: float = 0.0):
        self.until, self.detector, self.reason, self.note = until, detector, reason, note
        self.kind, self.lanwide, self.clients, self.own = kind, lanwide, tuple(clients), own
        self.first_seen, self.last_seen = first_seen, last_seen

    def blocks(self, client: bytes) -> bool:
        """Whether this entry blocks ``client`` (LAN-wide, or a client it concerns)."""
        return self.lanwide or client in self.clients

    def own_clients(self) -> list[bytes]:
        return [c for i, c in enumerate(self.clients) if self.own >> i & 1]

    def __repr__(self) -> str:
        return (f"Entry(until={self.until}, detector={self.detector!r}, reason={self.reason!r}, "
                f"kind={self.kind}, lanwide={self.lanwide}, clients={[ip_text(c) for c in self.clients]})")


def _bucket(until_ms: int) -> int:
    return -(-until_ms // _BUCKET_MS)  # the first bucket boundary at or after the expiry


# evidence bits (peers), above the expiry: first seen (32 bits of seconds), last seen
# (32), LAN-wide (1), how many clients (3), which of them gave their own packet (4),
# then the clients' addresses, 32 or 128 bits each
def _pack_evidence(first: int, last: int, lanwide: bool, clients, own: int) -> int:
    width = 32 if not clients or len(clients[0]) == 4 else 128
    extra = 0
    for i, c in enumerate(clients):
        extra |= int.from_bytes(c, "big") << (width * i)
    extra = (extra << 4 | own) << 3 | len(clients)
    return ((extra << 1 | lanwide) << 32 | (last & 0xFFFFFFFF)) << 32 | (first & 0xFFFFFFFF)


def _unpack_evidence(extra: int, key_len: int):
    first, extra = extra & 0xFFFFFFFF, extra >> 32
    last, extra = extra & 0xFFFFFFFF, extra >> 32
    lanwide, extra = bool(extra & 1), extra >> 1
    n, extra = extra & 7, extra >> 3
    own, extra = extra & 15, extra >> 4
    width = 32 if key_len == 4 else 128
    mask = (1 << width) - 1
    clients = tuple(((extra >> (width * i)) & mask).to_bytes(width // 8, "big") for i in range(n))
    return first, last, lanwide, clients, own


class ExpiringTable:
    """Bounded address -> expiring entry map."""

    evidence = False  # peers keep evidence; locks do not

    def __init__(self, max_entries: int):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._values: dict[bytes, int] = {}  # key -> evidence << 54 | until_ms << 12 | meta id
        self._metas: list[tuple[str, str, str]] = [("", "", OWN)]
        self._meta_ids: dict[tuple[str, str, str], int] = {("", "", OWN): 0}
        self._buckets: dict[int, list[bytes]] = {}
        self._bucket_heap: list[int] = []
        self._notes: dict[bytes, bytes] = {}  # what a detector keeps with an entry (few have one)
        self.evicted = 0
        self.on_evict = None  # called with each evicted key (the kernel mirror deletes it)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: bytes) -> bool:  # ignores expiry; see get()
        return key in self._values

    def _meta(self, detector: str, reason: str, kind: str) -> int:
        triple = (detector, reason, kind)
        found = self._meta_ids.get(triple)
        if found is None:
            if len(self._metas) > _META_MASK:  # reasons are meant to be a few constants
                return self._meta(detector, "", kind)
            found = len(self._metas)
            self._metas.append(triple)
            self._meta_ids[triple] = found
        return found

    def _entry(self, value: int, key: bytes) -> Entry:
        detector, reason, kind = self._metas[value & _META_MASK]
        until = ((value >> _META_BITS) & _UNTIL_MASK) / 1000.0
        if not self.evidence:
            return Entry(until, detector, reason, self._notes.get(key), kind)
        first, last, lanwide, clients, own = _unpack_evidence(value >> _SHIFT, len(key))
        return Entry(until, detector, reason, self._notes.get(key), kind, lanwide, clients, own,
                     float(first), float(last))

    def get(self, key: bytes, now: float) -> Entry | None:
        """The live entry for ``key``, or None if absent or past its expiry."""
        value = self._values.get(key)
        if value is None or ((value >> _META_BITS) & _UNTIL_MASK) <= now * 1000.0:
            return None
        return self._entry(value, key)

    def note(self, key: bytes) -> bytes | None:
        return self._notes.get(key)

    def live(self, key: bytes, now: float) -> bool:
        """Whether ``key`` has a live entry (get() without building the entry)."""
        value = self._values.get(key)
        return value is not None and ((value >> _META_BITS) & _UNTIL_MASK) > now * 1000.0

    def put(self, key: bytes, now: float, seconds: float, detector: str, reason: str,
            note: bytes | None = None, extra: int = 0, kind: str = OWN) -> tuple[Entry, bool]:
        """Add or restart ``key`` for ``seconds``; returns (entry, is_new).  A restart
        keeps the entry's note and reason unless new ones are given."""
        until_ms = int((now + seconds) * 1000.0)
        old = self._values.get(key)
        new = old is None or ((old >> _META_BITS) & _UNTIL_MASK) <= now * 1000.0
        if not new:
            until_ms = max(until_ms, (old >> _META_BITS) & _UNTIL_MASK)
            if not reason:
                reason = self._metas[old & _META_MASK][1]
        elif old is None and len(self._values) >= self.max_entries:
            self.evict_one()
        value = (extra << _UNTIL_BITS | until_ms) << _META_BITS | self._meta(detector, reason, kind)
        self._values[key] = value
        if note is not None:
            self._notes[key] = note
        elif new and self._notes:
            self._notes.pop(key, None)
        bucket = _bucket(until_ms)
        if old is None or _bucket((old >> _META_BITS) & _UNTIL_MASK) != bucket:
            members = self._buckets.get(bucket)
            if members is None:
                self._buckets[bucket] = [key]
                heapq.heappush(self._bucket_heap, bucket)
            else:
                members.append(key)
        return self._entry(value, key), new

    def evict_one(self) -> None:
        """Drop the entry due to expire first (stale bucket members are skipped)."""
        while self._bucket_heap:
            bucket = self._bucket_heap[0]
            members = self._buckets[bucket]
            while members:
                key = members.pop()
                value = self._values.get(key)
                if value is not None and _bucket((value >> _META_BITS) & _UNTIL_MASK) == bucket:
                    entry = self._entry(value, key) if self.on_evict is not None else None
                    del self._values[key]
                    self._notes.pop(key, None)
                    self.evicted += 1
                    if not members:
                        self._drop_bucket()
                    if self.on_evict is not None:
                        self.on_evict(key, entry)
                    return
            self._drop_bucket()

    def _drop_bucket(self) -> None:
        del self._buckets[heapq.heappop(self._bucket_heap)]

    def remove(self, key: bytes) -> Entry | None:
        """Take ``key`` out now (its bucket member goes stale and is skipped later)."""
        if key not in self._values:
            return None
        entry = self._entry(self._values.pop(key), key)
        self._notes.pop(key, None)
        return entry

    def expire(self, now: float) -> list[tuple[bytes, Entry]]:
        """Remove and return every entry whose time has come."""
        gone = []
        now_ms = now * 1000.0
        heap, values = self._bucket_heap, self._values
        while heap and heap[0] * _BUCKET_MS <= now_ms:
            bucket = heap[0]
            for key in self._buckets[bucket]:
                value = values.get(key)
                if value is not None and _bucket((value >> _META_BITS) & _UNTIL_MASK) == bucket:
                    gone.append((key, self._entry(value, key)))
                    del values[key]
                    self._notes.pop(key, None)
            self._drop_bucket()
        return gone

    def next_expiry(self) -> float | None:
        """When the next bucket falls due (it may hold only refreshed, stale members)."""
        return self._bucket_heap[0] * _BUCKET_MS / 1000.0 if self._bucket_heap else None

    def entries(self, now: float):
        """Live entries, one at a time: (key, seconds left, detector, reason)."""
        now_ms = now * 1000.0
        for key, value in self._values.items():
            until_ms = (value >> _META_BITS) & _UNTIL_MASK
            if until_ms > now_ms:
                detector, reason, _ = self._metas[value & _META_MASK]
                yield key, (until_ms - now_ms) / 1000.0, detector, reason

    def full_entries(self, now: float):
        """Live entries with everything known: (key, seconds left, Entry)."""
        now_ms = now * 1000.0
        for key, value in list(self._values.items()):
            until_ms = (value >> _META_BITS) & _UNTIL_MASK
            if until_ms > now_ms:
                yield key, (until_ms - now_ms) / 1000.0, self._entry(value, key)

    def snapshot(self, now: float, limit: int | None = None) -> list[dict]:
        """Live entries (at most ``limit``) as plain dicts, for status and reports."""
        return [describe(key, left, entry, now, self.evidence)
                for key, left, entry in islice(self.full_entries(now), limit)]


def describe(key: bytes, left: float, entry: Entry, now: float, evidence: bool = True) -> dict:
    d = {"address": ip_text(key), "remaining": round(left, 3), "detector": entry.detector,
         "reason": entry.reason}
    if evidence:
        d.update(scope="lan" if entry.lanwide else "client", evidence=entry.kind,
                 clients=[ip_text(c) for c in entry.clients],
                 own_clients=[ip_text(c) for c in entry.own_clients()],
                 first_seen_ago=round(max(0.0, now - entry.first_seen), 1),
                 last_seen_ago=round(max(0.0, now - entry.last_seen), 1))
    return d


class PeerTable(ExpiringTable):
    """Outside addresses learned as P2P peers, each with its evidence and scope: blocked
    for the whole LAN (``lanwide``) or only for the LAN clients it concerns."""

    evidence = True

    def learn(self, key: bytes, now: float, seconds: float, detector: str, reason: str, note,
              kind: str, client: bytes | None, lanwide: bool, corroborate: int,
              station=None) -> tuple[Entry, bool, bool]:
        """Record evidence against ``key``; returns (entry, is_new, became LAN-wide).

        ``client`` is the LAN host the evidence concerns (None: none in particular);
        own-packet evidence from ``corroborate`` distinct clients makes the peer LAN-wide,
        as does ``lanwide`` (the peer's own P2P answer, an operator).  With ``station``
        (address -> who it is, or None for a station without standing yet), distinct
        clients are distinct stations: two addresses of one host count once."""
        old = self._values.get(key)
        if old is not None and ((old >> _META_BITS) & _UNTIL_MASK) <= now * 1000.0:
            old = None
        second = int(now)
        if old is None:
            first, was_lanwide, clients, own = second, False, (), 0
            old_kind = None
        else:
            first, _, was_lanwide, clients, own = _unpack_evidence(old >> _SHIFT, len(key))
            old_kind = self._metas[old & _META_MASK][2]
        if client is not None and len(client) == len(key):
            if client in clients:
                i = clients.index(client)
                if kind == OWN:
                    own |= 1 << i
            elif len(clients) < MAX_CLIENTS:
                clients = clients + (client,)
                if kind == OWN:
                    own |= 1 << (len(clients) - 1)
        if station is None:
            owners = bin(own).count("1")
        else:
            owners = len({station(c) for i, c in enumerate(clients) if own >> i & 1} - {None})
        is_lanwide = was_lanwide or lanwide or owners >= corroborate
        if old_kind is not None and _rank(old_kind) > _rank(kind):
            kind = old_kind  # an entry keeps the strongest evidence it ever had
        extra = _pack_evidence(first, second, is_lanwide, clients, own)
        entry, new = self.put(key, now, seconds, detector, reason, note, extra, kind)
        return entry, new, is_lanwide and not was_lanwide

    def reserve_full(self, share: float = 0.9) -> bool:
        """Whether named-only evidence must wait: past this share of the bound, names
        from replies may not push out what clients' own packets proved."""
        return len(self._values) >= self.max_entries * share


class LockTable(ExpiringTable):
    """LAN hosts under the time lock; their TCP SYNs are dropped."""
