"""Helpers for testing detectors without a kernel: byte-exact packets and a test engine.

    from p2pwall.testing import udp, tcp, DetectorHarness

    h = DetectorHarness(MyDetector())
    verdict = h.feed(udp("192.168.1.5", "203.0.113.9", 4000, 1214, b"..."))
    assert verdict.drop and h.blocked("203.0.113.9")

p2pwall's own detector tests use exactly these, so a third-party detector is tested the
way the built-in ones are.
"""

from __future__ import annotations

import struct

from .config import Settings, from_dict
from .contract import Verdict
from .engine import Engine
from .packet import ACK, FROM_LAN, PSH, SYN, ip_bytes, parse
from .plugins import DetectorSet, register


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


def tcp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"", flags: int | None = None,
        seq: int = 1, ack: int = 0) -> bytes:
    """A raw TCP packet; flags default to SYN without payload, PSH|ACK with."""
    if flags is None:
        flags = (PSH | ACK) if payload else SYN
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    return _ip(src, dst, 6, header + payload)


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _name(plugin) -> str:
    """The name a plugin object runs under: its installed entry point's, else its own
    ``name`` attribute, else its class name in lower case."""
    from .plugins import entry_point_name

    found = entry_point_name(plugin)
    if found:
        return found
    own = getattr(plugin, "name", None)
    return own if isinstance(own, str) and own else type(plugin).__name__.lower()


def detector_set(*plugins, settings: Settings | None = None, names=None) -> DetectorSet:
    """Register plugin objects exactly as ``p2pwall run`` registers installed ones
    (:func:`p2pwall.plugins.register`), and configure them."""
    names = list(names) if names else [_name(p) for p in plugins]
    found = register([(name, plugin, "test") for name, plugin in zip(names, plugins)])
    found.configure(settings or Settings())
    return found


class RecordingSender:
    """A sender that sends nothing and records what the engine handed it: only spoofs and
    probes that passed every check (LAN, on-link, rate bounds not modelled)."""

    def __init__(self):
        self.sent: list = []

    def send(self, action, key: bytes) -> bool:
        self.sent.append(action)
        return True

    def close(self) -> None:
        pass


class RecordingMirror:
    """A ledger mirror (:mod:`p2pwall.mirrors`) that records every change it is told:
    ``changes`` holds ``(op, where, record)`` with op ``add`` or ``remove``; ``holds``
    is what it would hold now, by where."""

    def __init__(self):
        self.changes: list = []
        self.holds: dict = {}
        self.flushes = 0

    def add(self, where, record) -> None:
        self.changes.append(("add", where, record))
        self.holds.setdefault(where, {})[(record.client, record.address) if where == "pair" else record.address] = record

    def remove(self, where, record) -> None:
        self.changes.append(("remove", where, record))
        self.holds.get(where, {}).pop((record.client, record.address) if where == "pair" else record.address, None)

    def flush(self) -> None:
        self.flushes += 1

    def counters(self) -> dict:
        return {}


class DetectorHarness:
    """An engine around some detectors, with an injected clock, a recording sender and a
    recording ledger mirror (``mirror``).

    ``feed`` returns a :class:`p2pwall.Verdict` (``drop``, ``detector``, ``reason``);
    ``blocked(addr)`` and ``locked(addr)`` tell what the engine's tables hold now;
    ``sent`` lists the spoofs and probes the engine really sent (after its checks);
    ``replay(path)`` runs a capture through the same detectors as ``p2pwall replay``."""

    def __init__(self, *plugins, config: dict | None = None, lan=("192.168.0.0/16",), names=None):
        data = dict(config or {})
        data.setdefault("network", {}).setdefault("lan_networks", list(lan))
        self.settings = from_dict(data)
        self.clock = Clock()
        self.detectors = detector_set(*plugins, settings=self.settings, names=names)
        self.sender = RecordingSender()
        self.mirror = RecordingMirror()
        self.engine = Engine(self.settings, self.detectors, clock=self.clock, keep_events=10000,
                             sender=self.sender, mirrors=[self.mirror])
        self.sent = self.sender.sent

    def feed(self, raw: bytes, direction: str = FROM_LAN, first: bool = True, second: bool = False) -> Verdict:
        """Judge one raw packet; ``first``: for a TCP payload, whether it is the first of
        its connection in its direction (as the kernel marks it live); ``second``: whether
        it is the payload after a first one of a size detectors read by shape (marked so)."""
        packet = parse(raw)
        if packet is None:
            raise ValueError("not a parseable packet")
        packet.direction = direction
        packet.first = first
        packet.second = second
        result = self.engine.handle(packet)
        self._collect()
        return result

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.engine.tick()
        self._collect()

    def _collect(self) -> None:
        self.engine.flush()  # after the verdict: mirrors, sends (checked), events

    def replay(self, path: str) -> dict:
        """The report ``p2pwall replay --format json`` gives for the capture at ``path``,
        with these detectors and this configuration."""
        from .replay import Replay

        rp = Replay(self.settings, self.detectors)
        rp.feed_file(path)
        rp.run()
        return rp.report()

    def blocked(self, addr) -> bool:
        """Whether ``addr`` (text or packed) is a blocked peer now."""
        return self.engine.peers.live(ip_bytes(addr), self.clock.now)

    def locked(self, addr) -> bool:
        """Whether LAN host ``addr`` is time-locked now."""
        return self.engine.locks.live(ip_bytes(addr), self.clock.now)

    def peer(self, addr):
        """The peer table's entry for ``addr`` (``until``, ``detector``, ``reason``, ``note``) or None."""
        return self.engine.peers.get(ip_bytes(addr), self.clock.now)

    def lock(self, addr):
        return self.engine.locks.get(ip_bytes(addr), self.clock.now)

    def counter(self, name: str) -> int:
        return self.engine.all_counters().get(name, 0)

    def events(self, kind: str | None = None):
        return [e for e in self.engine.events.recent if kind is None or e.kind == kind]
