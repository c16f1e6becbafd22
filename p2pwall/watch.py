"""What the daemon watches in the background, off the packet path: the queue's and the
per-host bound's drops (``event=queue_overflow``), and the gateway's neighbour table (so
that no verdict ever waits for ``ip neigh``).

One thread runs every watch at its own interval until stopped; a watch that fails is
logged and tried again next time.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time

from . import rules
from .events import emit

log = logging.getLogger("p2pwall.daemon")


class Watcher:
    """Runs ``(interval, fn)`` pairs in one thread until ``stop``."""

    def __init__(self, watches, name: str = "p2pwall-watch"):
        self.watches = list(watches)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "Watcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        due = [time.monotonic() + interval for interval, _ in self.watches]
        while True:
            wait = max(0.0, min(due) - time.monotonic()) if due else 1.0
            if self._stop.wait(wait):
                return
            now = time.monotonic()
            for i, (interval, fn) in enumerate(self.watches):
                if due[i] <= now:
                    due[i] = now + interval
                    try:
                        fn()
                    except Exception as exc:  # a failed reading must not end the watch
                        emit(log, logging.WARNING, "watch_failed", watch=getattr(fn, "__name__", "?"),
                             error=str(exc)[:200])


class OverloadWatch:
    """The queue's drops (``/proc``) and the per-host bound's (its rules' counters).
    ``figures`` is what status shows; ``event=queue_overflow`` (at most one line per
    reading) when they grew."""

    def __init__(self, settings, installed, worker: int = 0):
        self.settings = settings
        self.installed = installed  # the families whose rules are in (the daemon's list)
        self.worker = worker
        self._seen = {"queue_dropped": 0, "user_dropped": 0, "fairness_dropped": 0}
        self.figures: dict = {}

    def fairness_dropped(self) -> int:
        """Packets the per-host bound dropped (the kernel's counters of its rules)."""
        if not self.settings.per_host_rate:
            return 0
        total = 0
        names = rules.chain_names(self.settings.queue_number)
        for family in list(self.installed):
            tool = "iptables" if family == 4 else "ip6tables"
            for chain in (names["counted"], names["input"]):  # where the bound rules are
                out = subprocess.run([tool, "-w", "-L", chain, "-v", "-x", "-n"], capture_output=True,
                                     text=True).stdout
                total += sum(int(line.split()[0]) for line in out.splitlines()
                             if "limit: above" in line and "DROP" in line)
        return total

    def __call__(self) -> None:
        from .metrics import queue_stats

        settings = self.settings
        figures = dict(queue_stats(settings.queue_number + self.worker))
        figures["fairness_dropped"] = self.fairness_dropped() if not self.worker else 0
        grew = {k: figures.get(k, 0) - v for k, v in self._seen.items() if figures.get(k, 0) > v}
        self._seen = {k: max(v, figures.get(k, 0)) for k, v in self._seen.items()}
        self.figures = {"overflow": settings.overflow, "per_host_rate": settings.per_host_rate,
                        **{k: figures.get(k, 0) for k in ("waiting", "queue_dropped", "user_dropped",
                                                          "fairness_dropped")}}
        if grew:
            emit(log, logging.WARNING, "queue_overflow", **{f"new_{k}": v for k, v in grew.items()},
                 overflow=settings.overflow)
