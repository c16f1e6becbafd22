"""Real programs from Debian that hold no P2P, through the real daemon with every detector:
they must earn no lock and no block.  shadowsocks-libev with one server and with three
(its openings and answers are random and of MSE's sizes: the encrypted-BitTorrent rule
must read the exchange, not one packet), OpenSSH to several hosts on port 22 and on a
high port, OpenVPN over TCP with tls-crypt on a high port."""

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
@pytest.mark.parametrize("servers", [1, 3])
def test_shadowsocks(net, web, servers):
    """ss-local in front of each server (chacha20-ietf-poly1305), curl through them in turn."""
    addresses = net.outside[3 + 3 * (servers == 3):3 + 3 * (servers == 3) + servers]
    ports = [1080 + 10 * servers + i for i in range(servers)]
    for i, (server, port) in enumerate(zip(addresses, ports)):
        net.start(net.out, "ss-server", "-s", server, "-p", "8388", "-k", "not-a-secret", "-m",
                  "chacha20-ietf-poly1305", "-v", log=f"ss-server-{servers}-{i}.log", ready="listening at")
        net.start(net.lans[0], "ss-local", "-s", server, "-p", "8388", "-b", "127.0.0.1", "-l", str(port), "-k",
                  "not-a-secret", "-m", "chacha20-ietf-poly1305", "-v", log=f"ss-local-{servers}-{i}.log",
                  ready="listening at")
    d = net.p2pwall(net.base_config(lock_seconds=30), name=f"ss{servers}")
    try:
        ok = 0
        for j in range(24):
            done = net.exec(net.lans[0], "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                            "--socks5-hostname", f"127.0.0.1:{ports[j % servers]}",
                            f"http://{web}:8000/page.html", check=False)
            ok += done.stdout == "200"
        assert ok == 24  # every request went through the proxies
        snap = _clean(d)
        assert snap["counters"]["packets"] >= 24  # its connections were looked at
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


PKI = """set -e
cd "$1"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=lab-ca \\
    -keyout ca.key -out ca.crt 2>/dev/null
for who in server client; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=$who -keyout $who.key \\
      -out $who.csr 2>/dev/null
  printf 'extendedKeyUsage=%s\\nkeyUsage=digitalSignature,keyAgreement\\n' \\
      "$([ $who = server ] && echo serverAuth || echo clientAuth)" > $who.ext
  openssl x509 -req -in $who.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile $who.ext \\
      -out $who.crt 2>/dev/null
done
openvpn --genkey tls-crypt tc.key
"""


@pytest.mark.skipif(not shutil.which("openvpn"), reason="openvpn is not installed")
def test_openvpn_over_tcp_with_tls_crypt(net):
    """OpenVPN 2.6 over TCP with tls-crypt (every packet of its opening is encrypted: random
    bytes behind a 2-byte length), on a high port: the tunnel comes up and carries pings."""
    import subprocess
    import time

    pki = net.dir / "pki"
    pki.mkdir(exist_ok=True)
    subprocess.run(["bash", "-c", PKI, "pki", str(pki)], check=True, timeout=60)
    server = net.outside[12]
    common = ["--dev", "tun", "--ca", str(pki / "ca.crt"), "--tls-crypt", str(pki / "tc.key"), "--verb", "3"]
    net.start(net.out, "openvpn", "--mode", "server", "--tls-server", "--proto", "tcp-server", "--local", server,
              "--port", "41194", "--dh", "none", "--cert", str(pki / "server.crt"), "--key", str(pki / "server.key"),
              "--topology", "subnet", "--ifconfig", "198.51.100.129", "255.255.255.128",
              "--ifconfig-pool", "198.51.100.130", "198.51.100.140", "--push", "topology subnet",
              "--push", "route-gateway 198.51.100.129", *common, log="ovpn-server.log",
              ready="Initialization Sequence Completed", timeout=30)
    d = net.p2pwall(net.base_config(lock_seconds=30), name="openvpn")
    try:
        net.start(net.lans[0], "openvpn", "--client", "--proto", "tcp-client", "--remote", server, "41194",
                  "--nobind", "--cert", str(pki / "client.crt"), "--key", str(pki / "client.key"), *common,
                  log="ovpn-client.log", ready="Initialization Sequence Completed", timeout=30)
        time.sleep(0.5)
        done = net.exec(net.lans[0], "ping", "-c", "5", "-i", "0.2", "-W", "2", "198.51.100.129", check=False)
        assert " 0% packet loss" in done.stdout, done.stdout + done.stderr  # through the tunnel
        snap = _clean(d)
        assert snap["counters"]["packets"] >= 2  # its opening was looked at
    finally:
        d.stop()
