"""Replaying captures through the same engine the daemon runs, with capture time as clock.

Each packet first meets replay's model of the kernel, taken from the same queue policy
the live rules are rendered from (:mod:`p2pwall.kernelmodel`): what the rules would queue goes through the engine; what the
kernel sets would drop, or the rules let pass unseen, is counted as such.  So the report
says what the daemon would have done.

The model follows connection tracking: packets belong to connections (a UDP flow idle
past conntrack's timeout, or a TCP SYN after a FIN or RST on the same addresses and
ports, starts a new one), and the connbytes-style counts are per connection and
direction.  The kernel sets are modelled too (:class:`KernelModel`): the engine writes to
them as it writes to the real ones, with the same timeouts, and a packet the engine
never sees is dropped if the set held its destination when it passed.

For speed on big captures the work is done in columns (:mod:`p2pwall.capindex`, numpy):
only the packets the rules would queue (the first few of each connection, and SYNs)
are turned into packet views and handed to the engine, one by one and in order.
Not modelled: the per-host rate bound before the queue (``[queue] per_host_rate``).

Why one module past 400 lines: the columnar pass (``_Run``) is one algorithm over shared
columns, read top to bottom; the kernel model is in :mod:`p2pwall.kernelmodel`, the
capture reading in :mod:`p2pwall.capindex`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import capindex
from .config import Settings
from .engine import Engine
from .kernelmodel import BASE_CLEAN, BASE_QUEUE, KERNEL_DROP, PASS, QUEUE, KernelColumns, KernelModel, kernel_base, \
    kernel_with_sets, udp_lock_port
from .kernelsets import parse_comment
from .packet import FROM_LAN, TCP, TO_LAN, UDP, ip_text, parse
from .plugins import DetectorSet
from .policy import QueuePolicy

_V6_KEY = 1 << 128
_LOW64 = (1 << 64) - 1

# conntrack's defaults (nf_conntrack_udp_timeout, ..._udp_timeout_stream, ..._tcp_timeout_established)
UDP_TIMEOUT, UDP_STREAM_TIMEOUT, TCP_TIMEOUT = 30.0, 120.0, 432000.0


@dataclass(slots=True)
class Flow:
    proto: str
    client: bytes
    client_port: int
    peer: bytes
    peer_port: int
    first_seen: float
    packets: int = 0
    dropped: int = 0
    detector: str | None = None
    reason: str = ""
    scope: str | None = None  # what the flagged peer is blocked for: "lan" or "client"

    def to_dict(self) -> dict:
        return {"proto": self.proto, "client": ip_text(self.client), "client_port": self.client_port,
                "peer": ip_text(self.peer), "peer_port": self.peer_port,
                "first_seen": round(self.first_seen, 6), "packets": self.packets,
                "dropped": self.dropped, "detector": self.detector, "reason": self.reason,
                "scope": self.scope}


class Clock:
    """The replay clock: the latest timestamp replayed so far."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Replay:
    def __init__(self, settings: Settings, detectors: DetectorSet, keep_events: int = 100000):
        self.clock = Clock()
        self.policy = QueuePolicy.build(settings, detectors)
        self.model = (KernelModel(self.clock, self.policy.pair_sets, self.policy.udp_lockers)
                      if self.policy.kernel_sets else None)
        self.engine = Engine(settings, detectors, clock=self.clock, keep_events=keep_events,
                             mirrors=[self.model] if self.model is not None else [])
        self.lan = self.engine.lan
        self.flows: list[Flow] = []
        self.packets = 0
        self.verdicts = {"accept": 0, "drop": 0}
        self.kernel = {"queued": 0, "kernel_drop": 0, "pass": 0}
        self.warnings: list[str] = []
        self._segments: list[capindex.Segment] = []
        self._fed: list[tuple[float, bytes | None]] = []

    # ------------------------------------------------------------------ input
    def feed_file(self, path: str, progress=None) -> None:
        """Add one capture; ``progress(bytes_read)`` is called now and then while it is
        read.  A capture cut off mid-record is replayed up to the cut and noted in
        ``warnings``.  Raises pcap.PcapError for what cannot be read at all."""
        self._close_fed()
        seg = capindex.read_file(path, progress)
        if seg.warning:
            self.warnings.append(seg.warning)
        self._segments.append(seg)

    def feed(self, ts: float, raw: bytes | None) -> None:
        """Add one packet (IP bytes, or None for a frame that is not IP)."""
        self._fed.append((ts, raw))

    def _close_fed(self) -> None:
        if self._fed:
            self._segments.append(capindex.from_records(self._fed))
            self._fed = []

    def run(self) -> None:
        """Replay everything added since the last run, in the order it was added."""
        self._close_fed()
        segments, self._segments = self._segments, []
        if segments:
            _Run(self, segments).replay()

    def report(self) -> dict:
        self.run()
        return {
            "packets": self.packets,
            "verdicts": dict(self.verdicts),
            "kernel": dict(self.kernel),
            "warnings": list(self.warnings),
            "flows": [f.to_dict() for f in self.flows],
            "events": [e.to_dict() for e in self.engine.events.recent],
        }


