"""The history: one row per state-changing event, kept in SQLite by the daemon itself.

Written off the packet path: events are queued (bounded; overflow is counted, never
waited on) and a thread of its own writes them in batches (every second, or every
``BATCH`` rows) in one transaction each, in WAL mode, so a crash loses at most the last
batch.  Bounded by age (``[history] days``) and size (``[history] max_events``): the
oldest rows go first, checked at start and after every hour of writing.  ``read`` is what
``p2pwall report`` uses; several files (one per gateway of a cluster) merge by time.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections import Counter

from .events import emit

log = logging.getLogger("p2pwall.history")

# what is kept: every change of the tables, and what the daemon did about its rules and cluster
KINDS = ("peer_blocked", "peer_unblocked", "client_locked", "lock_restarted", "probe_answered",
         "lock_expired", "rules_restored", "cluster_down", "cluster_up", "started", "stopped")
COLUMNS = ("time", "gateway", "kind", "detector", "protocol", "host", "peer", "scope", "evidence",
           "reason", "until", "clients")
BATCH = 500
MAX_PENDING = 50000
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,      -- wall clock, epoch seconds
    gateway TEXT, kind TEXT NOT NULL, detector TEXT, protocol TEXT,
    host TEXT,               -- the LAN host concerned (locked, or the peer blocked for it)
    peer TEXT,               -- the outside address blocked or unblocked
    scope TEXT,              -- peer_blocked: lan or client
    evidence TEXT,           -- own, reply, named, operator
    reason TEXT, until REAL,
    clients TEXT             -- a LAN-wide block: the clients whose evidence it rests on, comma-separated
);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE INDEX IF NOT EXISTS events_host ON events(host, time);
PRAGMA user_version = 1;
"""


class HistoryError(Exception):
    """A history file that cannot be opened or read: one line, exit status 2."""


def connect(path: str, create: bool = False) -> sqlite3.Connection:
    if not create and not os.path.exists(path):
        raise HistoryError(f"{path}: no such history file")
    try:
        if create:
            os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        db = sqlite3.connect(path, timeout=10.0, check_same_thread=False)
        if create:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
        else:
            db.execute("SELECT count(*) FROM events LIMIT 1")
    except sqlite3.DatabaseError as exc:
        raise HistoryError(f"{path}: not a p2pwall history ({exc})") from None
    except OSError as exc:
        raise HistoryError(f"{path}: {exc.strerror or exc}") from None
    return db


class History:
    """The daemon's writer: ``add(kind, wall_time, **fields)`` from any thread."""

    def __init__(self, path: str, days: float = 90.0, max_events: int = 1_000_000, gateway: str = "",
                 protocols: dict[str, str] | None = None, flush_seconds: float = 1.0):
        self.path, self.days, self.max_events, self.gateway = path, days, max_events, gateway
        self.protocols = dict(protocols or {})  # detector name -> the protocol it stops
        self.flush_seconds = flush_seconds
        self.counters: Counter[str] = Counter()
        self._db = connect(path, create=True)
        self.prune()
        self._queue: queue.Queue = queue.Queue(MAX_PENDING)
        self._thread = threading.Thread(target=self._run, name="p2pwall-history", daemon=True)
        self._thread.start()

    def observe(self, event) -> None:
        """A ``p2pwall_event`` observer: the engine's events, with their wall-clock time."""
        if event.kind in KINDS:
            when, fields = event.told()
            self.add(event.kind, when, **fields)

    def add(self, kind: str, when: float, **fields) -> None:
        clients = fields.get("clients")
        if isinstance(clients, (list, tuple)):
            fields["clients"] = ",".join(clients)
        fields.setdefault("protocol", self.protocols.get(fields.get("detector") or ""))
        row = (when, self.gateway or None, kind, *(fields.get(c) for c in COLUMNS[3:]))
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self.counters["history_dropped"] += 1

    def _run(self) -> None:
        pruned_at = time.monotonic()
        while True:
            rows, stop = [], False
            deadline = time.monotonic() + self.flush_seconds
            while len(rows) < BATCH:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                rows.append(item)
            if rows:
                self._write(rows)
            if time.monotonic() - pruned_at > 3600:
                pruned_at = time.monotonic()
                self.prune()
            if stop:
                return

    def _write(self, rows) -> None:
        try:
            with self._db:
                self._db.executemany(f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES "
                                     f"({', '.join('?' * len(COLUMNS))})", rows)
            self.counters["history_written"] += len(rows)
        except sqlite3.Error as exc:  # a full disk: the rows are lost, the firewall goes on
            self.counters["history_failed"] += len(rows)
            emit(log, logging.ERROR, "history_failed", file=self.path, error=str(exc)[:200], rows=len(rows))

    def prune(self) -> None:
        """Rows older than ``days``, then the oldest beyond ``max_events``."""
        try:
            with self._db:
                gone = self._db.execute("DELETE FROM events WHERE time < ?",
                                        (time.time() - self.days * 86400,)).rowcount
                extra = self._db.execute("SELECT count(*) FROM events").fetchone()[0] - self.max_events
                if extra > 0:
                    gone += self._db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events "
                                             "ORDER BY time, id LIMIT ?)", (extra,)).rowcount
            self.counters["history_pruned"] += gone
        except sqlite3.Error as exc:
            emit(log, logging.ERROR, "history_failed", file=self.path, error=str(exc)[:200])

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to ``timeout``), then close the file."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._db.close()


def read(paths, since: float | None = None, until: float | None = None, host: str | None = None) -> list[tuple]:
    """The rows of one or several history files, oldest first, as tuples in ``COLUMNS``
    order (a million dicts would cost the report seconds)."""
    where, args = [], []
    if since is not None:
        where.append("time >= ?")
        args.append(since)
    if until is not None:
        where.append("time < ?")
        args.append(until)
    if host:
        where.append("(host = ? OR ',' || clients || ',' LIKE ?)")
        args += [host, f"%,{host},%"]
    sql = f"SELECT {', '.join(COLUMNS)} FROM events" + (f" WHERE {' AND '.join(where)}" if where else "")
    rows = []
    for path in paths:
        db = connect(str(path))
        try:
            rows.extend(db.execute(sql + " ORDER BY time, id", args))
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f"{path}: unreadable history ({exc})") from None
        finally:
            db.close()
    if len(paths) > 1:
        rows.sort(key=lambda r: r[0])
    return rows
