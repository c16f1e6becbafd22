"""Peer and lock tables: bounded maps from address to an expiring entry.

Each entry carries its own expiry; ``expire(now)`` removes what is due without any
traffic having to arrive (the engine's scheduler calls it), and lookups ignore entries
that are already past their time.  When a table is full the entry refreshed longest ago
goes first.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass

from .packet import ip_text


@dataclass(slots=True)
class Entry:
    """One address in a table: until when, who put it there and why."""

    until: float
    detector: str
    reason: str
    since: float


class ExpiringTable:
    """Bounded address -> :class:`Entry` map with per-entry expiry."""

    def __init__(self, max_entries: int):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._heap: list[tuple[float, bytes]] = []  # lazily pruned (until, key)
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: bytes) -> bool:  # ignores expiry; see active()
        return key in self._entries

    def get(self, key: bytes, now: float) -> Entry | None:
        """The live entry for ``key``, or None if absent or past its expiry."""
        entry = self._entries.get(key)
        if entry is None or entry.until <= now:
            return None
        return entry

    def put(self, key: bytes, now: float, seconds: float, detector: str, reason: str) -> tuple[Entry, bool]:
        """Add or restart ``key`` for ``seconds``; returns (entry, is_new)."""
        until = now + seconds
        entry = self._entries.get(key)
        if entry is not None and entry.until > now:
            entry.until = max(entry.until, until)
            entry.detector, entry.reason = detector, reason or entry.reason
            self._entries.move_to_end(key)
            new = False
        else:
            if entry is None and len(self._entries) >= self.max_entries:
                self._entries.popitem(last=False)
                self.evicted += 1
            entry = Entry(until, detector, reason, now)
            self._entries[key] = entry
            self._entries.move_to_end(key)
            new = True
        heapq.heappush(self._heap, (entry.until, key))
        if len(self._heap) > 2 * len(self._entries) + 64:
            self._rebuild_heap()
        return entry, new

    def remove(self, key: bytes) -> Entry | None:
        return self._entries.pop(key, None)

    def expire(self, now: float) -> list[tuple[bytes, Entry]]:
        """Remove and return every entry whose time has come."""
        gone = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            until, key = heapq.heappop(heap)
            entry = self._entries.get(key)
            if entry is not None and entry.until <= now:
                del self._entries[key]
                gone.append((key, entry))
        return gone

    def next_expiry(self) -> float | None:
        while self._heap:
            until, key = self._heap[0]
            entry = self._entries.get(key)
            if entry is not None and entry.until == until:
                return until
            heapq.heappop(self._heap)
        return None

    def items(self):
        return self._entries.items()

    def snapshot(self, now: float) -> list[dict]:
        """Live entries as plain dicts, for status and reports."""
        return [
            {"address": ip_text(k), "until": e.until, "remaining": round(e.until - now, 3),
             "detector": e.detector, "reason": e.reason, "since": e.since}
            for k, e in self._entries.items() if e.until > now
        ]

    def _rebuild_heap(self) -> None:
        self._heap = [(e.until, k) for k, e in self._entries.items()]
        heapq.heapify(self._heap)


class PeerTable(ExpiringTable):
    """Outside addresses learned as P2P peers; LAN packets to them are dropped."""


class LockTable(ExpiringTable):
    """LAN hosts under the time lock; their TCP SYNs are dropped."""
