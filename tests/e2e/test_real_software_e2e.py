"""Real programs from Debian that hold no P2P, through the real daemon with every detector:
they must earn no lock and no block.  shadowsocks-libev (one server), OpenSSH to several
hosts on port 22 and on a high port.

(shadowsocks with three servers is not here: its first payloads are random and sized like
MSE's, and the encrypted-BitTorrent rule still reads three such connections as a swarm;
see the closing note of this work.)"""

from __future__ import annotations

import shutil
import sys

import pytest

pytestmark = pytest.mark.e2e


def _clean(d):
    snap = d.status()
    assert snap["peers"]["count"] == 0 and snap["locks"]["count"] == 0, (snap["peers"], snap["locks"])
    return snap


@pytest.fixture(scope="module")
def web(net):
    ip = net.outside[19]
    net.start(net.out, sys.executable, "-m", "http.server", "8000", "--bind", ip, "--directory", str(net.dir),
              log="real-web.log", ready="Serving HTTP")
    (net.dir / "page.html").write_text("<html>" + "x" * 300 + "</html>")
    return ip


@pytest.mark.skipif(not shutil.which("ss-server"), reason="shadowsocks-libev is not installed")
def test_shadowsocks_one_server(net, web):
    server = net.outside[3]
    net.start(net.out, "ss-server", "-s", server, "-p", "8388", "-k", "not-a-secret", "-m", "chacha20-ietf-poly1305",
              "-v", log="ss-server.log", ready="listening at")
    net.start(net.lans[0], "ss-local", "-s", server, "-p", "8388", "-b", "127.0.0.1", "-l", "1080", "-k",
              "not-a-secret", "-m", "chacha20-ietf-poly1305", "-v", log="ss-local.log", ready="listening at")
    d = net.p2pwall(net.base_config(lock_seconds=30), name="ss1")
    try:
        ok = 0
        for _ in range(20):
            done = net.exec(net.lans[0], "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                            "--socks5-hostname", "127.0.0.1:1080", f"http://{web}:8000/page.html", check=False)
            ok += done.stdout == "200"
        assert ok == 20  # every request went through the proxy
        snap = _clean(d)
        assert snap["counters"]["packets"] >= 20  # its connections were looked at
    finally:
        d.stop()


@pytest.mark.skipif(not (shutil.which("sshd") or shutil.which("/usr/sbin/sshd")), reason="openssh-server is not installed")
def test_ssh_to_several_hosts(net):
    hosts = net.outside[5:9]
    keys = net.dir / "ssh"
    keys.mkdir(exist_ok=True)
    for name in ("host", "client"):
        if not (keys / name).exists():
            net.exec(net.out, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name))
    (keys / "authorized").write_text((keys / "client.pub").read_text())
    config = keys / "sshd_config"
    config.write_text("".join(f"ListenAddress {h}:22\nListenAddress {h}:2222\n" for h in hosts) +
                      f"HostKey {keys / 'host'}\nAuthorizedKeysFile {keys / 'authorized'}\nStrictModes no\n"
                      "UsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                      f"PidFile {keys / 'sshd.pid'}\n")
    net.exec(net.out, "mkdir", "-p", "/run/sshd")
    net.start(net.out, "/usr/sbin/sshd", "-D", "-e", "-f", str(config), log="sshd.log", ready="listening on")
    d = net.p2pwall(net.base_config(lock_seconds=30), name="ssh")
    try:
        answers = []
        for i in range(16):
            host, port = hosts[i % 4], ("22", "2222")[i // 4 % 2]
            done = net.exec(net.lans[0], "ssh", "-i", str(keys / "client"), "-p", port, "-o", "BatchMode=yes",
                            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
                            "ConnectTimeout=5", "-o", "LogLevel=ERROR", f"root@{host}", "echo", f"hello-{i}",
                            check=False, timeout=30)
            answers.append(done.stdout.strip())
        assert answers == [f"hello-{i}" for i in range(16)], answers
        _clean(d)
    finally:
        d.stop()
