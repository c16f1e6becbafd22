#!/usr/bin/env python3
"""The history's costs: what one event costs the caller (the observer thread: a queue
put) and the writer (its share of a batched transaction), the file's size per event, and
``p2pwall report`` (the whole command, each format) over a history of ``--events`` rows
(a month of 200 LAN hosts, locks, restarts, expiries and blocks by four detectors).

    python bench/history.py [--events 1000000] [--written 200000]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def synthetic(db_path: str, events: int) -> None:
    """``events`` rows as the daemon writes them, spread over 30 days."""
    from p2pwall.history import COLUMNS, connect

    rng = random.Random(7)
    db = connect(db_path, create=True)
    start = time.time() - 30 * 86400
    step = 30 * 86400 / events
    dets = [("fasttrack", "FastTrack"), ("bittorrent", "BitTorrent"), ("edonkey", "eDonkey"), ("gnutella", "Gnutella")]
    rows, t = [], start
    kinds = ("peer_blocked", "client_locked", "lock_restarted", "lock_restarted", "lock_expired")
    for i in range(events):
        t += step
        det, proto = dets[i % 4]
        host = f"192.0.2.{1 + rng.randrange(200)}"
        kind = kinds[i % 5]
        peer = f"203.0.113.{rng.randrange(256)}" if kind == "peer_blocked" else None
        rows.append((t, "gw1", kind, det, proto, host, peer, "client" if peer else None, "own" if peer else None,
                     "bench", t + 120, None))
        if len(rows) == 50000:
            with db:
                db.executemany(f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 12)})", rows)
            rows = []
    with db:
        db.executemany(f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 12)})", rows)
    db.close()


def main() -> int:
    from p2pwall.history import History

    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000, help="rows of the history the report reads")
    ap.add_argument("--written", type=int, default=200_000, help="events written through the daemon's writer")
    args = ap.parse_args()
    scratch = tempfile.mkdtemp(prefix="p2pwall-bench-")
    try:
        h = History(os.path.join(scratch, "written.db"), max_events=max(args.written, 1000),
                    protocols={"bittorrent": "BitTorrent"})
        now = time.time()
        t0 = time.perf_counter()
        for i in range(args.written):
            h.add("client_locked" if i % 3 else "peer_blocked", now + i * 0.001, detector="bittorrent",
                  host=f"192.0.2.{i % 250 + 1}", peer=f"203.0.113.{i % 256}", scope="client", evidence="own",
                  reason="BitTorrent handshake", until=now + 120)
        queued = time.perf_counter() - t0
        h.close(timeout=600)
        total = time.perf_counter() - t0
        written = h.counters["history_written"]
        dropped = h.counters["history_dropped"]
        size = sum(os.path.getsize(os.path.join(scratch, f)) for f in os.listdir(scratch) if f.startswith("written"))
        print(f"history writer, {args.written:,} events offered as fast as one thread can ({written:,} written, "
              f"{dropped:,} dropped: the queue bound)")
        print(f"  caller (observer thread): {queued / args.written * 1e6:8.2f} us per event (a queue put)")
        print(f"  until on disk (batches of 500, WAL): {total / max(written, 1) * 1e6:8.2f} us per event")
        print(f"  file: {size / max(written, 1):8.1f} bytes per event")

        path = os.path.join(scratch, "month.db")
        t0 = time.perf_counter()
        synthetic(path, args.events)
        print(f"synthetic history: {args.events:,} rows, {os.path.getsize(path) / 2**20:.1f} MiB "
              f"({os.path.getsize(path) / args.events:.1f} bytes per event), made in {time.perf_counter() - t0:.1f} s")
        for fmt in ("text", "json", "csv", "html"):
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "p2pwall", "report", "--history", path, "--format", fmt,
                                   "-o", os.path.join(scratch, f"r.{fmt}")], capture_output=True, text=True)
            took = time.perf_counter() - t0
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                return 1
            print(f"  p2pwall report --format {fmt:4}: {took:6.2f} s for {args.events:,} events "
                  f"({args.events / took:,.0f} events/s)")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "p2pwall", "report", "--history", path, "--host", "192.0.2.7",
                        "--since", "7d"], capture_output=True, check=True)
        print(f"  p2pwall report --host ADDR --since 7d: {time.perf_counter() - t0:6.2f} s (the indexes)")
        con = sqlite3.connect(path)
        assert con.execute("SELECT count(*) FROM events").fetchone()[0] == args.events
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
