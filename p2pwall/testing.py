"""Helpers for testing detectors without a kernel: byte-exact packets and a test engine.

    from p2pwall.testing import udp, tcp, DetectorHarness

    h = DetectorHarness(MyDetector())
    drop, detector, reason = h.feed(udp("192.168.1.5", "203.0.113.9", 4000, 1214, b"..."))

p2pwall's own detector tests use exactly these, so a third-party detector is tested the
way the built-in ones are.
"""

from __future__ import annotations

import struct

from .config import Settings, from_dict
from .engine import Engine
from .packet import FROM_LAN, SYN, ACK, PSH, ip_bytes, parse
from .plugins import Detector, DetectorInfo, DetectorSet, _coerce_info
from . import hookspecs


def _ipv4(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0,
                         ip_bytes(src), ip_bytes(dst))
    return header + l4


def _ipv6(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, ip_bytes(src), ip_bytes(dst)) + l4


def _ip(src, dst, proto, l4):
    return (_ipv6 if ":" in src else _ipv4)(src, dst, proto, l4)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    """A raw IPv4/IPv6 UDP packet (checksum left zero)."""
    return _ip(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)


def tcp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"", flags: int | None = None) -> bytes:
    """A raw TCP packet; flags default to SYN without payload, PSH|ACK with."""
    if flags is None:
        flags = (PSH | ACK) if payload else SYN
    header = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
    return _ip(src, dst, 6, header + payload)


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def detector_set(*plugins, settings: Settings | None = None) -> DetectorSet:
    """Register plugin objects the way entry points would, and configure them."""
    import pluggy

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    detectors = []
    for plugin in plugins:
        raw = plugin.p2pwall_detector_info()
        name = raw.name if isinstance(raw, DetectorInfo) else raw["name"]
        pm.register(plugin, name=name)
        info = _coerce_info(name, raw)
        info.origin = "test"
        detectors.append(Detector(name, plugin, info))
    found = DetectorSet(detectors, pm)
    found.configure(settings or Settings())
    return found


class DetectorHarness:
    """An engine around some detectors, with an injected clock and a recording outbox."""

    def __init__(self, *plugins, config: dict | None = None, lan=("192.168.0.0/16",)):
        data = dict(config or {})
        data.setdefault("network", {}).setdefault("lan_networks", list(lan))
        self.settings = from_dict(data)
        self.clock = Clock()
        self.detectors = detector_set(*plugins, settings=self.settings)
        self.engine = Engine(self.settings, self.detectors, clock=self.clock, keep_events=10000)
        self.sent: list = []

    def feed(self, raw: bytes, direction: str = FROM_LAN):
        """Judge one raw packet; returns (drop, detector, reason)."""
        packet = parse(raw)
        if packet is None:
            raise ValueError("not a parseable packet")
        packet.direction = direction
        result = self.engine.handle(packet)
        self.sent.extend(a for _, a in self.engine.outbox)
        self.engine.outbox.clear()
        return result

    def advance(self, seconds: float):
        self.clock.advance(seconds)
        self.engine.tick()
        self.sent.extend(a for _, a in self.engine.outbox)
        self.engine.outbox.clear()

    def events(self, kind: str | None = None):
        return [e for e in self.engine.events.recent if kind is None or e.kind == kind]
