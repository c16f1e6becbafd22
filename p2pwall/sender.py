"""Sending spoofs and probes: crafted with scapy, sent with a raw socket, rate limited.

Only the engine calls this, and only for addresses it has checked are inside the LAN.
"""

from __future__ import annotations

import socket
import time

from .actions import Probe, Spoof
from .packet import ip_bytes, ip_text


PROBE_PORT = 40123  # the firewall's source port for probes that name none


class RateLimiter:
    """Token buckets: one for everything, one per destination (bounded)."""

    BURST_SECONDS = 2.0  # a bucket holds this many seconds' worth: bursts pass, floods don't

    def __init__(self, per_second: float, per_client: float, clock=time.monotonic, max_clients=4096):
        self.rate, self.per_client, self.clock = per_second, per_client, clock
        self.max_clients = max_clients
        self._all = (per_second * self.BURST_SECONDS, clock())
        self._clients: dict[bytes, tuple[float, float]] = {}

    def _take(self, bucket, rate, now):
        tokens, last = bucket
        tokens = min(rate * self.BURST_SECONDS, tokens + (now - last) * rate)
        if tokens < 1.0:
            return False, (tokens, now)
        return True, (tokens - 1.0, now)

    def allow(self, key: bytes) -> bool:
        now = self.clock()
        ok, bucket = self._take(self._all, self.rate, now)
        if not ok:
            self._all = bucket
            return False
        client = self._clients.get(key, (self.per_client * self.BURST_SECONDS, now))
        ok_c, client = self._take(client, self.per_client, now)
        if not ok_c:
            self._clients[key] = client
            return False
        self._all = bucket
        if len(self._clients) >= self.max_clients and key not in self._clients:
            self._clients.clear()
        self._clients[key] = client
        return True


def own_address_towards(dst: str) -> str:
    """The address this host uses to reach ``dst`` (its LAN address, for a LAN host)."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((dst, 9))  # UDP connect sends nothing; it only picks a route
        return s.getsockname()[0]


class RawSender:
    """Sends UDP datagrams with a chosen source through raw IPv4/IPv6 sockets."""

    def __init__(self, per_second: float = 1000.0, per_client: float = 100.0):
        from scapy.layers.inet import IP, UDP  # scapy is slow to import: only when sending
        from scapy.layers.inet6 import IPv6

        self._ip, self._udp, self._ip6 = IP, UDP, IPv6
        self.limiter = RateLimiter(per_second, per_client)
        self._sock4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            self._sock6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except OSError:
            self._sock6 = None
        self._own: dict[str, str] = {}

    def craft(self, action, dst_key: bytes) -> bytes:
        dst = ip_text(dst_key)
        if isinstance(action, Spoof):
            src, sport, dport = ip_text(ip_bytes(action.src)), action.sport, action.dport
        else:
            src = self._own.get(dst) or own_address_towards(dst)
            if len(self._own) > 4096:
                self._own.clear()
            self._own[dst] = src
            sport = action.sport or PROBE_PORT
            dport = action.dport
        layer = self._ip6 if len(dst_key) == 16 else self._ip
        return bytes(layer(src=src, dst=dst) / self._udp(sport=sport, dport=dport) / bytes(action.payload))

    def send(self, action: Spoof | Probe, dst_key: bytes) -> bool:
        if not self.limiter.allow(dst_key):
            return False
        raw = self.craft(action, dst_key)
        sock = self._sock6 if len(dst_key) == 16 else self._sock4
        if sock is None:
            return False
        sock.sendto(raw, (ip_text(dst_key), 0))
        return True

    def close(self) -> None:
        for s in (self._sock4, self._sock6):
            if s is not None:
                s.close()


class DrySender:
    """Monitor mode's sender: sends nothing (the engine counts ``would_send``)."""

    def send(self, action, key: bytes) -> None:
        return None

    def close(self) -> None:
        pass
