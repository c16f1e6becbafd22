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

    def kernel_drops(self) -> dict[str, int]:
        """What the kernel dropped by itself, never queued: LAN-wide peers (``peers``,
        ``nolock``), client-scoped ones (``pairs``, the counters of p2pwall's nft table) and
        locked clients' SYNs (``locks``, the lock rule's iptables counter)."""
        import json

        out = {"peers": 0, "nolock": 0, "pairs": 0, "locks": 0}
        if not self.settings.kernel_sets or not self.installed:
            return out
        done = subprocess.run(["nft", "-j", "list", "table", "inet", f"p2pwall{self.settings.queue_number}"],
                              capture_output=True, text=True)
        try:
            items = json.loads(done.stdout or "{}").get("nftables", [])
        except ValueError:
            items = []
        for item in items:
            rule = item.get("rule") if isinstance(item, dict) else None
            if not rule:
                continue
            packets = sum(e["counter"].get("packets", 0) for e in rule.get("expr", [])
                          if isinstance(e, dict) and isinstance(e.get("counter"), dict))
            text = json.dumps(rule.get("expr", []))
            chain = rule.get("chain")
            if chain == "blocked":
                out["pairs"] += packets
            elif chain == "peer":
                out["peers"] += packets
            elif chain == "lan" and "nolock" in text:
                out["nolock"] += packets
        names = rules.chain_names(self.settings.queue_number)
        for family in list(self.installed):
            tool = "iptables" if family == 4 else "ip6tables"
            listing = subprocess.run([tool, "-w", "-L", names["counted"], "-v", "-x", "-n"], capture_output=True,
                                     text=True).stdout
            out["locks"] += sum(int(line.split()[0]) for line in listing.splitlines()
                                if "match-set p2pwall-locks" in line and "DROP" in line)
        return out

    def __call__(self) -> None:
        from .metrics import queue_stats

        settings = self.settings
        figures = dict(queue_stats(settings.queue_number + self.worker))
        figures["fairness_dropped"] = self.fairness_dropped() if not self.worker else 0
        grew = {k: figures.get(k, 0) - v for k, v in self._seen.items() if figures.get(k, 0) > v}
        self._seen = {k: max(v, figures.get(k, 0)) for k, v in self._seen.items()}
        self.figures = {"overflow": settings.overflow, "per_host_rate": settings.per_host_rate,
                        **{k: figures.get(k, 0) for k in ("waiting", "queue_dropped", "user_dropped",
                                                          "fairness_dropped")},
                        "kernel_drops": self.kernel_drops() if not self.worker else {}}
        if grew:
            emit(log, logging.WARNING, "queue_overflow", **{f"new_{k}": v for k, v in grew.items()},
                 overflow=settings.overflow)
