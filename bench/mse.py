#!/usr/bin/env python3
"""What recognising encrypted BitTorrent (MSE) by its shape costs: microseconds per
queued first payload through the engine (every detector loaded), and the memory the
core keeps per client for it, against the same engine on first payloads that are not
MSE-shaped (TLS hellos), in the same run.  The pipeline ratio with it on is pipeline.py's
(MSE is on by default).

    python bench/mse.py [--clients 20000]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> int:
    from common import rss

    from p2pwall import plugins
    from p2pwall.config import from_dict
    from p2pwall.engine import Engine
    from p2pwall.packet import FROM_LAN, parse

    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20000)
    args = ap.parse_args()
    settings = from_dict({"network": {"lan_networks": ["10.0.0.0/8"]}})
    rng = random.Random(1)
    from p2pwall.testing import tcp

    def run(make) -> tuple[float, int]:
        engine = Engine(settings, plugins.load(None, settings))
        packets = []
        for i in range(args.clients):  # two connections each: below the three-peer threshold
            client = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256 or 1}"
            for j in (1, 2):
                p = parse(tcp(client, f"203.0.113.{j}", 40000 + j, 51413, make()))
                p.direction = FROM_LAN
                packets.append(p)
        gc.collect()
        before = rss()
        start = time.perf_counter()
        for p in packets:
            engine.handle(p)
        took = (time.perf_counter() - start) / len(packets)
        gc.collect()
        return took, rss() - before

    def tls():
        body = rng.randbytes(300)
        return bytes([0x16, 3, 1]) + len(body).to_bytes(2, "big") + body

    plain, plain_mem = run(tls)
    shaped, shaped_mem = run(lambda: rng.randbytes(96 + rng.randrange(0, 513)))
    print(f"{args.clients:,} clients, two connections each; every detector loaded")
    print(f"{'TLS first payloads (not MSE-shaped)':>44} {plain * 1e6:6.2f} us per packet (baseline)")
    print(f"{'MSE-shaped first payloads':>44} {shaped * 1e6:6.2f} us per packet ({shaped / plain:.2f} of it)")
    print(f"{'memory kept for MSE, per client':>44} {max(0, shaped_mem - plain_mem) / args.clients:6.0f} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
