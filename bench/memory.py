#!/usr/bin/env python3
"""Memory of the peer table: resident size for N learned peers, evidence included (the
LAN clients each concerns, its kind, first and last seen, its scope), bytes per entry, against
the same process's baseline (an empty table) measured in the same run.

    python bench/memory.py --peers 1000000
"""

from __future__ import annotations

import argparse
import gc
import sys
import time


def main() -> int:
    from common import rss

    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", type=int, default=1_000_000)
    args = ap.parse_args()
    from p2pwall.tables import PeerTable

    gc.collect()
    base = rss()
    table = PeerTable(args.peers)
    t0 = time.perf_counter()
    reasons = ["FastTrack UDP ping", "BitTorrent DHT", "named by a BitTorrent tracker/DHT reply"]
    kinds = ["own", "own", "named"]
    for i in range(args.peers):  # each with its evidence: one LAN client (a second for every 4th)
        v4 = i % 10
        key = (0x0A000000 + i * 7).to_bytes(4, "big") if v4 else (0xFD000000 << 96 | i).to_bytes(16, "big")
        client = (0xC0A80000 + i % 65000).to_bytes(4, "big") if v4 else (0xFD010000 << 96 | i % 65000).to_bytes(16, "big")
        table.learn(key, 0.0, 86400.0 + (i % 600), "bittorrent", reasons[i % 3], None, kinds[i % 3], client,
                    False, 2)
        if i % 4 == 0:
            other = (int.from_bytes(client, "big") + 1).to_bytes(len(client), "big")
            table.learn(key, 0.0, 86400.0 + (i % 600), "bittorrent", reasons[i % 3], None, "own", other, False, 2)
    fill = time.perf_counter() - t0
    gc.collect()
    used = rss() - base
    t0 = time.perf_counter()
    probe = [(0x0A000000 + i * 7).to_bytes(4, "big") for i in range(1, args.peers, 10)]
    hits = sum(table.get(k, 1.0) is not None for k in probe)
    lookup = (time.perf_counter() - t0) / len(probe)
    print(f"{'peers':>24} {len(table):,}")
    print(f"{'resident, table only':>24} {used / 2**20:.1f} MiB (target: at most 200 MB for 1,000,000, evidence included)")
    print(f"{'bytes per entry':>24} {used / len(table):.0f}")
    print(f"{'fill':>24} {fill:.2f} s ({len(table) / fill:,.0f} puts/s)")
    print(f"{'lookup':>24} {lookup * 1e9:.0f} ns ({hits} hits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
