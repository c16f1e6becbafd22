#!/usr/bin/env python3
"""Replay speed on the bundled captures (read in memory, repeated), one core, against
the time ndpiReader (Debian's libndpi-bin) takes for the same files in the same run.

Target: at least 250,000 packets/s.    python bench/replay.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import time

from common import table  # also puts the project on sys.path

from p2pwall import pcap, plugins
from p2pwall.config import Settings
from p2pwall.replay import Replay

PCAPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "captures")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(PCAPS, "*.pcap")))
    if not files:
        print("no captures found in tests/captures", file=sys.stderr)
        return 1
    records = [r for path in files for r in pcap.read(path)]
    detectors = plugins.load()
    best_engine = best_total = 0.0
    for _ in range(3):
        rp = Replay(Settings(), detectors)
        start = time.perf_counter()
        for i in range(args.repeat):
            offset = i * 1000.0  # later copies are later in time
            for ts, raw in records:
                rp.feed(ts + offset, raw)
        elapsed = time.perf_counter() - start
        best_engine = max(best_engine, len(records) * args.repeat / elapsed)
    for _ in range(3):  # the whole command, file reading and report included
        start = time.perf_counter()
        rp = Replay(Settings(), detectors)
        for path in files:
            rp.feed_file(path)
        rp.report()
        best_total = max(best_total, len(records) / (time.perf_counter() - start))
    rows = [("p2pwall replay, engine only (in memory)", f"{best_engine:,.0f} pkt/s",
             f"{best_engine / 250000:.2f} of the 250k target"),
            ("p2pwall replay, files + report", f"{best_total:,.0f} pkt/s", "")]
    ndpi = shutil.which("ndpiReader")
    if ndpi:
        start = time.perf_counter()
        for path in files:
            subprocess.run([ndpi, "-q", "-i", path, "-v", "0"], capture_output=True)
        nd = len(records) / (time.perf_counter() - start)
        rows.append(("ndpiReader, same files (process start included)", f"{nd:,.0f} pkt/s",
                     f"p2pwall/ndpi = {best_total / nd:.2f}"))
    else:
        rows.append(("ndpiReader", "not installed", "apt-get install libndpi-bin"))
    print(f"{len(files)} captures, {len(records):,} packets, x{args.repeat} in memory")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
