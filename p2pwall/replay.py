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
    sent: int = 0  # queue-relevant packets seen from the client side
    received: int = 0  # ... and towards it
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
        self.wants = detectors.wants()
        self.strings = detectors.tcp_strings()
        self.strings_in = detectors.tcp_strings("tcp_payload_in")
        self.prefixes = detectors.tcp_prefixes()
        self.payload_packets = settings.payload_packets
        self.udp_packets = settings.udp_packets
        self.lan = self.engine.lan

    def feed_file(self, path: str, progress=None) -> None:
        """Replay one capture; ``progress(bytes_read)`` is called now and then."""
        for ts, raw in pcap.PcapSource(path, progress):
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
        if not self._queued(packet, flow, outgoing):
            return False
        drop, detector, reason = self.engine.handle(packet)
        self.engine.outbox.clear()
        if detector and flow.detector is None:
            flow.detector, flow.reason = detector, reason
        if drop:
            flow.dropped += 1
        return drop

    def _queued(self, packet, flow, outgoing: bool) -> bool:
        """Would the live rules (and kernel sets) have handed this packet to the engine?
        Packets the kernel sets drop are judged by the engine too: same verdict."""
        engine = self.engine
        if outgoing:
            flow.sent += 1  # like connbytes, the SYN counts
            if engine.peers.live(packet.dst, self.clock.now):
                return True
            if packet.is_syn:
                return True  # the core always sees SYNs (peer table, time lock)
            if packet.proto == UDP:
                return "udp" in self.wants and (not self.udp_packets or flow.sent <= self.udp_packets)
            return ("tcp_payload" in self.wants and packet.end > packet.off
                    and flow.sent <= self.payload_packets + 2
                    and (_has(packet, self.strings) or _starts(packet, self.prefixes)))
        flow.received += 1
        if packet.proto == UDP:
            return "udp_in" in self.wants and (not self.udp_packets or flow.received <= self.udp_packets)
        return ("tcp_payload_in" in self.wants and packet.end > packet.off and not packet.is_syn
                and flow.received <= self.payload_packets + 2 and _has(packet, self.strings_in))

    def report(self) -> dict:
        return {
            "packets": self.packets,
            "verdicts": dict(self.verdicts),
            "flows": [f.to_dict() for f in self.flows.values()],
            "events": [e.to_dict() for e in self.engine.events.recent],
        }


_PROTO = {TCP: "tcp", UDP: "udp"}


def _starts(packet, prefixes) -> bool:
    return bool(prefixes) and packet.data.startswith(tuple(prefixes))


def _has(packet, strings) -> bool:
    if strings is None:
        return True
    data = packet.data
    return any(s in data for s in strings)
