"""Replaying captures through the same engine the daemon runs, with capture time as clock.

Each packet first meets replay's model of the kernel, taken from the same queue policy
the live rules are rendered from (:meth:`p2pwall.policy.QueuePolicy.kernel_verdict`):
what the rules would queue goes through the engine; what the kernel sets would drop, or
the rules let pass unseen, is counted as such.  So the report says what the daemon would
have done.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import pcap
from .config import Settings
from .engine import Engine
from .packet import FROM_LAN, TCP, TO_LAN, UDP, parse
from .plugins import DetectorSet
from .policy import KERNEL_DROP, QUEUE, QueuePolicy


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
    sent: int = 0  # queue-relevant packets seen from the client side
    received: int = 0  # ... and towards it
    detector: str | None = None
    reason: str = ""
    scope: str | None = None  # what the flagged peer is blocked for: "lan" or "client"
    opened_by_lan: bool = True
    payload_out: bool = False  # a TCP payload went out already
    payload_in: bool = False

    def to_dict(self) -> dict:
        from .packet import ip_text

        return {"proto": self.proto, "client": ip_text(self.client), "client_port": self.client_port,
                "peer": ip_text(self.peer), "peer_port": self.peer_port,
                "first_seen": round(self.first_seen, 6), "packets": self.packets,
                "dropped": self.dropped, "detector": self.detector, "reason": self.reason,
                "scope": self.scope}


class Clock:
    """The replay clock: the timestamp of the packet being replayed."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Replay:
    def __init__(self, settings: Settings, detectors: DetectorSet, keep_events: int = 100000):
        self.clock = Clock()
        self.engine = Engine(settings, detectors, clock=self.clock, keep_events=keep_events)
        self.flows: dict[tuple, Flow] = {}
        self.packets = 0
        self.verdicts = {"accept": 0, "drop": 0}
        self.kernel = {"queued": 0, "kernel_drop": 0, "pass": 0}
        self.warnings: list[str] = []
        self.policy = QueuePolicy.build(settings, detectors)
        self.lan = self.engine.lan

    def feed_file(self, path: str, progress=None) -> None:
        """Replay one capture; ``progress(bytes_read)`` is called now and then.  A capture
        cut off mid-record is replayed up to the cut and noted in ``warnings``."""
        try:
            for ts, raw in pcap.PcapSource(path, progress):
                self.feed(ts, raw)
        except pcap.Truncated as exc:
            self.warnings.append(str(exc))

    def feed(self, ts: float, raw: bytes | None) -> None:
        self.packets += 1
        clock = self.clock
        if ts > clock.now:
            clock.now = ts
            self.engine.tick(ts)
        drop = False
        if raw is not None:
            packet = parse(raw)
            if packet is not None and packet.proto in (TCP, UDP):
                drop = self._judge(packet, ts)
        self.verdicts["drop" if drop else "accept"] += 1

    def _judge(self, packet, ts) -> bool:
        src, dst, sp, dp = packet.src, packet.dst, packet.sport, packet.dport
        key = (packet.proto, src, sp, dst, dp) if (src, sp) <= (dst, dp) else (packet.proto, dst, dp, src, sp)
        flow = self.flows.get(key)
        if flow is None:
            src_lan, dst_lan = src in self.lan, dst in self.lan
            if dst_lan and not src_lan:
                flow = Flow(_PROTO[packet.proto], dst, dp, src, sp, ts, opened_by_lan=False)
            else:
                flow = Flow(_PROTO[packet.proto], src, sp, dst, dp, ts)
            self.flows[key] = flow
        flow.packets += 1
        outgoing = src == flow.client and sp == flow.client_port
        if outgoing:
            flow.sent += 1  # like connbytes, this packet counts
        else:
            flow.received += 1
        packet.direction = FROM_LAN if outgoing else TO_LAN
        packet.ts = ts
        if packet.proto == TCP and packet.end > packet.off:
            if outgoing:
                packet.first, flow.payload_out = not flow.payload_out, True
            else:
                packet.first, flow.payload_in = not flow.payload_in, True
        engine = self.engine
        peer_set = None
        locked = False
        peer = None
        if outgoing:
            peer = engine.peers.get(packet.dst, ts)
            if peer is not None:
                if peer.lanwide:
                    peer_set = engine.set_kind(peer.detector)
                elif packet.src in peer.clients:
                    peer_set = "pair"
                else:
                    peer = None
            locked = engine.locks.live(packet.src, ts)
        where = self.policy.kernel_verdict(packet, outgoing, flow.sent, flow.received, peer_set, locked,
                                           solicited=flow.opened_by_lan)
        if where == KERNEL_DROP:
            self.kernel["kernel_drop"] += 1
            flow.dropped += 1
            if flow.detector is None:
                flow.detector = peer.detector if peer is not None else engine.locks.get(packet.src, ts).detector
                flow.reason = "peer blocked" if peer is not None else "client locked"
                flow.scope = ("lan" if peer.lanwide else "client") if peer is not None else None
            return True
        if where != QUEUE:
            self.kernel["pass"] += 1
            return False
        self.kernel["queued"] += 1
        verdict = engine.handle(packet)
        engine.outbox.clear()
        if verdict.detector and flow.detector is None:
            flow.detector, flow.reason = verdict.detector, verdict.reason
            found = engine.peers.get(flow.peer, ts)
            if found is not None:
                flow.scope = "lan" if found.lanwide else "client"
        if verdict.drop:
            flow.dropped += 1
        return verdict.drop

    def report(self) -> dict:
        return {
            "packets": self.packets,
            "verdicts": dict(self.verdicts),
            "kernel": dict(self.kernel),
            "warnings": list(self.warnings),
            "flows": [f.to_dict() for f in self.flows.values()],
            "events": [e.to_dict() for e in self.engine.events.recent],
        }


_PROTO = {TCP: "tcp", UDP: "udp"}
