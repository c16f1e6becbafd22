"""Real programs from Debian that hold no P2P, through the real daemon with every detector:
they must earn no lock and no block.  shadowsocks-libev with one server and with three
(its openings and answers are random and of MSE's sizes: the encrypted-BitTorrent rule
must read the exchange, not one packet), OpenSSH to several hosts on port 22 and on a
high port, OpenVPN over TCP with tls-crypt on a high port, tor with three obfs4 bridges."""

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


# Made-up directory authority inside the lab's addresses: tor never reaches for the real
# ones (the lab has no route out, and nothing must be sent outside it anyway).
_AUTHORITY = ("DirAuthority lab orport=9001 no-v2 v3ident=" + "A" * 40 + " {ip}:9030 " + "B" * 40 + "\n"
              "DirAuthority labbridge orport=9001 bridge no-v2 {ip}:9031 " + "C" * 40 + "\nContactInfo lab\n")


def _bridge(net, i: int, ip: str) -> str:
    """A tor bridge with obfs4proxy on ``ip``: its bridge line (address, fingerprint, cert)."""
    data = net.dir / f"tor-bridge{i}"
    data.mkdir(mode=0o700, exist_ok=True)
    torrc = data / "torrc"
    torrc.write_text(f"DataDirectory {data}\nBridgeRelay 1\nORPort {ip}:9001\nAddress {ip}\nAssumeReachable 1\n"
                     "PublishServerDescriptor 0\nServerTransportPlugin obfs4 exec /usr/bin/obfs4proxy\n"
                     f"ServerTransportListenAddr obfs4 {ip}:4443\nExtORPort auto\nSocksPort 0\n"
                     f"Nickname labbridge{i}\nExitRelay 0\nLog notice stdout\n"
                     + _AUTHORITY.format(ip=net.outside[13]))
    net.start(net.out, "tor", "-f", str(torrc), log=f"tor-bridge{i}.log", ready="Registered server transport 'obfs4'",
              timeout=60)
    line = (data / "pt_state" / "obfs4_bridgeline.txt").read_text().strip().splitlines()[-1]
    fingerprint = (data / "fingerprint").read_text().split()[1]
    cert = line.split("cert=")[1].split()[0]
    return f"obfs4 {ip}:4443 {fingerprint} cert={cert} iat-mode=0"


@pytest.mark.skipif(not (shutil.which("tor") and shutil.which("obfs4proxy")), reason="tor or obfs4proxy is not installed")
def test_tor_with_three_obfs4_bridges(net):
    """A tor client with three obfs4 bridges (tor's own obfs4proxy at both ends): each
    bridge's obfs4 handshake and the TLS inside it get through and the client fetches
    every bridge's descriptor over it (the lab has no tor network beyond the bridges, so
    it bootstraps no further, and retries); nothing is locked or blocked."""
    bridges = [_bridge(net, i, ip) for i, ip in enumerate(net.outside[14:17])]
    data = net.dir / "tor-client"
    data.mkdir(mode=0o700, exist_ok=True)
    torrc = data / "torrc"
    torrc.write_text(f"DataDirectory {data}\nUseBridges 1\nClientTransportPlugin obfs4 exec /usr/bin/obfs4proxy\n"
                     + "".join(f"Bridge {b}\n" for b in bridges) + "SocksPort 0\nLog notice stdout\n"
                     + _AUTHORITY.format(ip=net.outside[13]))
    d = net.p2pwall(net.base_config(lock_seconds=30), name="tor")
    try:
        client = net.start(net.lans[0], "tor", "-f", str(torrc), log="tor-client.log",
                           ready="Bootstrapped 0%", timeout=30)
        log = net.dir / "tor-client.log"
        from .helpers import wait_until

        # the control: all three bridges' obfs4 and TLS got through (a descriptor fetched over each)
        assert wait_until(lambda: log.read_text().count("new bridge descriptor") >= 3, timeout=60), \
            log.read_text()[-3000:]
        snap = _clean(d)
        assert snap["counters"]["packets"] >= 3  # its connections were looked at (a SYN to each bridge at least)
        client.terminate()
    finally:
        d.stop()
