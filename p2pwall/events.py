"""Events: every state change is a structured log line, a counter and a hook call."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

log = logging.getLogger("p2pwall.events")

PEER_BLOCKED = "peer_blocked"
CLIENT_LOCKED = "client_locked"
LOCK_RESTARTED = "lock_restarted"
LOCK_EXPIRED = "lock_expired"
PROBE_SENT = "probe_sent"
PROBE_ANSWERED = "probe_answered"
SPOOF_SENT = "spoof_sent"
DETECTOR_ERROR = "detector_error"
SEND_REFUSED = "send_refused"


@dataclass(slots=True)
class Event:
    kind: str
    time: float
    detector: str | None = None
    address: str | None = None
    peer: str | None = None
    until: float | None = None
    reason: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if v not in (None, "", {})}

    def log_line(self) -> str:
        parts = [f"event={self.kind}"]
        for key, value in self.to_dict().items():
            if key not in ("kind", "time"):
                parts.append(f"{key}={_fmt(value)}")
        return " ".join(parts)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return json.dumps(text) if (" " in text or not text) else text


class EventLog:
    """Counts events, logs them (rate limited per kind) and keeps the recent ones."""

    def __init__(self, keep: int = 0, log_limit_per_second: float = 50.0):
        self.counters: Counter[str] = Counter()
        self.keep = keep
        self.recent: list[Event] = []
        self.log_limit = log_limit_per_second
        self._window = 0
        self._logged_in_window = 0
        self._suppressed = 0

    def record(self, event: Event) -> None:
        self.counters[event.kind] += 1
        if self.keep:
            self.recent.append(event)
            if len(self.recent) > self.keep:
                del self.recent[: len(self.recent) - self.keep]
        if not log.isEnabledFor(logging.INFO):
            return
        second = int(time.monotonic())
        if second != self._window:
            if self._suppressed:
                log.warning("event=log_suppressed count=%d", self._suppressed)
            self._window, self._logged_in_window, self._suppressed = second, 0, 0
        if self._logged_in_window >= self.log_limit:
            self._suppressed += 1
            return
        self._logged_in_window += 1
        log.info("%s", event.log_line())
