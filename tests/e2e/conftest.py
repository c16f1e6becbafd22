"""End-to-end fixtures: real namespaces, iptables, NFQUEUE and ``p2pwall run``.

Skipped with a reason when not root; in CI (CI=true) missing root is a failure instead.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _need_root():
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        if os.environ.get("CI"):
            pytest.fail("e2e tests must run as root with iptables in CI")
        pytest.skip("e2e tests need root, iptables and network namespaces")


def network(outside_addresses: int, ipv6: bool = False):
    """A test network for a module (dual-stack with ``ipv6``), deleted even when its tests fail."""
    _need_root()
    from p2pwall_lab.testbed import Network

    net = Network(lan_hosts=2, outside_addresses=outside_addresses, ipv6=ipv6)
    try:
        yield net
    finally:
        net.close()


@pytest.fixture(scope="module")
def net():
    yield from network(20)


@pytest.fixture(scope="module")
def ordinary(net):
    """The testbed's ordinary services (HTTP, HTTPS, DNS, QUIC- and RTP-like UDP) on the
    last outside address: its address."""
    web = net.outside[-1]
    net.start(net.out, sys.executable, "-m", "p2pwall_lab.testbed.ordinary", "serve", "--bind", web,
              "--dir", str(net.dir), log="ordinary.out", timeout=20)
    return web


@pytest.fixture(scope="session")
def testdet_env(tmp_path_factory):
    """PYTHONPATH with the test detector installed as a distribution with an entry point."""
    site = tmp_path_factory.mktemp("site")
    shutil.copy(HERE / "testdetector.py", site / "p2pwall_testdetector.py")
    dist = site / "p2pwall_testdetector-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: p2pwall-testdetector\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text(
        "[p2pwall.detectors]\ntestdet = p2pwall_testdetector:TestDetector\n")
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


def json_lines(path: Path) -> list[dict]:
    import json

    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def py(net, ns, *args, timeout=60):
    return net.exec(ns, sys.executable, *args, timeout=timeout)
