"""Ethereum's devp2p on the real kernel, with every detector running: an RLPx opening built
from its specification (EIP-8 auth, auth-ack, then frames) to many peers is reported as
Ethereum and stopped by nothing, never taken for BitTorrent; an operator who turns the
ethereum detector on stops it, as itself."""

from __future__ import annotations

import json
import sys

import pytest

pytestmark = pytest.mark.e2e

NODE = """
import os, selectors, socket, sys
sel = selectors.DefaultSelector()
for addr in sys.argv[1].split(","):
    for port in (30303, 30311):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port)); s.listen(64); s.setblocking(False); sel.register(s, selectors.EVENT_READ)
print('{"ready": true}', flush=True)
while True:
    for key, _ in sel.select():
        try:
            c, _ = key.fileobj.accept()
        except OSError:
            continue
        c.setblocking(True); c.settimeout(2)
        try:
            if len(c.recv(4096)) > 2:
                n = 200 + int.from_bytes(os.urandom(1), "big")  # the auth-ack: size, 0x04, ECIES
                c.sendall(n.to_bytes(2, "big") + b"\\x04" + os.urandom(n - 1))
                c.recv(4096)                                   # the client's Hello frame
                c.sendall(os.urandom(160))                     # ours
        except OSError:
            pass
        c.close()
"""

CLIENT = """
import json, os, socket, sys
peers = sys.argv[1].split(","); done = failed = 0
for i in range(int(sys.argv[2])):
    host, port = peers[i % len(peers)], (30303, 30311)[i % 2]
    n = 390 + int.from_bytes(os.urandom(1), "big") % 200        # EIP-8 auth: size, 0x04, ECIES
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(n.to_bytes(2, "big") + b"\\x04" + os.urandom(n - 1))
            ack = s.recv(4096)
            s.sendall(os.urandom(130))                           # Hello, as a frame
            hello = s.recv(4096)
        done += bool(ack and hello)
        failed += not (ack and hello)
    except OSError:
        failed += 1
print(json.dumps({"done": done, "failed": failed}))
"""


@pytest.fixture(scope="module")
def nodes(net):
    peers = net.outside[5:13]  # eight Ethereum nodes
    net.start(net.out, sys.executable, "-c", NODE, ",".join(peers), log="devp2p-nodes.log")
    return peers


def _run(net, peers, connections):
    done = net.exec(net.lans[0], sys.executable, "-c", CLIENT, ",".join(peers), str(connections), timeout=120)
    return json.loads(done.stdout)


def test_devp2p_is_reported_as_ethereum_and_not_stopped(net, nodes):
    d = net.p2pwall(net.base_config(lock_seconds=30), name="devp2p")  # every installed detector
    try:
        assert {"bittorrent", "ethereum"} <= set(d.status()["detectors"])
        result = _run(net, nodes, 40)
        snap = d.status()
        assert result == {"done": 40, "failed": 0}, result
        assert snap["peers"]["count"] == 0 and snap["locks"]["count"] == 0, (snap["peers"], snap["locks"])
        assert snap["events"].get("reported", 0) >= 40  # each opening named, none acted on
        assert "BitTorrent" not in d.output() and "Ethereum devp2p" in d.output()
    finally:
        d.stop()


def test_an_operator_who_turns_it_on_stops_it_as_ethereum(net, nodes):
    cfg = net.base_config(lock_seconds=30, extra="[detectors.ethereum]\nstop = true\n")
    d = net.p2pwall(cfg, name="devp2p-stop")
    try:
        result = _run(net, nodes[:3], 3)
        snap = d.status()
        assert result["done"] == 0, result
        assert {e["detector"] for e in snap["peers"]["entries"]} == {"ethereum"}
        assert [e["address"] for e in snap["locks"]["entries"]] == [net.lan_ips[0]]
        assert snap["locks"]["entries"][0]["reason"].startswith("Ethereum devp2p")
    finally:
        d.stop()
