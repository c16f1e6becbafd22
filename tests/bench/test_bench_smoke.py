"""Quick runs of every bench script: they must work and report sane figures (not fast
ones: speed is judged from the full runs in bench/README.md, never by a timed test)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "bench"


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=300, cwd=BENCH)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def figures(out: str, unit: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"([\d,.]+) " + re.escape(unit), out)]


def test_memory_smoke():
    out = run("memory.py", "--peers", "20000")
    assert "20,000" in out and "bytes per entry" in out
    assert "(2000 hits)" in out


def test_fuzz_smoke():
    out = run("fuzz.py", "--cases", "20000")
    assert re.search(r"engine exceptions 0\b", out) and re.search(r"detector exceptions 0\b", out)


def test_replay_smoke():
    out = run("replay.py", "--copies", "2", "--runs", "1")
    assert all(f > 0 for f in figures(out, "pkt/s")) and len(figures(out, "pkt/s")) >= 2


needs_root = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root")
needs_tools = pytest.mark.skipif(not (shutil.which("hping3") and shutil.which("iperf3")),
                                 reason="hping3 and iperf3 are not installed")


@pytest.mark.e2e
@needs_root
@needs_tools
@pytest.mark.parametrize("script, args, unit, rows", [
    ("pipeline.py", ("--seconds", "1", "--rounds", "1"), "pkt/s", 6),
    ("bulk.py", ("--seconds", "1", "--rounds", "1"), "Gbit/s", 3),
    ("kernel_drop.py", ("--seconds", "1"), "pkt/s", 4),
    ("workers.py", ("--seconds", "1"), "pkt/s", 2),
])
def test_network_bench_smoke(script, args, unit, rows):
    out = run(script, *args)
    values = figures(out, unit)
    assert len(values) == rows and all(v > 0 for v in values), out


@pytest.mark.e2e
@needs_root
@needs_tools
def test_cluster_bench_smoke():
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is missing (scripts/setup.sh installs it)")
    out = run("cluster.py", "--peers", "20", "--seconds", "1")
    assert len(figures(out, "ms")) == 2 and all(v > 0 for v in figures(out, "pkt/s")), out


@pytest.mark.e2e
@needs_root
def test_newflow_bench_smoke():
    out = run("newflow.py", "--seconds", "1")
    rows = [line for line in out.splitlines() if line.startswith(("bare", "p2pwall"))]
    assert len(rows) == 3 and all(v > 0 for v in figures("\n".join(rows), "pkt/s")), out


def test_mse_bench_smoke():
    out = run("mse.py", "--clients", "500")
    assert "us per packet" in out and "bytes" in out, out


def test_streams_bench_smoke():
    out = run("streams.py", "--flows", "300", "--rounds", "1")
    assert len(figures(out, "us/packet")) == 4 and all(v > 0 for v in figures(out, "us/packet")), out
    assert "bytes each" in out, out


def test_observer_bench_smoke():
    out = run("observer.py", "--packets", "200", "--rounds", "1", "--delay", "5")
    assert len(figures(out, "us/packet")) == 4 and all(v > 0 for v in figures(out, "us/packet")), out


def test_history_bench_smoke():
    out = run("history.py", "--events", "20000", "--written", "5000")
    assert len(figures(out, "us per event")) == 2 and figures(out, "bytes per event")[0] > 0, out
    assert out.count("p2pwall report --format") == 4 and "events/s" in out, out
