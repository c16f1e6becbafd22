"""Events: every state change is a structured log line, a counter and a hook call.

Log lines are written through ``emit``: the text form is ``event=<kind> key=value ...``
with every value quoted when it could be mistaken for more fields or lines, and the
fields ride on the log record so that ``--log-format json`` builds its object from them
(never by parsing the text back).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass

log = logging.getLogger("p2pwall.events")

PEER_BLOCKED = "peer_blocked"
PEER_UNBLOCKED = "peer_unblocked"
CLIENT_LOCKED = "client_locked"
LOCK_RESTARTED = "lock_restarted"
LOCK_EXPIRED = "lock_expired"
PROBE_SENT = "probe_sent"
PROBE_ANSWERED = "probe_answered"
SPOOF_SENT = "spoof_sent"  # counted, not logged: one per spoofed reply
DETECTOR_ERROR = "detector_error"
ACTION_REFUSED = "action_refused"
REPORTED = "reported"  # a detector saw something it will not act on (a browser-shaped request)
SEND_REFUSED = "send_refused"

# what p2pwall_event observers can receive
KINDS = (PEER_BLOCKED, PEER_UNBLOCKED, CLIENT_LOCKED, LOCK_RESTARTED, LOCK_EXPIRED, PROBE_SENT,
         PROBE_ANSWERED, SEND_REFUSED, ACTION_REFUSED, DETECTOR_ERROR, REPORTED)

_PLAIN = re.compile(r"[A-Za-z0-9_.:/@+,\[\]-]+")


def quote(value) -> str:
    """A log value that cannot forge fields or lines: plain tokens as they are,
    anything else as a JSON string (newlines, quotes and '=' escaped or enclosed)."""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (int, bool)) or value is None:
        return json.dumps(value)
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if _PLAIN.fullmatch(text) else json.dumps(text)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


def emit(logger: logging.Logger, level: int, kind: str, **fields) -> None:
    """Log one event line (``event=kind k=v ...``) with its fields on the record.  An
    ``until`` (wall-clock epoch seconds) reads as ISO 8601 UTC in the text form and stays
    epoch seconds in the JSON one."""
    if not logger.isEnabledFor(level):
        return
    text = " ".join([f"event={kind}"] + [f"{k}={_iso(v) if k == 'until' and isinstance(v, float) else quote(v)}"
                                         for k, v in fields.items() if v is not None])
    logger.log(level, "%s", text, extra={"p2pwall_fields": {"event": kind, **fields}})


@dataclass(slots=True)
class Event:
    kind: str
    time: float
    detector: str | None = None
    address: str | None = None
    peer: str | None = None
    until: float | None = None
    reason: str = ""
    scope: str | None = None  # peer_blocked: "lan" or "client"
    evidence: str | None = None  # peer_blocked: own, reply, named, operator
    clients: list | None = None  # peer_blocked LAN-wide: the clients whose evidence it rests on
    wall: float | None = None  # ``time`` on the wall clock (epoch seconds), where the engine knows it

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}

    def fields(self) -> dict:
        return {k: v for k, v in self.to_dict().items() if k not in ("kind", "time", "wall")}

    def told(self) -> tuple[float, dict]:
        """(wall-clock time, fields) as the history and the webhooks tell it: the LAN host
        concerned is ``host``."""
        return self.wall or time.time(), {
            "detector": self.detector, "host": self.address, "peer": self.peer, "scope": self.scope,
            "evidence": self.evidence, "reason": self.reason, "until": self.until, "clients": self.clients}


class EventLog:
    """Counts events, logs them (rate limited) and keeps the recent ones."""

    def __init__(self, keep: int = 0, log_limit_per_second: float = 50.0, mark: dict | None = None):
        self.mark = dict(mark or {})  # fields every line carries (monitor=true in a dry run)
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
        if event.kind in (DETECTOR_ERROR, ACTION_REFUSED) or not log.isEnabledFor(logging.INFO):
            return  # the engine logs those itself, rate limited per detector
        second = int(time.monotonic())
        if second != self._window:
            if self._suppressed:
                emit(log, logging.WARNING, "log_suppressed", count=self._suppressed)
            self._window, self._logged_in_window, self._suppressed = second, 0, 0
        if self._logged_in_window >= self.log_limit:
            self._suppressed += 1
            return
        self._logged_in_window += 1
        emit(log, logging.INFO, event.kind, **event.fields(), **self.mark)
