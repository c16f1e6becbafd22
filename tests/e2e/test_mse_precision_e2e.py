"""Ordinary encrypted TCP on the real kernel, with every detector running: 10,000+
connections from LAN hosts that run no P2P (TLS-shaped hellos to many servers, SSH,
and a VPN-like protocol whose first payload is random, to port 443 and to high ports)
block nothing and lock nobody."""

from __future__ import annotations

import json
import sys

import pytest

pytestmark = pytest.mark.e2e

SERVER = """
import os, selectors, socket, sys
sel = selectors.DefaultSelector()
for addr in sys.argv[1].split(","):
    for port in (443, 8443, 22, 2222, 40000):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port)); s.listen(512); s.setblocking(False); sel.register(s, selectors.EVENT_READ)
print('{"ready": true}', flush=True)
while True:
    for key, _ in sel.select():
        try:
            c, _ = key.fileobj.accept()
        except OSError:
            continue
        c.setblocking(True); c.settimeout(1)
        try:
            c.recv(4096); c.sendall(os.urandom(96 + c.getsockname()[1] % 400))
        except OSError:
            pass
        c.close()
"""

CLIENT = """
import json, os, random, socket, sys
servers, vpn = sys.argv[1].split(","), sys.argv[2].split(",")
rng = random.Random(int(sys.argv[3])); done = failed = 0
for i in range(int(sys.argv[4])):
    kind = i % 3
    if kind == 0:
        host, port = rng.choice(servers), rng.choice((443, 8443, 40000))
        body = os.urandom(rng.randrange(200, 500)); data = bytes([0x16, 3, 1]) + len(body).to_bytes(2, "big") + body
    elif kind == 1:
        host, port, data = rng.choice(servers), rng.choice((22, 2222)), b"SSH-2.0-OpenSSH_9.2p1 Debian-2\\r\\n"
    else:
        host, port, data = rng.choice(vpn), rng.choice((443, 40000)), os.urandom(96 + rng.randrange(0, 500))
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(data); s.recv(4096)
        done += 1
    except OSError:
        failed += 1
print(json.dumps({"done": done, "failed": failed}))
"""


def test_ten_thousand_ordinary_encrypted_connections_block_nothing(net):
    servers = net.outside[5:15]
    vpn = net.outside[15:17]  # a VPN client talks to one server, or two
    net.start(net.out, sys.executable, "-c", SERVER, ",".join(servers + vpn), log="mse-servers.log")
    d = net.p2pwall(net.base_config(lock_seconds=30), name="mse-precision")
    try:
        results = []
        for i, ns in enumerate(net.lans):
            done = net.exec(ns, sys.executable, "-c", CLIENT, ",".join(servers), ",".join(vpn), str(i), "5100",
                            timeout=300)
            results.append(json.loads(done.stdout))
        snap = d.status()
        assert sum(r["done"] for r in results) >= 10_000 and not any(r["failed"] for r in results), results
        assert snap["peers"]["count"] == 0 and snap["locks"]["count"] == 0, (snap["peers"], snap["locks"])
        assert snap["counters"]["packets"] > 10_000  # the first payloads were looked at
    finally:
        d.stop()
