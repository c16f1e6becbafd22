"""Several gateways, one memory: learned peers and locks shared through Redis (or Valkey).

Each entry lives in Redis under ``<prefix>:peers:<addr>`` / ``<prefix>:locks:<addr>``
with a time-to-live equal to its remaining time, and every change is appended to one
bounded stream, ``<prefix>:changes``.  A gateway reads the stream from where it left off,
so a short disconnect catches up without a reload; when the stream no longer reaches
back that far (trimmed, or Redis restarted empty) it reloads every live key and
publishes all of its own entries again.

What travels is the ledger's own record (:class:`p2pwall.records.Record`, as
``Record.to_doc`` writes it) with the gateway's name and when it learned it; the link
is one of the ledger's mirrors (:mod:`p2pwall.mirrors`): it publishes this gateway's own
live changes, never what it restored or took from another gateway.

Nothing here runs on the packet path.  Two threads talk to Redis: the writer publishes
what the engine learned (coalesced per address), the reader collects what the other
gateways learned into an inbox; the daemon's loop drains the inbox (rate bounded) and
applies each entry through the same checks as a live one.  When Redis is away the
gateways keep filtering on their own tables, reconnect with backoff and resync after.

With ``[cluster] key_file`` every change is signed (HMAC-SHA256) and unsigned or badly
signed entries are ignored and logged: only gateways holding the key can add entries,
whoever else can write to Redis.

The wire format (documents, signatures, the checks before anything else reads a change)
is :mod:`p2pwall.clusterwire`.  Why this module is still past 400 lines: the two threads
and their resync logic (read-back, replay protection, networks) share one state machine
(connected, gap, resync) that reads best in one place.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time

from .clusterwire import Change, Served, decode, encode, encode_served
from .events import emit
from .packet import ip_text
from .records import BLOCK, LOCK, LOCKS, PAIR, UNBLOCK, UNLOCK, Record

log = logging.getLogger("p2pwall.cluster")
MAX_REJECTED_NAMES = 64  # gateways whose refused changes status counts apart; the rest are "other"
MAX_GATEWAYS = 4096  # gateways whose newest sequence number is remembered
MAX_SERVED = 64  # gateways whose networks are kept (the first to tell them keep their word)
HORIZON_SLACK = 60.0  # seconds a change may have waited in its gateway's writer before the stream's oldest
NETWORKS_EVERY = 60.0  # seconds between publishing ours again (the key lives five times as long)
MAX_CANCELLED = 200_000  # addresses whose last unblock/unlock is remembered (what it cancels)


class ClusterError(Exception):
    """The cluster cannot be set up (bad URL, unreadable key, redis-py missing)."""


def _read_secret(path: str, what: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read(4096).strip()
    except OSError as exc:
        raise ClusterError(f"[cluster] {what}: cannot read {path}: {exc.strerror or exc}") from None
    if not data:
        raise ClusterError(f"[cluster] {what}: {path} is empty")
    return data


def connect(url: str, password: bytes | None):
    """A redis-py client for ``url``: redis://, rediss:// (TLS), unix://, or
    redis+sentinel://host:port[,host:port...]/service[/db] for a Sentinel-watched master."""
    try:
        import redis
    except ImportError:
        raise ClusterError("[cluster] url is set but redis-py is missing: pip install 'p2pwall[cluster]'") from None
    pw = password.decode() if password else None
    common = dict(socket_timeout=5.0, socket_connect_timeout=2.0, health_check_interval=10)
    if url.startswith("redis+sentinel://"):
        from redis.sentinel import Sentinel

        rest = url[len("redis+sentinel://"):]
        hosts, _, path = rest.partition("/")
        service, _, db = path.partition("/")
        if not hosts or not service:
            raise ClusterError(f"[cluster] url: expected redis+sentinel://host:port/service[/db], got {url!r}")
        nodes = []
        for h in hosts.split(","):
            host, _, port = h.rpartition(":")
            nodes.append((host.strip("[]"), int(port or 26379)))
        sentinel = Sentinel(nodes, **common)
        return sentinel.master_for(service, db=int(db or 0), password=pw, **common)
    try:
        return redis.Redis.from_url(url, password=pw, **common)
    except ValueError as exc:
        raise ClusterError(f"[cluster] url: {exc}") from None


