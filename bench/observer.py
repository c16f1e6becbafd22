#!/usr/bin/env python3
"""Verdict latency with a slow reporting plugin: the daemon's loop (judge a batch of
queued packets, then ``flush``: mirrors, sends, events) on packets that each cause an
event, with no observer, with an observer that takes ``--delay`` ms per event on the
daemon's observer thread, and, for contrast, the same observer called in line (as replay
does).  Figures: microseconds per packet (median of the rounds) and the ratio to no
observer, measured in the same run.

    python bench/observer.py [--packets 2000] [--delay 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> int:
    from p2pwall import DetectorInfo, hookimpl
    from p2pwall.config import from_dict
    from p2pwall.engine import Engine
    from p2pwall.observers import ObserverThread
    from p2pwall.packet import FROM_LAN, parse
    from p2pwall.testing import detector_set, udp

    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=2000)
    ap.add_argument("--delay", type=float, default=20.0, help="ms an observer takes per event")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8, help="packets judged between two flushes")
    args = ap.parse_args()

    class Teacher:
        @hookimpl
        def p2pwall_detector_info(self):
            return DetectorInfo(wants=["udp"])

        @hookimpl
        def p2pwall_inspect(self, packet, context):
            from p2pwall import Block, Drop

            return [Block(packet.dst, reason="bench"), Drop()]

    class Slow:
        @hookimpl
        def p2pwall_event(self, event):
            time.sleep(args.delay / 1000.0)

    settings = from_dict({"network": {"lan_networks": ["10.0.0.0/8"]}})
    packets = []
    for i in range(args.packets):  # each to a new peer: one peer_blocked event per packet
        p = parse(udp("10.0.0.5", f"198.{18 + i // 65536 % 2}.{i // 256 % 256}.{i % 256 or 1}", 4000, 5000, b"x"))
        p.direction = FROM_LAN
        packets.append(p)

    import tempfile

    from p2pwall.history import History
    from p2pwall.notify import Notifier

    scratch = tempfile.mkdtemp(prefix="p2pwall-bench-")

    def one(observer: bool, threaded: bool, recorders: bool = False) -> float:
        plugins = (Teacher(), Slow()) if observer else (Teacher(),)
        found = detector_set(*plugins, settings=settings)
        thread = ObserverThread(found.impls("p2pwall_event")) if threaded else None
        kept = []
        if recorders:
            kept = [History(os.path.join(scratch, f"h{time.monotonic_ns()}.db")),
                    Notifier("http://127.0.0.1:9/dead", ["peer_blocked"], timeout=0.5, retries=3)]
            thread.builtin = [("history", kept[0].observe), ("notify", kept[1].observe)]
        engine = Engine(settings, found, keep_events=0, observer_thread=thread)
        start = time.perf_counter()
        for i, p in enumerate(packets):
            engine.handle(p)
            if i % args.batch == args.batch - 1:
                engine.flush()
        took = (time.perf_counter() - start) / len(packets)
        if thread is not None:
            thread.observers = thread.builtin = []  # what is queued is not waited for
            thread.stop(0.1)
        for r in kept:
            r.close(timeout=0.5)
        return took * 1e6

    dead = "history + [notify], receiver dead"
    rows = {"no observer": [], f"{args.delay:g} ms observer, its own thread": [], dead: []}
    for _ in range(args.rounds):
        rows["no observer"].append(one(False, True))
        rows[f"{args.delay:g} ms observer, its own thread"].append(one(True, True))
        rows[dead].append(one(False, True, recorders=True))
    inline_packets = max(args.batch, int(400 / max(args.delay, 1)))  # bounded: each event waits
    del packets[inline_packets:]
    inline = one(True, False)
    base = statistics.median(rows["no observer"])
    print(f"verdict loop, {args.rounds} rounds of {args.packets} packets, one event each, flush every {args.batch}")
    for name, values in rows.items():
        med = statistics.median(values)
        print(f"{name:>40}: {med:10.1f} us/packet  ({med / base:.2f} of no observer; "
              f"range {min(values):.1f}-{max(values):.1f})")
    print(f"{'the same observer in line (replay)':>40}: {inline:10.1f} us/packet  ({inline / base:.0f}x; "
          f"{len(packets)} packets)")
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
