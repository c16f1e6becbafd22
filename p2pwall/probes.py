"""When each locked client's next probe is due.

ftwall's rule: a locked client is probed at half of what is left of its lock and, if
that goes unanswered, once more at half of what is left then (``[probes] per_lock``).
A lock that is restarted moves its probe; one that ends takes its probe with it.  The
engine decides what a probe is and sends it (through the detector that locked the
client); this module only keeps the times: a heap with at most one live entry per client,
so a client whose lock is restarted a thousand times costs one entry, not a thousand."""

from __future__ import annotations

import heapq
from collections.abc import Iterator


class ProbeSchedule:
    """Due times by client key, each with how many probes this lock has sent so far."""

    __slots__ = ("_heap", "_due")

    def __init__(self):
        self._heap: list[tuple[float, bytes]] = []
        self._due: dict[bytes, tuple[float, int]] = {}  # at most one per live lock

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, key: bytes, due: float, sent: int) -> None:
        """Probe ``key`` at ``due`` (``sent`` probes so far).  A later time replaces an
        earlier one without a second heap entry: it is found when the entry pops."""
        known = self._due.get(key)
        self._due[key] = (due, sent)
        if known is None or due < known[0]:
            heapq.heappush(self._heap, (due, key))

    def cancel(self, key: bytes) -> None:
        self._due.pop(key, None)

    def due(self, now: float) -> Iterator[tuple[bytes, int]]:
        """Each client whose probe is due by ``now``, taken off the schedule, with the
        number of probes sent before it; a client scheduled again while this runs is
        found again only if its new time is due too."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, key = heapq.heappop(heap)
            scheduled = self._due.get(key)
            if scheduled is None:
                continue  # cancelled
            if scheduled[0] > at:  # moved later since: wait for the new time
                heapq.heappush(heap, (scheduled[0], key))
                continue
            del self._due[key]
            yield key, scheduled[1]

    def next_due(self) -> float | None:
        """The earliest live due time (cancelled entries at the top are dropped)."""
        heap = self._heap
        while heap:
            at, key = heap[0]
            if key in self._due:
                return at
            heapq.heappop(heap)
        return None
