#!/usr/bin/env python3
"""What reading uTP and joining split TCP openings costs, per packet through the engine
(every detector loaded), against a plain first payload (a TLS hello) in the same run:

- ``utp``: a uTP ST_DATA datagram carrying random bytes (what a uTP flow's first
  datagrams are, MSE over uTP's shape): the UDP screen passes it, BitTorrent reads the
  uTP header, the stream start and MSE's opening;
- ``joined``: a TCP connection whose first payload is 1 byte and whose next segment
  continues it (the stream is stored, then joined and judged whole): per packet of the two;
- ``short``: a short first payload that nothing continues (what SSH's banner costs).

And the memory one waiting stream holds.

    python bench/streams.py [--flows 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> int:
    from p2pwall import plugins
    from p2pwall.config import from_dict
    from p2pwall.engine import Engine
    from p2pwall.packet import ACK, FROM_LAN, PSH, parse
    from p2pwall.testing import tcp, udp

    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    settings = from_dict({"network": {"lan_networks": ["10.0.0.0/8"]}})
    rng = random.Random(1)

    def client(i: int) -> str:
        return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256 or 1}"

    def packets(kind: str) -> list:
        out = []
        for i in range(args.flows):
            src, dst, port = client(i), f"203.0.113.{i % 200 + 1}", 40000 + i % 20000
            if kind == "tls":
                body = rng.randbytes(300)
                raws = [(tcp(src, dst, port, 443, bytes([0x16, 3, 1]) + len(body).to_bytes(2, "big") + body,
                             flags=PSH | ACK), True)]
            elif kind == "utp":
                head = struct.pack("!BBHIIIHH", 0x01, 0, i & 0xFFFF, 1, 0, 65535, 2, 1)
                raws = [(udp(src, dst, port, 51413, head + rng.randbytes(300)), True)]
            elif kind == "joined":
                rest = b"BitTorrent protocol" + bytes(8) + rng.randbytes(40)
                raws = [(tcp(src, dst, port, 51413, b"\x13", flags=PSH | ACK, seq=1), True),
                        (tcp(src, dst, port, 51413, rest, flags=PSH | ACK, seq=2), False)]
            else:  # short
                raws = [(tcp(src, dst, port, 22, b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", flags=PSH | ACK), True)]
            for raw, first in raws:
                p = parse(raw)
                p.direction, p.first = FROM_LAN, first
                out.append(p)
        return out

    def run(kind: str) -> float:
        engine = Engine(settings, plugins.load(None, settings))
        todo = packets(kind)
        gc.collect()
        start = time.perf_counter()
        for p in todo:
            engine.handle(p)
        return (time.perf_counter() - start) / len(todo)

    def held() -> tuple[float, int]:
        """Bytes per waiting stream (tracemalloc: what the streams table allocates)."""
        import tracemalloc

        engine = Engine(settings, plugins.load(None, settings))
        todo = packets("short")
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for p in todo:
            engine.streams.feed(p, 0.0)
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        return grown / max(1, len(engine.streams)), len(engine.streams)

    figures: dict[str, list[float]] = {k: [] for k in ("tls", "utp", "joined", "short")}
    for _ in range(args.rounds):  # interleaved, so a busy moment costs every kind alike
        for kind in figures:
            figures[kind].append(run(kind))
    each, waiting = held()
    base = statistics.median(figures["tls"])
    print(f"streams: {args.flows} flows each, {args.rounds} interleaved rounds (median)")
    for kind, label in (("tls", "plain first payload (TLS hello), baseline"),
                        ("utp", "uTP ST_DATA datagram (header, stream start, MSE over uTP)"),
                        ("joined", "split TCP opening, per packet (1 byte, then the rest joined)"),
                        ("short", "short first payload nothing continues (SSH banner)")):
        us = statistics.median(figures[kind]) * 1e6
        print(f"  {label}: {us:.1f} us/packet ({us / (base * 1e6):.2f}x)")
    print(f"  a waiting stream: {each:.0f} bytes each ({waiting} held; bound 65,536 streams)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
