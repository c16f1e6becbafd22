"""A real BitTorrent swarm from Debian packages: opentracker and aria2 seeders outside,
an aria2 leecher on a LAN host."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time

from .bencode import info_hash

PIECE = 256 * 1024


class Swarm:
    """``private``: BitTorrent as private trackers run it: the tracker only over HTTPS (a
    TLS terminator, stunnel, in front of opentracker), encryption required on every peer
    (MSE), no DHT, no local discovery, no peer exchange, and ``seeders`` seeders on as many
    outside addresses.

    ``ipv6`` (on a dual-stack network): everything over IPv6.  The peers find each other
    in aria2's IPv6 DHT; with ``tracker`` the torrent also names a tracker at an IPv6
    address, and the leecher announces there.  Debian builds opentracker for IPv4 only
    ("V4 Tracker is V4 only!"), so that address is a relay in front of it, and the seeders
    do not announce (the tracker would list the relay's IPv4 address as theirs)."""

    def __init__(self, net, tag: str, tracker: bool, size: int = 2 * 1024 * 1024, private: bool = False,
                 seeders: int = 1, ipv6: bool = False):
        self.net, self.tag, self.tracker, self.private, self.ipv6 = net, tag, tracker, private, ipv6
        self.seeders = [net.outside[1]] + net.outside[3:3 + seeders - 1]
        d = self.dir = net.dir / tag
        d.mkdir()
        os.chmod(net.dir, 0o755)
        self.seed_dir, self.leech_dir = d / "seed", d / "leech"
        self.seed_dir.mkdir()
        self.leech_dir.mkdir()
        self.payload = os.urandom(size)
        (self.seed_dir / "payload.bin").write_bytes(self.payload)
        outside = net.outside6 if ipv6 else net.outside
        self.tracker_ip, self.seeder_ip, self.boot_ip = outside[0], outside[1], outside[2]
        cmd = ["transmission-create", "-s", str(PIECE // 1024), "-o", str(d / "f.torrent")]
        if private:
            cmd += ["-t", f"https://{self.tracker_ip}/announce", "-p"]
        elif tracker:
            host = f"[{self.tracker_ip}]" if ipv6 else self.tracker_ip
            cmd += ["-t", f"http://{host}:6969/announce"]
        subprocess.run(cmd + [str(self.seed_dir / "payload.bin")], check=True, capture_output=True)
        self.torrent = d / "f.torrent"
        self.procs = []

    CRYPTO = ["--bt-require-crypto=true", "--bt-min-crypto-level=arc4", "--enable-peer-exchange=false",
              "--enable-dht=false", "--bt-enable-lpd=false", "--check-certificate=false"]

    def _start_private(self, common) -> None:
        net, d = self.net, self.dir
        self._start_tracker()
        key, cert = d / "key.pem", d / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=tracker.example", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
        conf = d / "stunnel.conf"
        conf.write_text(f"foreground = yes\npid =\n[tracker]\naccept = {self.tracker_ip}:443\n"
                        f"connect = {self.tracker_ip}:6969\ncert = {cert}\nkey = {key}\n")
        self.procs.append(net.spawn(net.out, "stunnel4", str(conf), log=f"{self.tag}-stunnel.log"))
        for i, ip in enumerate(self.seeders):  # each from its own address, announcing over plain HTTP
            self.procs.append(net.spawn(net.out, "aria2c", "--dir", str(self.seed_dir), "--seed-ratio=0", "-V",
                                        *common, *self.CRYPTO, f"--listen-port={6881 + 10 * i}",
                                        f"--interface={ip}", "--bt-external-ip", ip,
                                        f"--bt-exclude-tracker=https://{self.tracker_ip}/announce",
                                        f"--bt-tracker=http://{self.tracker_ip}:6969/announce",
                                        str(self.torrent), log=f"{self.tag}-seeder{i}.log"))

    DHT6 = ["--enable-dht=false", "--enable-dht6=true", "--dht-message-timeout=2"]

    def _start_ipv6(self, common) -> None:
        net, d = self.net, self.dir
        if self.tracker:
            self._start_tracker(bind=net.outside[0])
            self.procs.append(net.start(net.out, sys.executable, "-m", "p2pwall_lab.testbed.traffic", "relay",
                                        "--listen", self.tracker_ip, "--port", "6969", "--to", net.outside[0],
                                        "--log", str(d / "relay.jsonl"), log=f"{self.tag}-relay.out"))
        quiet = ["--bt-exclude-tracker=*"]
        self.procs.append(net.spawn(net.out, "aria2c", "--dir", str(d / "boot"), *common, *self.DHT6, *quiet,
                                    "--dht-listen-port=6883", "--listen-port=6885",
                                    f"--dht-listen-addr6={self.boot_ip}", f"--dht-entry-point6=[{self.seeder_ip}]:6882",
                                    "--dht-file-path6", str(d / "boot6.dat"), str(self.torrent),
                                    log=f"{self.tag}-boot.log"))
        self.procs.append(net.spawn(net.out, "aria2c", "--dir", str(self.seed_dir), "--seed-ratio=0", "-V",
                                    *common, *self.DHT6, *quiet, "--listen-port=6881", "--dht-listen-port=6882",
                                    f"--dht-listen-addr6={self.seeder_ip}", f"--dht-entry-point6=[{self.boot_ip}]:6883",
                                    "--dht-file-path6", str(d / "seed6.dat"), str(self.torrent),
                                    log=f"{self.tag}-seeder.log"))

    def tracker_connections(self) -> list[dict]:
        """What the IPv6 relay in front of the tracker carried, a line per connection."""
        path = self.dir / "relay.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def _start_tracker(self, bind: str | None = None) -> None:
        net, d = self.net, self.dir
        root = d / "otroot"
        root.mkdir()
        (root / "whitelist").write_text(info_hash(self.torrent.read_bytes()) + "\n")
        os.chmod(d, 0o755)
        os.chmod(root, 0o755)
        user = "_opentracker" if _user("_opentracker") else "nobody"
        self.procs.append(net.spawn(net.out, "opentracker", "-i", bind or self.tracker_ip, "-p", "6969", "-P", "6969",
                                    "-d", str(root), "-u", user, "-w", "/whitelist", log=f"{self.tag}-tracker.log"))

    def start(self) -> None:
        net, d = self.net, self.dir
        common = ["--bt-enable-lpd=false", "--summary-interval=0", "--file-allocation=none"]
        if self.ipv6:
            self._start_ipv6(common)
        elif self.private:
            self._start_private(common)
        elif self.tracker:
            self._start_tracker()
            self.procs.append(net.spawn(net.out, "aria2c", "--dir", str(self.seed_dir), "--seed-ratio=0", "-V",
                                        "--enable-dht=false", *common, "--listen-port=6881",
                                        "--bt-external-ip", self.seeder_ip, str(self.torrent),
                                        log=f"{self.tag}-seeder.log"))
        else:
            dht = ["--enable-dht=true", "--dht-message-timeout=2"]
            self.procs.append(net.spawn(net.out, "aria2c", "--dir", str(d / "boot"), *common, *dht,
                                        "--dht-listen-port=6883", "--listen-port=6885", "--bt-external-ip",
                                        self.boot_ip, "--dht-entry-point", f"{self.seeder_ip}:6882",
                                        "--dht-file-path", str(d / "boot.dat"), str(self.torrent),
                                        log=f"{self.tag}-boot.log"))
            self.procs.append(net.spawn(net.out, "aria2c", "--dir", str(self.seed_dir), "--seed-ratio=0", "-V",
                                        *common, *dht, "--listen-port=6881", "--dht-listen-port=6882",
                                        "--bt-external-ip", self.seeder_ip, "--dht-entry-point",
                                        f"{self.boot_ip}:6883", "--dht-file-path", str(d / "seed.dat"),
                                        str(self.torrent), log=f"{self.tag}-seeder.log"))
        time.sleep(4)  # seeders verified and announced

    def leech(self, stop_after: float = 15) -> subprocess.CompletedProcess:
        args = ["aria2c", "--dir", str(self.leech_dir), "--bt-enable-lpd=false", "--summary-interval=0",
                "--file-allocation=none", "--seed-time=0", f"--bt-stop-timeout={int(stop_after)}",
                "--listen-port=6881"]
        if self.ipv6:
            args += [*self.DHT6, "--dht-listen-port=6882", f"--dht-listen-addr6={self.net.lan_ips6[0]}",
                     f"--dht-entry-point6=[{self.seeder_ip}]:6882", "--dht-file-path6", str(self.dir / "l6.dat")]
        elif self.private:
            args += self.CRYPTO
        elif self.tracker:
            args.append("--enable-dht=false")
        else:
            args += ["--enable-dht=true", "--dht-message-timeout=2", "--dht-listen-port=6882",
                     "--dht-entry-point", f"{self.seeder_ip}:6882", "--dht-file-path", str(self.dir / "l.dat")]
        return self.net.exec(self.net.lans[0], *args, str(self.torrent), check=False, timeout=stop_after + 60)

    def pieces_received(self) -> int:
        """How many pieces of the seeded file exist, intact, on the LAN host."""
        got = b""
        for path in self.leech_dir.rglob("*"):
            if path.is_file():
                got = max(got, path.read_bytes(), key=len)
        return sum(1 for i in range(0, len(self.payload), PIECE)
                   if got[i:i + PIECE] == self.payload[i:i + PIECE] and got[i:i + PIECE])

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()


def _user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


LTCLIENT = str(__import__("pathlib").Path(__file__).with_name("ltclient.py"))
SYSTEM_PYTHON = "/usr/bin/python3"  # where Debian's python3-libtorrent is importable


def have_libtorrent() -> bool:
    return os.path.exists(SYSTEM_PYTHON) and subprocess.run(
        [SYSTEM_PYTHON, "-c", "import libtorrent"], capture_output=True).returncode == 0


class LtSwarm(Swarm):
    """The private-tracker swarm of :class:`Swarm` with libtorrent-rasterbar on every peer
    (its defaults: uTP first, then TCP; encryption enabled, or required with
    ``crypto="required"``): the tracker only over HTTPS (stunnel), no DHT, ``seeders``
    seeders on as many outside addresses, whom the tracker names to every announce."""

    def __init__(self, net, tag: str, seeders: int = 3, crypto: str = "enabled", size: int = 2 * 1024 * 1024):
        super().__init__(net, tag, True, size=size, private=True, seeders=seeders)
        self.crypto = crypto

    def _client(self, ns, role, ip, port, where, tracker, seconds, log):
        args = [SYSTEM_PYTHON, LTCLIENT, role, "--listen", ip, "--port", str(port), "--torrent", str(self.torrent),
                "--dir", str(where), "--crypto", self.crypto, "--seconds", str(seconds)]
        return args + (["--tracker", tracker] if tracker else [])

    def start(self) -> None:
        net = self.net
        peers = ",".join(f"{ip}:{6881 + 10 * i}" for i, ip in enumerate(self.seeders))
        self.procs.append(net.start(net.out, SYSTEM_PYTHON, LTCLIENT, "tracker", "--listen", self.tracker_ip,
                                    "--port", "6969", "--peers", peers, log=f"{self.tag}-tracker.log"))
        key, cert = self.dir / "key.pem", self.dir / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=tracker.example", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
        conf = self.dir / "stunnel.conf"
        conf.write_text(f"foreground = yes\npid =\n[tracker]\naccept = {self.tracker_ip}:443\n"
                        f"connect = {self.tracker_ip}:6969\ncert = {cert}\nkey = {key}\n")
        self.procs.append(net.spawn(net.out, "stunnel4", str(conf), log=f"{self.tag}-stunnel.log"))
        for i, ip in enumerate(self.seeders):
            self.procs.append(net.start(net.out, *self._client(
                net.out, "seed", ip, 6881 + 10 * i, self.seed_dir, None, 600, None), log=f"{self.tag}-seeder{i}.log", ready='"ready"', timeout=20))
        time.sleep(3)  # seeders checked their data and announced

    def leech(self, stop_after: float = 15) -> dict:
        """Run the leecher on the first LAN host for ``stop_after`` seconds (or until it
        has the whole file): its final report (pieces, payload bytes, peers)."""
        done = self.net.exec(self.net.lans[0], *self._client(self.net.lans[0], "leech", self.net.lan_ips[0], 6881,
                                                              self.leech_dir, None, stop_after, None),
                             check=False, timeout=stop_after + 60)
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        final = next((line for line in reversed(lines) if line.get("done")), None)
        if final is None:
            raise AssertionError(f"libtorrent leecher failed: {done.stdout[-500:]} {done.stderr[-1500:]}")
        final["alerts"] = [line["alert"] for line in lines if "alert" in line]
        return final


def have_transmission() -> bool:
    import shutil

    return shutil.which("transmission-cli") is not None


class TrLeecher:
    """Transmission (Debian's ``transmission-cli`` 3.00: libutp, its own MSE) as the
    leecher of a :class:`LtSwarm` on the first LAN host, with its defaults (uTP first to
    the peers a tracker names, encryption preferred, port 51413) but for what a closed lab
    needs: no DHT, local discovery or port mapping (``settings.json``), and the tracker's
    self-signed certificate accepted (``TR_CURL_SSL_NO_VERIFY``).  What it received from
    the seeders is counted by the LAN host's own INPUT rules, per transport, so the count
    includes every handshake byte, not just payload."""

    SETTINGS = {"dht-enabled": False, "lpd-enabled": False, "port-forwarding-enabled": False}

    def __init__(self, swarm: LtSwarm):
        self.swarm, self.net, self.ns = swarm, swarm.net, swarm.net.lans[0]

    def run(self, seconds: float) -> dict:
        """Leech for ``seconds`` or until the whole file is on disk: pieces intact, bytes
        from the seeders over UDP and over TCP, seconds taken."""
        net, ns, swarm = self.net, self.ns, self.swarm
        config = swarm.dir / "transmission"
        config.mkdir()
        (config / "settings.json").write_text(json.dumps(self.SETTINGS))
        net.exec(ns, "iptables", "-F", "INPUT")
        for ip in swarm.seeders:
            for proto in ("udp", "tcp"):
                net.exec(ns, "iptables", "-A", "INPUT", "-s", ip, "-p", proto)
        whole = -(-len(swarm.payload) // PIECE)
        start = time.monotonic()
        proc = net.spawn(ns, "transmission-cli", "-g", str(config), "-w", str(swarm.leech_dir), str(swarm.torrent),
                         log=f"{swarm.tag}-transmission.log", env={"TR_CURL_SSL_NO_VERIFY": "1"})
        try:
            while time.monotonic() - start < seconds and swarm.pieces_received() < whole and proc.poll() is None:
                time.sleep(0.5)
        finally:
            taken = time.monotonic() - start
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        got = {"udp": 0, "tcp": 0, "pieces": swarm.pieces_received(), "seconds": round(taken, 1),
               "exit": proc.returncode}
        for line in net.exec(ns, "iptables", "-nvxL", "INPUT").stdout.splitlines()[2:]:
            fields = line.split()
            got[{"17": "udp", "6": "tcp"}.get(fields[2], fields[2])] += int(fields[1])  # a number, or a name
        return got
