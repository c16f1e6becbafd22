"""Peer and lock tables: bounded maps from address to an expiring entry.

Each entry carries its own expiry; ``expire(now)`` removes what is due without any
traffic having to arrive (the engine's scheduler calls it), and lookups ignore entries
that are already past their time.  When a table is full the entry due to expire first
goes (with one lifetime per table, that is the one refreshed longest ago).

Built for a million entries in well under 150 MB: an entry is one dict slot mapping the
packed address to a single int (expiry in milliseconds, and the index of its interned
(detector, reason) pair); expiry works through quarter-second buckets instead of a
heap of tuples.
"""

from __future__ import annotations

import heapq
from itertools import islice

from .packet import ip_text

_META_BITS = 12
_META_MASK = (1 << _META_BITS) - 1
_BUCKET_MS = 250


class Entry:
    """One address in a table, as lookups return it: until when, who and why."""

    __slots__ = ("until", "detector", "reason", "note")

    def __init__(self, until: float, detector: str, reason: str, note: bytes | None = None):
        self.until, self.detector, self.reason, self.note = until, detector, reason, note

    def __repr__(self) -> str:
        return f"Entry(until={self.until}, detector={self.detector!r}, reason={self.reason!r})"


def _bucket(until_ms: int) -> int:
    return -(-until_ms // _BUCKET_MS)  # the first bucket boundary at or after the expiry


class ExpiringTable:
    """Bounded address -> expiring entry map."""

    def __init__(self, max_entries: int):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._values: dict[bytes, int] = {}  # key -> until_ms << 12 | meta id
        self._metas: list[tuple[str, str]] = [("", "")]
        self._meta_ids: dict[tuple[str, str], int] = {("", ""): 0}
        self._buckets: dict[int, list[bytes]] = {}
        self._bucket_heap: list[int] = []
        self._notes: dict[bytes, bytes] = {}  # what a detector keeps with an entry (few have one)
        self.evicted = 0
        self.on_evict = None  # called with each evicted key (the kernel mirror deletes it)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: bytes) -> bool:  # ignores expiry; see get()
        return key in self._values

    def _meta(self, detector: str, reason: str) -> int:
        pair = (detector, reason)
        found = self._meta_ids.get(pair)
        if found is None:
            if len(self._metas) > _META_MASK:  # reasons are meant to be a few constants
                return self._meta(detector, "")
            found = len(self._metas)
            self._metas.append(pair)
            self._meta_ids[pair] = found
        return found

    def _entry(self, value: int, key: bytes) -> Entry:
        detector, reason = self._metas[value & _META_MASK]
        return Entry((value >> _META_BITS) / 1000.0, detector, reason, self._notes.get(key))

    def get(self, key: bytes, now: float) -> Entry | None:
        """The live entry for ``key``, or None if absent or past its expiry."""
        value = self._values.get(key)
        if value is None or (value >> _META_BITS) <= now * 1000.0:
            return None
        return self._entry(value, key)

    def note(self, key: bytes) -> bytes | None:
        return self._notes.get(key)

    def live(self, key: bytes, now: float) -> bool:
        """Whether ``key`` has a live entry (get() without building the entry)."""
        value = self._values.get(key)
        return value is not None and (value >> _META_BITS) > now * 1000.0

    def put(self, key: bytes, now: float, seconds: float, detector: str, reason: str,
            note: bytes | None = None) -> tuple[Entry, bool]:
        """Add or restart ``key`` for ``seconds``; returns (entry, is_new).  A restart
        keeps the entry's note unless a new one is given."""
        until_ms = int((now + seconds) * 1000.0)
        old = self._values.get(key)
        new = old is None or (old >> _META_BITS) <= now * 1000.0
        if not new:
            until_ms = max(until_ms, old >> _META_BITS)
            if not reason:
                reason = self._metas[old & _META_MASK][1]
        elif old is None and len(self._values) >= self.max_entries:
            self.evict_one()
        value = until_ms << _META_BITS | self._meta(detector, reason)
        self._values[key] = value
        if note is not None:
            self._notes[key] = note
        elif new and self._notes:
            self._notes.pop(key, None)
        bucket = _bucket(until_ms)
        if old is None or _bucket(old >> _META_BITS) != bucket:
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
                if value is not None and _bucket(value >> _META_BITS) == bucket:
                    del self._values[key]
                    self._notes.pop(key, None)
                    self.evicted += 1
                    if not members:
                        self._drop_bucket()
                    if self.on_evict is not None:
                        self.on_evict(key)
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
                if value is not None and _bucket(value >> _META_BITS) == bucket:
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
            until_ms = value >> _META_BITS
            if until_ms > now_ms:
                detector, reason = self._metas[value & _META_MASK]
                yield key, (until_ms - now_ms) / 1000.0, detector, reason

    def snapshot(self, now: float, limit: int | None = None) -> list[dict]:
        """Live entries (at most ``limit``) as plain dicts, for status and reports."""
        return [{"address": ip_text(key), "remaining": round(left, 3), "detector": detector, "reason": reason}
                for key, left, detector, reason in islice(self.entries(now), limit)]


class PeerTable(ExpiringTable):
    """Outside addresses learned as P2P peers; LAN packets to them are dropped."""


class LockTable(ExpiringTable):
    """LAN hosts under the time lock; their TCP SYNs are dropped."""
