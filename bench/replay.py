#!/usr/bin/env python3
"""Replay speed on a big capture: the whole ``p2pwall replay`` command against
``ndpiReader`` (Debian's libndpi-bin) on the same file, both timed from process start.

The capture is the bundled captures (tests/captures), Ethernet-framed and repeated
``--copies`` times (190 copies: about a million packets, 260 MiB), written to a temporary
folder.  Two shapes:
- ``same``: every copy with the original timestamps, as a capture repeated back to back;
  conntrack would see the same connections go on (but for TCP reopened after a FIN).
- ``hourly``: each copy an hour after the last: every connection is new again, so the
  kernel would queue the first packets of each, a third of all packets: the worst case.

p2pwall's bytecode is compiled first, as an install from a wheel leaves it (with
PYTHONDONTWRITEBYTECODE set, as here, an editable install would otherwise compile every
module from source at each start: 50 ms of every run).

Target: 1M pkt/s on ``same``.    python bench/replay.py [--copies 190] [--runs 3]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

from common import table  # also puts the project on sys.path

from p2pwall import pcap

HERE = os.path.dirname(os.path.abspath(__file__))
PCAPS = os.path.join(HERE, "..", "tests", "captures")
LANS = ["--lan", "192.168.0.0/16", "--lan", "10.0.0.0/8", "--lan", "172.16.0.0/12"]


def write_capture(path: str, copies: int, spacing: float) -> int:
    """The bundled captures as one Ethernet pcap, ``copies`` times, each ``spacing``
    seconds after the last (0: the original timestamps each time).  Returns the packets."""
    frames = []
    for name in sorted(glob.glob(os.path.join(PCAPS, "*.pcap"))):
        records = [(ts, ip) for ts, ip in pcap.read(name) if ip is not None]
        start = records[0][0] if spacing else 0.0
        for ts, ip in records:
            kind = b"\x08\x00" if ip[0] >> 4 == 4 else b"\x86\xdd"
            frames.append((ts - start, b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02" + kind + ip))
    base = 1_600_000_000 if spacing else 0
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for copy in range(copies):
            for rel, frame in frames:
                t = base + copy * spacing + rel
                sec = int(t)
                out.write(struct.pack("<IIII", sec, min(999999, int(round((t - sec) * 1e6))), len(frame), len(frame)))
                out.write(frame)
    return len(frames) * copies


def best(cmd: list[str], runs: int) -> tuple[float, subprocess.CompletedProcess]:
    times, done = [], None
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode:
            raise SystemExit(f"{cmd[0]} failed: {done.stderr[-500:]}")
    return min(times), done


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=190)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    ndpi = shutil.which("ndpiReader")
    root = os.path.join(HERE, "..")
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(root, "p2pwall"),
                    os.path.join(root, "plugins")], check=True, stdout=subprocess.DEVNULL)
    rows = []
    with tempfile.TemporaryDirectory(prefix="p2pwall-bench-") as tmp:
        for shape, spacing in (("same", 0.0), ("hourly", 3600.0)):
            path = os.path.join(tmp, f"{shape}.pcap")
            packets = write_capture(path, args.copies, spacing)
            size = os.path.getsize(path) / 2**20
            took, done = best([sys.executable, "-m", "p2pwall", "replay", "--format", "json", *LANS, path],
                              args.runs)
            report = json.loads(done.stdout)
            assert report["packets"] == packets, report["packets"]
            queued = report["kernel"]["queued"] / packets
            rate = packets / took
            target = f"{rate / 1e6:.2f} of 1M" if shape == "same" else ""
            rows.append((f"p2pwall replay, {shape} ({packets:,} packets, {size:.0f} MiB; {queued:.1%} queued)",
                         f"{rate:,.0f} pkt/s", f"{took:.2f} s" + (f"; {target}" if target else "")))
            if ndpi:
                took_n, _ = best([ndpi, "-q", "-i", path, "-v", "0"], args.runs)
                rows.append(("ndpiReader, the same file", f"{packets / took_n:,.0f} pkt/s",
                             f"{took_n:.2f} s; p2pwall takes {took / took_n:.1f}x as long"))
    if not ndpi:
        rows.append(("ndpiReader", "not installed", "apt-get install libndpi-bin"))
    print(f"{args.copies} copies of the bundled captures; best of {args.runs} runs, whole commands")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
