"""Replaying captures through the same engine the daemon runs, with capture time as clock.

Only what the live rules would queue reaches the engine (LAN-sent UDP, TCP SYNs, the first
payload packets of a connection, narrowed by the detectors' strings), so the report says
what the daemon would have done.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import pcap
from .config import Settings
from .engine import Engine
from .packet import FROM_LAN, TCP, TO_LAN, UDP, parse
from .plugins import DetectorSet


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
    client_payloads: int = 0
    detector: str | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        from .packet import ip_text

        return {"proto": self.proto, "client": ip_text(self.client), "client_port": self.client_port,
                "peer": ip_text(self.peer), "peer_port": self.peer_port,
                "first_seen": round(self.first_seen, 6), "packets": self.packets,
                "dropped": self.dropped, "detector": self.detector, "reason": self.reason}


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
        wants = detectors.wants()
        self.want_udp = "udp" in wants
        self.want_payload = "tcp_payload" in wants
        self.strings = detectors.tcp_strings() if self.want_payload else []
        self.payload_packets = settings.payload_packets
        self.lan = self.engine.lan

    def feed_file(self, path: str, progress=None) -> None:
        """Replay one capture; ``progress(bytes_read)`` is called now and then."""
        for ts, raw in pcap.read(path, progress):
            self.feed(ts, raw)

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
                flow = Flow(_PROTO[packet.proto], dst, dp, src, sp, ts)
            else:
                flow = Flow(_PROTO[packet.proto], src, sp, dst, dp, ts)
            self.flows[key] = flow
        flow.packets += 1
        outgoing = src == flow.client and sp == flow.client_port
        packet.direction = FROM_LAN if outgoing else TO_LAN
        packet.ts = ts
        if not outgoing or not self._queued(packet, flow):
            return False
        drop, detector, reason = self.engine.handle(packet)
        self.engine.outbox.clear()
        if detector and flow.detector is None:
            flow.detector, flow.reason = detector, reason
        if drop:
            flow.dropped += 1
        return drop

    def _queued(self, packet, flow) -> bool:
        """Would the live rules have queued this packet?"""
        if packet.proto == UDP:
            return self.want_udp
        if packet.is_syn:
            return True  # the core always sees SYNs (peer table, time lock)
        if not self.want_payload or not len(packet.payload):
            return False
        flow.client_payloads += 1
        if flow.client_payloads > self.payload_packets:
            return False
        if self.strings is None:
            return True
        data = packet.data
        return any(s in data for s in self.strings)

    def report(self) -> dict:
        return {
            "packets": self.packets,
            "verdicts": dict(self.verdicts),
            "flows": [f.to_dict() for f in self.flows.values()],
            "events": [e.to_dict() for e in self.engine.events.recent],
        }


_PROTO = {TCP: "tcp", UDP: "udp"}
