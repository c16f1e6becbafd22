"""Reporting plugins (``p2pwall_event`` observers) on a thread of their own.

The engine hands every event here after the verdicts; a slow observer (a webhook, a
database) then delays nothing but itself: the verdict loop never waits on it.  The queue
between them is bounded: past ``MAX_PENDING`` events the newest are dropped and counted
(``observer_dropped``).  An observer that raises is counted against it
(``detector_errors.<name>``), logged at most once per 10 s per observer, and never
told of its own error.  Replay and the test harness call observers in line instead, so
their order stays that of the packets.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter

from .events import DETECTOR_ERROR, emit

log = logging.getLogger("p2pwall.engine")
MAX_PENDING = 10000


class ObserverThread:
    def __init__(self, observers):
        self.observers = list(observers)  # (name, function); replaced on a reload
        self.builtin: list = []  # the history and [notify]: kept across reloads
        self.counters: Counter[str] = Counter()
        self._queue: queue.Queue = queue.Queue(MAX_PENDING)
        self._logged: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name="p2pwall-observers", daemon=True)
        self._thread.start()

    def submit(self, event, skip: str | None = None) -> None:
        try:
            self._queue.put_nowait((event, skip))
        except queue.Full:
            self.counters["observer_dropped"] += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            event, skip = item
            for name, observe in self.builtin + self.observers:
                if name == skip:
                    continue
                try:
                    observe(event)
                except Exception as exc:  # a reporting plugin's bug costs nothing but its report
                    self.counters["detector_errors"] += 1
                    self.counters[f"detector_errors.{name}"] += 1
                    now = time.monotonic()
                    if now - self._logged.get(name, -1e9) >= 10.0:
                        self._logged[name] = now
                        emit(log, logging.ERROR, DETECTOR_ERROR, detector=name,
                             error=f"{type(exc).__name__}: {exc}"[:300])

    def stop(self, timeout: float = 2.0) -> None:
        """Let the observers see what is queued (up to ``timeout``), then end the thread."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