_PROTO = {TCP: "tcp", UDP: "udp"}


def _mix(*cols) -> np.ndarray:
    """A 64-bit hash of equal-length integer columns (grouping key; collisions checked)."""
    h = np.full(len(cols[0]), 0x9E3779B97F4A7C15, np.uint64)
    for c in cols:
        h ^= c.astype(np.uint64)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
    return h


def _groups(cols) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows with equal ``cols``: each row's group id, the rows grouped (``order``: by
    group, in row order within one) and where each group starts in ``order``."""
    m = len(cols[0])
    if not m:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty

    def changes(order: np.ndarray) -> np.ndarray:  # where, in this order, a key differs from the one before
        out = np.zeros(m - 1, bool)
        for c in cols:
            g = c[order]
            out |= g[1:] != g[:-1]
        return out

    h = _mix(*cols)
    order = np.argsort(h, kind="stable")
    hs = h[order]
    changed = changes(order)
    if np.count_nonzero(changed) != np.count_nonzero(hs[1:] != hs[:-1]):
        # two keys with one hash (never seen, but possible): group them exactly instead
        order = np.lexsort(cols[::-1])
        changed = changes(order)
    new = np.ones(m, bool)
    new[1:] = changed
    starts = np.flatnonzero(new)
    ids = np.empty(m, np.int64)
    ids[order] = np.cumsum(new) - 1
    return ids, order, starts


def _count(x: np.ndarray, inst: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """For rows grouped by instance: how many rows of its instance so far (this one
    included) have ``x`` set."""
    c = np.cumsum(x, dtype=np.int32)
    return c - (c[starts] - x[starts])[inst]


class _Run:
    """One replay of some segments, in columns (see the module docstring)."""

    def __init__(self, rp: Replay, segments: list[capindex.Segment]):
        self.rp, self.segments = rp, segments

    def _columns(self) -> None:
        segs = self.segments
        ts = np.concatenate([s.ts for s in segs])
        self.n = len(ts)
        eff = np.maximum.accumulate(np.maximum(ts, self.rp.clock.now)) if self.n else ts
        parts = [capindex.headers(s) for s in segs]
        base = np.cumsum([0] + [len(s) for s in segs[:-1]])
        def cat(arrays):
            return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

        local = cat([h.rows for h in parts])
        self.rows = cat([h.rows + b for h, b in zip(parts, base)]) if len(parts) > 1 else local
        self.seg = cat([np.full(len(h.rows), k, np.int64) for k, h in enumerate(parts)])
        self.ip_at = cat([s.ip[h.rows] for s, h in zip(segs, parts)])  # where each IP header is
        self.ip_len = cat([s.iplen[h.rows] for s, h in zip(segs, parts)])
        for name in ("proto", "v6", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "flags",
                     "payoff", "paylen", "syn", "fin_rst"):
            setattr(self, name, cat([getattr(h, name) for h in parts]))
        self.ts, self.t = ts[self.rows], eff[self.rows]
        self.last_time = float(eff[-1]) if self.n else self.rp.clock.now

    def _connections(self) -> None:
        """Flows (by addresses and ports), the connections within them, and each
        packet's direction and connbytes-style counts."""
        six = bool(self.v6.any())  # (the high halves are all zero without IPv6)
        a_is_src = (self.src_lo < self.dst_lo) | ((self.src_lo == self.dst_lo) & (self.sport <= self.dport))
        if six:
            a_is_src = (self.src_hi < self.dst_hi) | ((self.src_hi == self.dst_hi) & a_is_src)
        pick = lambda x, y: np.where(a_is_src, x, y)  # noqa: E731
        ports = (self.proto.astype(np.uint64) | (self.v6.astype(np.uint64) << np.uint64(8))
                 | (pick(self.sport, self.dport).astype(np.uint64) << np.uint64(16))
                 | (pick(self.dport, self.sport).astype(np.uint64) << np.uint64(32)))
        src, dst = self._address_numbers(six)
        self.flow, order, flow_starts = _groups([ports, (pick(src, dst) << np.uint64(32)) | pick(dst, src)])
        del ports, src, dst
        self.flow_first = order[flow_starts]  # each flow's first packet
        g_t, g_proto = self.t[order], self.proto[order]
        g_a, g_syn, g_fr = a_is_src[order], self.syn[order], self.fin_rst[order]
        m = len(order)
        new_flow = np.zeros(m, bool)
        new_flow[flow_starts] = True
        dt = np.zeros(m)
        dt[1:] = g_t[1:] - g_t[:-1]
        dt[new_flow] = 0.0
        new_conn = new_flow.copy()
        flow_start = np.maximum.accumulate(np.where(new_flow, np.arange(m, dtype=np.int32), 0))

        def upto(x: np.ndarray) -> np.ndarray:  # upto(x)[i]: rows before i with x set
            return np.concatenate([[0], np.cumsum(x, dtype=np.int32)])

        # TCP: a SYN after a FIN or RST of the connection it is in, or a silence longer
        # than conntrack keeps an established one, starts a new connection.  Whether a
        # FIN or RST came since the previous such point in the flow says it: had one come
        # before that point, the point itself would have started a new connection.
        tcp = np.flatnonzero(~new_flow & (g_proto == TCP) & (g_syn | (dt > TCP_TIMEOUT)))
        if len(tcp):
            prev = flow_start[tcp].copy()
            same = flow_start[tcp][1:] == flow_start[tcp][:-1]
            prev[1:][same] = tcp[:-1][same]
            fin = upto(g_fr)
            new_conn[tcp[(dt[tcp] > TCP_TIMEOUT) | (fin[tcp] > fin[prev])]] = True
        # UDP: silent past conntrack's timeout (longer once both sides spoke); few, in order
        udp = np.flatnonzero(~new_flow & (g_proto == UDP) & (dt > UDP_TIMEOUT))
        if len(udp):
            ca, cb = upto(g_a), upto(~g_a)
            start = group = -1
            for q in udp.tolist():
                if flow_start[q] != group:
                    group = start = int(flow_start[q])
                replied = ca[q] > ca[start] and cb[q] > cb[start]
                if dt[q] > UDP_STREAM_TIMEOUT or not replied:
                    new_conn[q] = True
                    start = q
        g_conn = np.cumsum(new_conn, dtype=np.int32) - 1
        starts = np.flatnonzero(new_conn)
        # who opened each connection: its first packet's sender, unless that came from
        # outside towards the LAN (then the LAN host is the client and the flow unsolicited)
        first = order[starts]
        lan = self.rp.lan
        src_lan = lan.member_columns(self.src_hi[first], self.src_lo[first], self.v6[first])
        dst_lan = lan.member_columns(self.dst_hi[first], self.dst_lo[first], self.v6[first])
        by_src = ~(dst_lan & ~src_lan)
        self.flow_by_src = by_src[g_conn[flow_starts]]  # a flow's first connection names its client
        g_by_src = by_src[g_conn]
        g_out = (g_a == g_a[starts][g_conn]) == g_by_src
        rank = np.arange(1, m + 1, dtype=np.int32) - starts.astype(np.int32)[g_conn]  # its place in its connection
        g_sent = _count(g_out, g_conn, starts)
        g_recv = rank - g_sent
        # the first payload of each direction of a TCP connection (what the kernel marks)
        g_pay = (g_proto == TCP) & (self.paylen[order] > 0)
        pays = _count(g_pay, g_conn, starts)
        pays_out = _count(g_out & g_pay, g_conn, starts)
        g_first = ~g_pay | (np.where(g_out, pays_out, pays - pays_out) == 1)
        g_second = self._second(order, g_conn, g_out & g_pay, pays_out)
        g_short = self._after_short(order, g_conn, g_out, g_pay & g_first, g_by_src)
        self.outgoing, self.sent, self.received, self.first, self.solicited, self.second, self.after_short = (
            self._scatter(order, g) for g in (g_out, g_sent, g_recv, g_first, g_by_src, g_second, g_short))

    def _after_short(self, order, g_conn, g_out, g_first_pay, g_solicited) -> np.ndarray:
        """The payloads of each connection after a short first payload of either direction
        (where the rules mark one: what they queue after it, to be joined)."""
        from .kernelmodel import short_first

        wants = self.rp.policy.wants
        marked = np.zeros(len(order), bool)
        if "tcp_payload" in wants:
            marked |= g_out
        if "tcp_payload_in" in wants:
            marked |= ~g_out & g_solicited
        rows = np.flatnonzero(g_first_pay & marked & short_first(self.ip_len[order], self.v6[order]))
        if not len(rows):
            return np.zeros(len(order), bool)
        at = np.full(int(g_conn[-1]) + 1, len(order), np.int64)
        np.minimum.at(at, g_conn[rows], rows)
        g_pay = (self.proto[order] == TCP) & (self.paylen[order] > 0)
        return g_pay & (np.arange(len(order)) > at[g_conn])

    def _second(self, order, g_conn, g_out_pay, pays_out) -> np.ndarray:
        """The second payload out of each connection whose first one had a size some
        detector reads by shape, off the service ports (what the rules queue after it)."""
        from .kernelmodel import sized_first

        sizes = self.rp.policy.first_sizes
        if sizes is None:
            return np.zeros(len(order), bool)
        one = np.flatnonzero(g_out_pay & (pays_out == 1))
        sized = np.zeros(int(g_conn[-1]) + 1 if len(g_conn) else 0, bool)
        sized[g_conn[one]] = sized_first(sizes, self.paylen[order][one], self.dport[order][one])
        return g_out_pay & (pays_out == 2) & sized[g_conn]

    def _address_numbers(self, six: bool) -> tuple[np.ndarray, np.ndarray]:
        """Each packet's source and destination as numbers below 2**32, for grouping:
        IPv4 addresses as they are, IPv6 ones numbered in this replay (the family is in
        the flow key too, so the two never meet).  Two columns make a flow key, not five."""
        src, dst = self.src_lo.copy(), self.dst_lo.copy()
        if six:
            rows = np.flatnonzero(self.v6)
            ids, _, _ = _groups([np.concatenate([self.src_hi[rows], self.dst_hi[rows]]),
                                 np.concatenate([self.src_lo[rows], self.dst_lo[rows]])])
            ids = ids.astype(np.uint64)
            src[rows], dst[rows] = ids[:len(rows)], ids[len(rows):]
        return src, dst

    @staticmethod
    def _scatter(order: np.ndarray, grouped: np.ndarray) -> np.ndarray:
        out = np.empty_like(grouped)
        out[order] = grouped
        return out

    def _keys(self, rows: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> list[int]:
        """The kernel model's keys (:meth:`KernelModel.key`) of these rows' addresses."""
        low = lo[rows].tolist()
        v6 = self.v6[rows]
        if not v6.any():
            return low
        return [(h << 64 | x | _V6_KEY) if six else x for h, x, six in zip(hi[rows].tolist(), low, v6.tolist())]

    def _answered(self, prefixes: tuple[bytes, ...]) -> np.ndarray:
        """The LAN's UDP datagrams whose payload starts with one of ``prefixes`` (1-4 bytes)."""
        out = np.zeros(len(self.proto), bool)
        rows = np.flatnonzero(self.outgoing & (self.proto == UDP) & (self.paylen >= min(len(p) for p in prefixes)))
        if len(rows):
            out[rows] = capindex.starts_with(self.segments, self.seg[rows], self.payoff[rows], self.paylen[rows],
                                             prefixes)
        return out

    def _payloads(self, rows: np.ndarray) -> list[bytes]:
        bufs = [s.buf for s in self.segments]
        return [bufs[k][a:a + n] for k, a, n in  # slices of mmap and bytes are bytes
                zip(self.seg[rows].tolist(), self.payoff[rows].tolist(), self.paylen[rows].tolist())]

    def replay(self) -> None:
        rp = self.rp
        self._columns()
        self._connections()
        policy, engine, model, clock = rp.policy, rp.engine, rp.model, rp.clock
        cols = KernelColumns(self.proto, self.outgoing, self.solicited, self.sent, self.received, self.syn,
                             self.paylen, self.first, self.sport, self.dport, self.v6, self._payloads,
                             self.second, self.ip_len, self.after_short)
        base = kernel_base(policy, cols)
        engine_sees = base == BASE_QUEUE
        answered = np.zeros(len(base), bool)
        if policy.kernel_sets:
            engine_sees |= self.outgoing & self.syn  # a SYN meets the lock and peer sets
            if policy.udp_answered:  # and so does a datagram a detector answers even to a blocked peer
                answered = self._answered(policy.udp_answered)
                engine_sees |= answered
        m = len(base)
        dropped = np.zeros(m, bool)
        flagged: dict[int, tuple[int, str, str, str | None]] = {}  # flow -> (packet, detector, reason, scope)
        queued = kernel_drops = 0
        seen = np.flatnonzero(engine_sees)
        # the engine's share, one packet at a time: plain Python values from here on
        times, outs, syns = self.t[seen].tolist(), self.outgoing[seen].tolist(), self.syn[seen].tolist()
        bases, flows, firsts = base[seen].tolist(), self.flow[seen].tolist(), self.first[seen].tolist()
        seconds = self.second[seen].tolist()
        answers = answered[seen].tolist()
        stamps = self.ts[seen].tolist()
        in_seg, ip_at, ip_len = self.seg[seen].tolist(), self.ip_at[seen].tolist(), self.ip_len[seen].tolist()
        bufs = [s.buf for s in self.segments]
        udp_locking = model is not None and bool(policy.udp_lockers)
        if model is not None:
            srcs, dsts = self._keys(seen, self.src_hi, self.src_lo), self._keys(seen, self.dst_hi, self.dst_lo)
            live_peers, live_nolock = model.live["peers"], model.live["nolock"]
            live_pairs = model.live["pair"]
            if udp_locking:
                protos, dports = self.proto[seen].tolist(), self.dport[seen].tolist()
        for k, j in enumerate(seen.tolist()):
            now = times[k]
            if now > clock.now:
                clock.now = now
                if model is not None:
                    model.at = j - 1  # what the tick takes out is gone for this packet already
                engine.tick(now)
                engine.drain_events()
            out, syn = outs[k], syns[k]
            peer_set = note = lock_note = None
            udp_locked = False
            if model is not None:
                model.at = j  # what this packet makes the engine change applies from the next one
                if out:
                    dst = dsts[k]
                    if (bases[k] == BASE_CLEAN and dst not in live_peers and dst not in live_nolock
                            and not (live_pairs and (srcs[k], dst) in live_pairs)):
                        continue  # a SYN in a clean connection that no peer set holds: passed
                    peer_set, note, lock_note = model.judge(srcs[k], dst, j, now)
                    if udp_locking and lock_note is not None and protos[k] == UDP and udp_lock_port(dports[k]):
                        udp_locked = model.holds("udplocks", srcs[k], j, now) is not None
            if peer_set is None and lock_note is None:  # no set holds anything for it: the rules decide
                where = QUEUE if bases[k] == BASE_QUEUE else PASS
            else:
                where = kernel_with_sets(policy, bases[k], out, syn, peer_set, lock_note is not None, udp_locked,
                                         answers[k])
            flow = flows[k]
            if where == KERNEL_DROP:
                kernel_drops += 1
                dropped[j] = True
                if flow not in flagged:
                    if peer_set is not None:
                        flagged[flow] = (j, _detector(note), "peer blocked", "client" if peer_set == "pair" else "lan")
                    else:
                        flagged[flow] = (j, _detector(lock_note), "client locked", None)
                continue
            if where != QUEUE:
                continue
            queued += 1
            start = ip_at[k]
            packet = parse(bufs[in_seg[k]][start:start + ip_len[k]])
            if packet is None:
                continue
            packet.direction = FROM_LAN if out else TO_LAN
            packet.ts = stamps[k]
            if packet.proto == TCP and packet.end > packet.off:
                packet.first = firsts[k]
                packet.second = seconds[k]
            verdict = engine.handle(packet)
            engine.outbox.clear()  # spoofs and probes are not sent from a capture
            engine.drain_events()  # after each packet: the events keep the packets' order
            if verdict.drop:
                dropped[j] = True
            if verdict.detector and flow not in flagged:
                peer = packet.dst if out else packet.src
                found = engine.peers.get(peer, now)
                flagged[flow] = (j, verdict.detector, verdict.reason,
                                 None if found is None else ("lan" if found.lanwide else "client"))
        if self.last_time > clock.now:
            clock.now = self.last_time
            if model is not None:
                model.at = m - 1  # what this last tick takes out was there for every packet before
            engine.tick(self.last_time)
            engine.drain_events()
        unseen = self._unseen_drops(engine_sees) if model is not None else {}
        for j, (detector, scope) in unseen.items():
            dropped[j] = True
            flow = int(self.flow[j])
            if flow not in flagged or flagged[flow][0] > j:
                flagged[flow] = (j, detector, "client locked" if scope is None else "peer blocked", scope)
        kernel_drops += len(unseen)
        rp.packets += self.n
        drops = int(dropped.sum())
        rp.verdicts["drop"] += drops
        rp.verdicts["accept"] += self.n - drops
        rp.kernel["queued"] += queued
        rp.kernel["kernel_drop"] += kernel_drops
        rp.kernel["pass"] += m - queued - kernel_drops
        self._flows(dropped, flagged)

    def _unseen_drops(self, engine_sees: np.ndarray) -> dict[int, tuple[str | None, str]]:
        """Packets the engine never saw that a kernel set dropped: packet -> (detector,
        scope), scope None for a locked client's UDP (the udplock chain)."""
        model = self.rp.model
        rows = np.flatnonzero(self.outgoing & ~engine_sees)
        found: dict[int, tuple[str | None, str]] = {}
        if not len(rows):
            return found
        lanwide = [((k,), v) for kind in ("peers", "nolock") for k, v in model.history[kind].items()]
        pairs = list(model.history["pair"].items())
        udp_locked = [((k,), v) for k, v in model.history["udplocks"].items()]
        udp_rows = rows
        if udp_locked:  # the udplock chain takes a locked sender's UDP but to the service ports
            from .plugins import UDP_SERVICE_PORTS

            udp_rows = rows[(self.proto[rows] == UDP) & ~capindex.one_of(self.dport[rows], UDP_SERVICE_PORTS)]
        for keys, cols, scope, rows in (
                (lanwide, (self.dst_hi, self.dst_lo, self.v6), "lan", rows),
                (pairs, (self.src_hi, self.src_lo, self.dst_hi, self.dst_lo, self.v6), "client", rows),
                (udp_locked, (self.src_hi, self.src_lo, self.v6), None, udp_rows)):  # by sender
            if not keys or not len(rows):
                continue
            h = _mix(*(c[rows] for c in cols))
            order = np.argsort(h, kind="stable")
            hs = h[order]
            for key, lives in keys:
                halves = [x for a in key for x in ((a >> 64) & _LOW64 if a & _V6_KEY else 0, a & _LOW64)]
                v6 = bool(key[0] & _V6_KEY)
                want = [np.array([x], np.uint64) for x in halves] + [np.array([v6])]
                hk = _mix(*want)[0]
                lo, hi = np.searchsorted(hs, hk, "left"), np.searchsorted(hs, hk, "right")
                if lo == hi:
                    continue
                js = rows[order[lo:hi]]
                exact = np.ones(len(js), bool)
                for c, w in zip(cols, want):
                    exact &= c[js].astype(np.uint64) == w[0].astype(np.uint64)
                js = np.sort(js[exact])
                for first, until, removed, note in lives:
                    live = (js >= first) & (self.t[js] < until)
                    if removed is not None:
                        live &= js < removed
                    for j in js[live].tolist():
                        found.setdefault(j, (_detector(note), scope))
        return found

    def _flows(self, dropped: np.ndarray, flagged: dict) -> None:
        rp = self.rp
        first = self.flow_first
        if not len(first):
            return
        packets = np.bincount(self.flow, minlength=len(first))
        drops = np.bincount(self.flow, weights=dropped, minlength=len(first)).astype(np.int64)
        by_src = self.flow_by_src
        addr = capindex.address
        for k in np.argsort(first, kind="stable").tolist():
            j = int(first[k])
            v6 = bool(self.v6[j])
            src, dst = addr(self.src_hi[j], self.src_lo[j], v6), addr(self.dst_hi[j], self.dst_lo[j], v6)
            sp, dp = int(self.sport[j]), int(self.dport[j])
            if not by_src[k]:
                src, dst, sp, dp = dst, src, dp, sp
            flow = Flow(_PROTO[int(self.proto[j])], src, sp, dst, dp, float(self.ts[j]),
                        int(packets[k]), int(drops[k]))
            if k in flagged:
                _, flow.detector, flow.reason, flow.scope = flagged[k]
            rp.flows.append(flow)


def _detector(note: str | None) -> str | None:
    parts = parse_comment(note or "")
    return parts[0] if parts else None