class Cluster:
    """One gateway's link to the shared memory.  ``publish`` and ``drain`` are called
    from the daemon's loop; everything that waits on Redis runs in two threads."""

    def __init__(self, settings, worker: int = 0, client=None):
        from .config import gateway_name

        self.name = gateway_name(settings, worker)
        self.tell = lambda kind, **fields: None  # the history and [notify] (set by the daemon)
        self.prefix = settings.cluster_prefix
        self.stream = f"{self.prefix}:changes"
        self.stream_length = settings.cluster_stream_length
        self.key = _read_secret(settings.cluster_key_file, "key_file")
        password = _read_secret(settings.cluster_password_file, "password_file")
        self.client = client or connect(settings.cluster_url, password)
        self.rate = settings.cluster_apply_per_second
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._pending: dict[tuple[str, str], Change] = {}
        self._wrote = threading.Event()
        self.inbox: collections.deque[Change] = collections.deque(maxlen=200_000)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.wake_r, self._wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.state = "connecting"
        self.want_full_publish = False
        self.last_id: str | None = None
        self.tally = collections.Counter()
        self.rejected_by: collections.Counter = collections.Counter()  # claimed gateway -> refused changes
        self.gateways: dict[str, float] = {}  # other gateways seen, and when last
        self.lag = None  # seconds between another gateway learning an entry and our applying it
        self.lag_max = 0.0
        self._lags: collections.deque[float] = collections.deque(maxlen=1000)
        self._tokens = self.rate
        self._tokens_at = time.monotonic()
        self._down_since: float | None = None
        self._seq = 0  # ours: microseconds of the wall clock, and never less than the last plus one
        self.last_seq: collections.OrderedDict[str, int] = collections.OrderedDict()  # gateway -> newest seen
        self.cancelled: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()
        self.networks = tuple(settings.lan_networks)  # what we serve, told to the others (signed only)
        self.served: dict[str, tuple[str, ...]] = {}  # what the others serve
        self._served_changed = False
        self._networks_at = float("-inf")
        self.horizon = float("-inf")  # wall time of the oldest change the stream held at the last sync

    # ------------------------------------------------------------------ main thread
    def start(self) -> None:
        for target, name in ((self._reader, "cluster-reader"), (self._writer, "cluster-writer")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._wrote.set()
        try:
            self._flush_once()  # what was learned in the last moments still reaches the others
        except Exception:
            pass
        for t in self._threads:
            t.join(3)
        for s in (self.wake_r, self._wake_w):
            s.close()

    def fileno(self) -> int:
        return self.wake_r.fileno()

    # the mirror interface (see mirrors.py): this gateway's own live changes go out
    def add(self, where: str, record: Record) -> None:
        if record.local:
            if where == LOCKS:
                self.publish(record.but(op=LOCK))
            else:
                self.publish(record.but(op=BLOCK, lanwide=where != PAIR))  # LAN-wide ones name whose evidence

    def remove(self, where: str, record: Record) -> None:
        if record.local and record.op in (UNBLOCK, UNLOCK):
            self.publish(record.but(client=None))

    def flush(self) -> None:
        pass  # the writer thread publishes

    def counters(self) -> dict:
        return {}

    def publish(self, record: Record) -> None:
        """Queue a record for the others (coalesced: the latest per address, and per
        client for a client-scoped block, wins)."""
        change = Change(record, self.name, round(time.time(), 6))  # its sequence number when written
        client = ip_text(record.client) if record.op == BLOCK and not record.lanwide and record.client else None
        slot = (change.table, ip_text(record.address), client)
        with self._lock:
            self._pending[slot] = change
        self._wrote.set()

    def drain(self) -> list[Change]:
        """The remote changes to apply now (at most the rate bound allows)."""
        try:
            while self.wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        now = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._tokens_at) * self.rate)
        self._tokens_at = now
        out = []
        while self.inbox and self._tokens >= 1:
            out.append(self.inbox.popleft())
            self._tokens -= 1
        return out

    def apply_pending(self, ledger, publish: bool = True) -> int:
        """Apply what the other gateways learned (at most the rate bound allows) through
        the ledger's own checks; after a resync, publish every live entry of ours again
        (``publish`` false: monitor mode, which tells the others nothing)."""
        if self._served_changed:  # before their changes: the clients they name are theirs
            from .addresses import AddressSet

            self._served_changed = False
            ledger.remote = {gw: AddressSet(nets) for gw, nets in list(self.served.items())}
        changes = self.drain()
        offset = time.time() - ledger.clock()  # the wire's wall clock -> the ledger's
        for change in changes:
            before = change.ts - offset if change.record.op in (UNBLOCK, UNLOCK) else None
            self.applied(change, ledger.apply(change.record, quiet=True, before=before))
        if self.want_full_publish and publish:
            self.want_full_publish = False
            for record in ledger.records():
                if record.client is not None and record.client not in ledger.lan:
                    if not record.lanwide:
                        continue  # another gateway's client: that gateway publishes it
                    record = record.but(client=None)
                self.publish(record)
        return len(changes)

    def applied(self, change: Change, ok: bool) -> None:
        self.tally["applied" if ok else "refused"] += 1
        if change.ts and ok:
            self.lag = max(0.0, time.time() - change.ts)
            self.lag_max = max(self.lag_max, self.lag)
            self._lags.append(self.lag)

    def status(self) -> dict:
        now = time.time()
        return {"state": self.state, "name": self.name, "prefix": self.prefix,
                "signed": self.key is not None,
                "gateways": {gw: round(now - t, 1) for gw, t in sorted(self.gateways.items())},
                "lag_seconds": None if self.lag is None else round(self.lag, 3),
                "lag_max_seconds": round(self.lag_max, 3), **self._percentiles(),
                "inbox": len(self.inbox),
                "pending": len(self._pending), **dict(self.tally),
                "rejected_by_gateway": dict(self.rejected_by.most_common()),
                "served": {gw: list(nets) for gw, nets in sorted(self.served.items())}}

    def _percentiles(self) -> dict:
        lags = sorted(self._lags)
        if not lags:
            return {}
        return {"lag_p50_seconds": round(lags[len(lags) // 2], 4),
                "lag_p99_seconds": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 4),
                "lag_samples": len(lags)}

    # ------------------------------------------------------------------ threads
    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass

    def _down(self, exc: Exception) -> None:
        if self.state != "down":
            self.state = "down"
            self._down_since = time.monotonic()
            self.tally["disconnects"] += 1
            emit(log, logging.WARNING, "cluster_down", gateway=self.name, error=str(exc)[:200])
            self.tell("cluster_down", reason=str(exc)[:200])

    def _up(self) -> None:
        if self.state != "up":
            was_down = self._down_since is not None
            self.state = "up"
            emit(log, logging.INFO, "cluster_up", gateway=self.name, reconnected=was_down)
            if was_down:
                self.tell("cluster_up")

    def _reader(self) -> None:
        backoff = 0.2
        need_sync = True
        while not self._stop.is_set():
            try:
                if need_sync or self._gap():
                    self._sync()
                    need_sync = False
                self._up()
                backoff = 0.2
                found = self.client.xread({self.stream: self.last_id or "$"}, count=1000, block=500)
                for _, entries in found or []:
                    for entry_id, fields in entries:
                        self.last_id = _text(entry_id)
                        self._take(fields.get(b"m") or fields.get("m"), live=True)
                if found:
                    self._wake()
            except Exception as exc:  # redis errors, a reset connection: filtering goes on locally
                self._down(exc)
                # whatever reconnects may not be the Redis we left (a Sentinel failover to a
                # replica that missed the last writes, a restart): resync, republish ours
                need_sync = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _gap(self) -> bool:
        """After a disconnect: does the stream still reach back to where we were?"""
        if self.state == "up" or self.last_id is None:
            return False
        first = self.client.xrange(self.stream, count=1)
        if not first:
            return True  # no stream at all: Redis restarted empty
        return _id(_text(first[0][0])) > _id(self.last_id)

    def _sync(self) -> None:
        """Load every live entry, remember the stream's end, ask the loop to publish ours."""
        last = self.client.xrevrange(self.stream, count=1)
        self.last_id = _text(last[0][0]) if last else "0-0"
        self._read_back()
        self._networks_at = float("-inf")  # ours again now (Redis may have restarted empty)
        count = 0
        for table in ("gateways", "peers", "locks"):  # who serves what first: their clients' evidence follows
            keys = []
            for key in self.client.scan_iter(match=f"{self.prefix}:{table}:*", count=1000):
                keys.append(key)
                if len(keys) >= 500:
                    count += self._load(keys)
                    keys = []
            count += self._load(keys)
        self.tally["resyncs"] += 1
        self.want_full_publish = True
        self._wake()
        emit(log, logging.INFO, "cluster_resync", gateway=self.name, loaded=count)

    def _read_back(self) -> None:
        """Read the stream as far back as it reaches (it is bounded) up to where reading
        will resume, learning each gateway's newest sequence number and what every
        unblock and unlock cancelled, so that neither a replayed change nor a key set
        again with a captured value brings back what was undone.  Nothing is applied."""
        start = "-"
        while not self._stop.is_set():
            entries = self.client.xrange(self.stream, min=start, max=self.last_id, count=1000)
            if start == "-" and entries:  # how far back the stream reaches: nothing older is live news
                self.horizon = _id(_text(entries[0][0]))[0] / 1000.0
            for entry_id, fields in entries or []:
                try:
                    change = decode(fields.get(b"m") or fields.get("m"), self.key)
                except ValueError:
                    continue
                if isinstance(change, Served):
                    self._take_served(change, live=False)
                elif change.gw != self.name:
                    self._fresh(change, live=False)
            if not entries or len(entries) < 1000:
                return
            start = "(" + _text(entries[-1][0])

    def _load(self, keys) -> int:
        if not keys:
            return 0
        n = 0
        for value in self.client.mget(keys):
            if value is not None and self._take(value, live=False):
                n += 1
        return n

    def _take(self, raw, live: bool) -> bool:
        try:
            change = decode(raw, self.key)
            if isinstance(change, Served):
                return self._take_served(change, live)
        except ValueError as exc:
            return self._refused("rejected", getattr(exc, "gw", "") or "(none)", str(exc)[:200])
        if change.gw == self.name:
            return False  # our own, back from the stream
        if not self._fresh(change, live):
            return False
        self.gateways[change.gw] = time.time()
        if not live:
            change.ts = 0.0  # loaded, not propagated: no lag to measure
        if len(self.inbox) == self.inbox.maxlen:
            self.tally["inbox_overflow"] += 1
        self.inbox.append(change)
        return True

    def _take_served(self, served: Served, live: bool) -> bool:
        if served.gw == self.name:
            return False
        if live and served.seq <= self.last_seq.get(served.gw, 0):
            return self._stale("replayed", served.gw, f"networks from {served.gw}: not newer than the last seen")
        self._seen(served.gw, served.seq)
        if served.gw not in self.served and len(self.served) >= MAX_SERVED:
            return False  # bounded: the first gateways keep their word
        if self.served.get(served.gw) != served.networks:
            self.served[served.gw] = served.networks
            self._served_changed = True
        self.gateways[served.gw] = time.time()
        return True

    def _fresh(self, change: Change, live: bool) -> bool:
        """Replay protection.  From the stream, a change not newer than the last seen from
        its gateway (its signed sequence number), or learned before the oldest change the
        stream held when we synced (a capture older than the stream's retention), is a
        replay; loaded from a key, one that an unblock or unlock seen since (in the
        stream) cancels is stale.  Both refused and counted (``replayed``, ``cancelled``);
        a gateway whose delayed changes are refused republishes all of its entries when
        it resyncs."""
        gw, record = change.gw, change.record
        slot = (change.table, ip_text(record.address))
        if live and change.seq <= self.last_seq.get(gw, 0):
            return self._stale("replayed", gw, f"{record.op} {slot[1]} from {gw}: not newer than the last change seen from it")
        if live and change.ts < self.horizon - HORIZON_SLACK:
            return self._stale("replayed", gw, f"{record.op} {slot[1]} from {gw}: older than the stream reaches back")
        if record.op in (BLOCK, LOCK) and change.ts <= self.cancelled.get(slot, float("-inf")):
            return self._stale("cancelled", gw, f"{record.op} {slot[1]} from {gw}: learned before an unblock or unlock seen since")
        self._seen(gw, change.seq)
        if record.op in (UNBLOCK, UNLOCK):
            self.cancelled[slot] = max(change.ts, self.cancelled.get(slot, float("-inf")))
            self.cancelled.move_to_end(slot)
            if len(self.cancelled) > MAX_CANCELLED:
                self.cancelled.popitem(last=False)
        return True

    def _seen(self, gw: str, seq: int) -> None:
        """Remember ``seq`` as the newest seen from ``gw`` when it is (bounded: the gateways
        heard from least recently go first)."""
        if seq > self.last_seq.get(gw, 0):
            self.last_seq[gw] = seq
            self.last_seq.move_to_end(gw)
            if len(self.last_seq) > MAX_GATEWAYS:
                self.last_seq.popitem(last=False)

    def _stale(self, why: str, gw: str, text: str) -> bool:
        return self._refused(why, gw, f"{why}: {text}")

    def _refused(self, why: str, gw: str, error: str) -> bool:
        """A change refused: counted as ``why`` and by the gateway it claims (bounded: past
        ``MAX_REJECTED_NAMES`` names, "(other)"), logged now and then."""
        self.tally[why] += 1
        claimed = gw if gw in self.rejected_by or len(self.rejected_by) < MAX_REJECTED_NAMES else "(other)"
        self.rejected_by[claimed] += 1
        if self.tally[why] <= 10 or self.tally[why] % 1000 == 0:
            emit(log, logging.WARNING, "cluster_rejected", error=error, count=self.tally[why])
        return False

    def _writer(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            self._wrote.wait(1.0)
            self._wrote.clear()
            if self._stop.is_set():
                return
            try:
                self._flush_once()
                backoff = 0.2
            except Exception as exc:
                self._down(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                self._wrote.set()

    def _flush_once(self) -> None:
        with self._flushing:  # one writer at a time (stop's last flush beside the thread's): in order
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._publish_networks()
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            now = time.time()
            for (table, addr, client), change in batch.items():
                change.seq = self._next_seq()  # in the order the stream gets them
                text = encode(change, self.key, change.ts)
                key = f"{self.prefix}:{table}:{addr}" + (f"@{client}" if client else "")
                if change.record.op in (BLOCK, LOCK):
                    ttl = int(change.record.seconds * 1000 - (now - change.ts) * 1000)
                    if ttl <= 0:
                        continue
                    pipe.set(key, text, px=ttl)
                else:
                    pipe.delete(key)
                    if table == "peers":  # and every client-scoped entry of that address
                        for scoped in self.client.scan_iter(match=f"{key}@*", count=1000):
                            pipe.delete(scoped)
                pipe.xadd(self.stream, {"m": text}, maxlen=self.stream_length, approximate=True)
            pipe.execute()
            self.tally["published"] += len(batch)
        except Exception:
            with self._lock:  # keep what failed, unless something newer came meanwhile
                for k, change in batch.items():
                    self._pending.setdefault(k, change)
            raise


    def _next_seq(self) -> int:
        """Our next sequence number: microseconds of the wall clock, and never less than
        the last plus one (so it grows across restarts too, the clock going forward)."""
        self._seq = max(self._seq + 1, time.time_ns() // 1000)
        return self._seq

    def _publish_networks(self) -> None:
        """Tell the others which networks we serve (signed, so only with a key): at start,
        after a resync and every ``NETWORKS_EVERY`` seconds."""
        if self.key is None or not self.networks or time.monotonic() - self._networks_at < NETWORKS_EVERY:
            return
        text = encode_served(Served(self.name, self.networks, self._next_seq(), round(time.time(), 6)), self.key)
        pipe = self.client.pipeline(transaction=False)
        pipe.set(f"{self.prefix}:gateways:{self.name}", text, px=int(NETWORKS_EVERY * 5000))
        pipe.xadd(self.stream, {"m": text}, maxlen=self.stream_length, approximate=True)
        pipe.execute()
        self._networks_at = time.monotonic()


def _text(value) -> str:
    """A stream entry id as redis-py gives it (bytes, or str with decoding on) as text."""
    return value.decode() if isinstance(value, bytes) else value


def _id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms or 0), int(seq or 0)
