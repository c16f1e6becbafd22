"""Webhooks (``[notify]``): one JSON POST per chosen event, off the packet path.

Events are queued (bounded: ``MAX_PENDING``; past it the newest are dropped and counted,
``notify_dropped``) and a thread of its own posts them one by one, each with
``[notify] retries`` more tries after a failure, waiting 1, 2, 4... seconds (at most 60)
in between; one that never got through is counted (``notify_failed``) and logged, rate
limited.  A dead or slow receiver therefore delays nothing but the next notification:
the verdict loop only ever puts an item on a queue.

The body: ``{"event": kind, "time": epoch, "time_iso": ..., "gateway": name, ...fields}``
with the event's own fields (``host``, ``peer``, ``detector``, ``reason``, ``until``,
``scope``, ``evidence``, ``clients``, ``missing``...), as ``Content-Type:
application/json``, with ``User-Agent: p2pwall/<version>``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

from .events import _iso, emit

log = logging.getLogger("p2pwall.notify")
MAX_PENDING = 1000


def notify_kind(kind: str, fields: dict) -> str:
    """The name [notify] events uses: a LAN-wide block is ``peer_blocked_lan``."""
    if kind == "peer_blocked" and fields.get("scope") == "lan":
        return "peer_blocked_lan"
    return kind


class Notifier:
    def __init__(self, url: str, events, timeout: float = 5.0, retries: int = 3, gateway: str = "",
                 backoff: float = 1.0):
        from . import __version__

        self.url, self.events, self.timeout, self.retries = url, set(events), timeout, retries
        self.gateway, self.backoff = gateway, backoff
        self.agent = f"p2pwall/{__version__}"
        self.counters: Counter[str] = Counter()
        self._queue: queue.Queue = queue.Queue(MAX_PENDING)
        self._stop = threading.Event()
        self._logged = -1e9
        self._thread = threading.Thread(target=self._run, name="p2pwall-notify", daemon=True)
        self._thread.start()

    def observe(self, event) -> None:
        """A ``p2pwall_event`` observer."""
        when, fields = event.told()
        self.add(event.kind, when, **fields)

    def add(self, kind: str, when: float, **fields) -> None:
        name = notify_kind(kind, fields)
        if name == "peer_blocked_lan" and "peer_blocked_lan" not in self.events and "peer_blocked" in self.events:
            name = "peer_blocked"
        if name not in self.events:
            return
        body = {"event": name, "time": round(when, 3), "time_iso": _iso(when), "gateway": self.gateway or None}
        body.update({k: v for k, v in fields.items() if v not in (None, "")})
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            self.counters["notify_dropped"] += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                body = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if body is None:
                return
            self._deliver(body)

    def _deliver(self, body: dict) -> None:
        data = json.dumps(body).encode()
        wait = self.backoff
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=data, method="POST", headers={
                "Content-Type": "application/json", "User-Agent": self.agent})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                    answer.read(65536)
                self.counters["notify_sent"] += 1
                return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                error = str(getattr(exc, "reason", exc))[:200]
            if attempt < self.retries and self._stop.wait(wait):
                break  # stopping: what is left is not worth holding the stop for
            wait = min(wait * 2, 60.0)
        self.counters["notify_failed"] += 1
        now = time.monotonic()
        if now - self._logged >= 60.0:
            self._logged = now
            emit(log, logging.WARNING, "notify_failed", url=self.url, notice=body["event"], error=error)

    def close(self, timeout: float = 3.0) -> None:
        """Post what is queued for up to ``timeout`` seconds, then stop."""
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join(1.0)
