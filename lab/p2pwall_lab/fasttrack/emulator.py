"""A FastTrack client and its outside peers, emulated as the ftwall article describes them.

    python -m p2pwall_lab.fasttrack.emulator peers  --log FILE ...   (outside host)
    python -m p2pwall_lab.fasttrack.emulator client --log FILE ...   (LAN host)

The client keeps a cache of ~200 peer addresses, different per run (``--seed``), and
goes through the article's three modes:

1. a flood of UDP pings; to each peer that answers, a UDP setup request (``29 ...``) and
   a TCP connection;
2. parallel TCP connections to known and never-revealed peers;
3. slow one-at-a-time connections, with gaps longer than the lock.

With ``--connect-first N`` it first does what giFT-FastTrack does: TCP sessions to the
first N nodes of its cache (never pinged), each with a 12-byte cipher hello and a seed of
its own, the node's 8-byte answer, then encrypted traffic; the pings follow 40 ms later.
With ``--reping`` it pings every peer it has pinged again in each cycle of mode 2, as a
real client checks the nodes it knows: each ping should get its pong.

All the while it answers pings (the firewall's probes) with pongs.  ``--no-udp`` is a
client whose UDP is disabled: it goes straight to HTTP downloads (``GET /.hash=``).
The peers answer pings with pongs, accept TCP, and serve HTTP downloads.

Every attempt is a JSON line in ``--log``; the client's last line on stdout is a summary.
Every loop is bounded in count and time; only the addresses given are contacted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import selectors
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from p2pwall_lab.testbed.traffic import recv_to, send_from, tcp_listeners, udp_sockets
from p2pwall_plugins.fasttrack import make_node_pong, make_ping, make_pong, parse_ping, parse_pong

# how a client answers a ping (the firewall's probe), as real nodes do (protocols.md):
# an ordinary node's 0x29 "node pong" of 13 bytes, or 21 with its address; a supernode's
# 17-byte 0x28; giFT's bare 5-byte 0x29
ANSWERS = {
    "node": lambda: make_node_pong(),
    "node-address": lambda: make_node_pong(address=(bytes([192, 0, 2, 10]), 1214)),
    "supernode": lambda: make_pong(),
    "bare": lambda: bytes([0x29, 0, 0, 0, 0x29]),
}

DOWNLOAD_SIZE = 64 * 1024


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


class Log:
    def __init__(self, path: str):
        self._f = open(path, "a", buffering=1)
        self._lock = threading.Lock()
        self.t0 = time.monotonic()

    def __call__(self, **record) -> None:
        record.setdefault("t", round(time.monotonic() - self.t0, 3))
        with self._lock:
            self._f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------- peers
def peers(args) -> int:
    log = Log(args.log)
    sel = selectors.DefaultSelector()
    ports = [int(p) for p in args.ports.split(",")]
    for port in ports:  # IPv4 and IPv6 alike
        for u in udp_sockets(port):
            sel.register(u, selectors.EVENT_READ, "udp")
        for t in tcp_listeners(port, 256):
            sel.register(t, selectors.EVENT_READ, "tcp")
    print(json.dumps({"ready": True}), flush=True)
    pool = ThreadPoolExecutor(max_workers=32)
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            sock = key.fileobj
            if key.data == "udp":
                data, src, dst = recv_to(sock, 2048)
                port = sock.getsockname()[1]
                name = parse_ping(data)
                if name is not None:
                    log(kind="udp_ping", src=src[0], dst=dst, dport=port)
                    reply = make_pong(name)
                elif data[:1] == b"\x29":
                    log(kind="udp_setup", src=src[0], dst=dst, dport=port)
                    reply = os.urandom(24)  # "extra setup information": encrypted
                else:
                    log(kind="udp_other", src=src[0], dst=dst, dport=port)
                    continue
                send_from(sock, reply, dst, src)
            else:
                try:
                    conn, src = sock.accept()
                except OSError:
                    continue
                pool.submit(_serve_tcp, conn, src, log)
    pool.shutdown(wait=False, cancel_futures=True)
    return 0


def _serve_tcp(conn: socket.socket, src, log: Log) -> None:
    with conn:
        dst, port = conn.getsockname()[:2]
        log(kind="tcp_accept", src=src[0], dst=dst, dport=port)
        conn.settimeout(5)
        try:
            data = conn.recv(4096)
        except OSError:
            return
        if len(data) == 12:  # a session's cipher hello (giFT-FastTrack: random, seed, mangled type)
            log(kind="session_hello", src=src[0], dst=dst, dport=port)
            try:
                conn.sendall(os.urandom(8))  # the supernode's seed and mangled type
                conn.settimeout(10)
                while True:  # then encrypted traffic: count what arrives
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    log(kind="session_data", src=src[0], dst=dst, dport=port, size=len(chunk))
            except OSError:
                pass
        elif data.startswith(b"GET /.hash="):
            log(kind="http_get", src=src[0], dst=dst, dport=port)
            body = hashlib.sha256(data).digest() * (DOWNLOAD_SIZE // 32)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Kazaa-Username: peer\r\n\r\n"
                             % len(body) + body)
                log(kind="download_served", src=src[0], dst=dst, dport=port)
            except OSError:
                pass
        elif data:
            log(kind="tcp_data", src=src[0], dst=dst, dport=port, size=len(data))
            try:
                conn.sendall(os.urandom(8))  # the peer's half of the encrypted handshake
            except OSError:
                pass


# ---------------------------------------------------------------------------- client
class Client:
    def __init__(self, args):
        self.args = args
        self.log = Log(args.log)
        rng = random.Random(args.seed)
        addresses = args.peer_addresses.split(",")
        ports = [int(p) for p in args.ports.split(",")]
        # distinct addresses, each with one of the ports: ~200 peers, different per run
        chosen = rng.sample(addresses, min(args.cache, len(addresses)))
        self.cache = [(a, rng.choice(ports)) for a in chosen]
        cut = int(len(self.cache) * args.revealed)
        self.revealed, self.hidden = self.cache[:cut], self.cache[cut:]
        self.rng = rng
        self.connected: list[tuple[str, int, str]] = []
        self.downloads = 0
        self.attempts = 0
        self.pongs: set[tuple[str, int]] = set()
        self.probes_answered = 0
        self.sessions_up = 0
        self.stop = threading.Event()
        self.udp = None
        if not args.no_udp:
            v6 = ":" in addresses[0]  # the peers' family: the client speaks IPv6 to IPv6 peers
            self.udp = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("::" if v6 else "0.0.0.0", args.udp_port))
            self.udp.settimeout(0.2)
            self.listener = threading.Thread(target=self._listen, daemon=True)
            self.listener.start()

    def _listen(self) -> None:
        """Record pongs; answer pings (a peer's, or the firewall's probe) with a pong."""
        while not self.stop.is_set():
            try:
                data, src = self.udp.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            src = src[:2]
            if parse_pong(data):
                self.pongs.add(src)
                self.log(kind="pong", peer=src[0], port=src[1])
            elif parse_ping(data) is not None:
                self.probes_answered += 1
                self.log(kind="ping_answered", src=src[0], port=src[1])
                try:
                    self.udp.sendto(ANSWERS[self.args.answer](), src)
                except OSError:
                    pass

    def _connect(self, peer, mode: str, timeout: float, http: bool = False) -> bool:
        self.attempts += 1
        addr, port = peer
        try:
            with socket.create_connection((addr, port), timeout=timeout) as s:
                s.settimeout(timeout)
                if http:
                    return self._download(s, peer, mode)
                s.sendall(os.urandom(4) + os.urandom(4))  # seed + encrypted enc type
                try:
                    answer = s.recv(64)
                except OSError:
                    answer = b""
                ok = bool(answer)
        except OSError as exc:
            self.log(kind="tcp", mode=mode, peer=addr, port=port, result=type(exc).__name__)
            return False
        self.log(kind="tcp", mode=mode, peer=addr, port=port, result="connected" if ok else "no answer")
        if ok:
            self.connected.append((addr, port, mode))
        return ok

    def _download(self, s: socket.socket, peer, mode: str) -> bool:
        addr, port = peer
        digest = hashlib.sha1(f"{addr}:{port}".encode()).hexdigest()
        request = (f"GET /.hash={digest} HTTP/1.1\r\nHost: {_endpoint(addr, port)}\r\n"
                   f"UserAgent: KazaaClient Nov  3 2002 20:29:03\r\nX-Kazaa-Username: emulated\r\n"
                   f"X-Kazaa-Network: KaZaA\r\nX-Kazaa-IP: {_endpoint(s.getsockname()[0], self.args.udp_port)}\r\n"
                   f"X-Kazaa-SupernodeIP: {self.args.supernode}\r\nConnection: close\r\n\r\n")
        got = b""
        error = None
        try:
            s.sendall(request.encode())
            while len(got) < DOWNLOAD_SIZE + 4096:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except OSError as exc:
            error = type(exc).__name__
        head, _, body = got.partition(b"\r\n\r\n")
        complete = head.startswith(b"HTTP/1.1 200") and len(body) >= DOWNLOAD_SIZE
        if complete:
            self.downloads += 1
            self.connected.append((addr, port, mode))
        self.log(kind="http", mode=mode, peer=addr, port=port, bytes=len(body), error=error,
                 result="download complete" if complete else "incomplete")
        return complete

    def _session(self, peer, end: float) -> None:
        """What giFT-FastTrack does first: a TCP session to a cached node (never pinged),
        its 12-byte cipher hello with a seed of its own, the node's 8-byte answer, then
        encrypted traffic until the run ends or the connection breaks."""
        addr, port = peer
        sent = 0
        try:
            with socket.create_connection((addr, port), timeout=1.0) as s:
                s.settimeout(1.0)
                s.sendall(bytes.fromhex("fa00b62b") + os.urandom(4) + os.urandom(4))
                answer = s.recv(64)
                self.log(kind="session", peer=addr, port=port, result="up" if len(answer) == 8 else "no answer")
                if len(answer) != 8:
                    return
                self.sessions_up += 1
                self.stop.wait(0.5)  # the node list exchange follows the handshake
                while time.monotonic() < end and not self.stop.is_set():
                    s.sendall(os.urandom(64))
                    sent += 64
                    self.stop.wait(0.25)
        except OSError as exc:
            self.log(kind="session", peer=addr, port=port, result=type(exc).__name__)
        finally:
            self.log(kind="session_end", peer=addr, port=port, sent=sent)

    def run(self) -> dict:
        a = self.args
        end = time.monotonic() + a.seconds
        pool = ThreadPoolExecutor(max_workers=a.parallel)
        sessions = []
        try:
            if a.connect_first and not a.no_udp:  # sessions to the first cached nodes, then the pings
                for peer in self.hidden[:a.connect_first]:
                    t = threading.Thread(target=self._session, args=(peer, end), daemon=True)
                    t.start()
                    sessions.append(t)
                time.sleep(0.04)
            if a.no_udp:
                self._mode("http", end)
                while time.monotonic() < end:
                    peer = self.rng.choice(self.cache)
                    self._connect(peer, "http", 3.0, http=True)
                    time.sleep(0.5)
            else:
                self._mode1(pool, min(end, time.monotonic() + a.mode1))
                self._mode("2", end)
                m2_end = min(end, time.monotonic() + a.mode2)
                while time.monotonic() < m2_end:
                    if a.reping:
                        self._ping(self.revealed, 0.005, m2_end, again=True)
                    batch = self.rng.sample(self.revealed, min(5, len(self.revealed))) + \
                        self.rng.sample(self.hidden, min(5, len(self.hidden)))
                    list(pool.map(lambda p: self._connect(p, "2", 1.0), batch))
                    time.sleep(0.2)
                self._mode("3", end)
                hidden = list(self.hidden)
                while time.monotonic() < end and hidden:
                    self._connect(hidden.pop(), "3", 3.0)
                    # a gap longer than the lock: only the probes can keep it locked
                    self.stop.wait(min(a.gap, max(0.0, end - time.monotonic())))
        finally:
            pool.shutdown(wait=True)
            self.stop.set()
            for t in sessions:
                t.join(3)
        return {"attempts": self.attempts, "sessions_up": self.sessions_up, "connected": len(self.connected),
                "connected_peers": self.connected[:20], "downloads": self.downloads,
                "pongs": len(self.pongs), "probes_answered": self.probes_answered,
                "cache": len(self.cache), "revealed": len(self.revealed)}

    def _mode(self, mode: str, end: float) -> None:
        self.log(kind="mode", mode=mode)

    def _ping(self, peers, gap: float, end: float, again: bool = False) -> None:
        ping = make_ping()
        for addr, port in peers:
            if time.monotonic() >= end:
                return
            self.udp.sendto(ping, (addr, port))
            self.log(kind="ping", peer=addr, port=port, again=again)
            time.sleep(gap)

    def _mode1(self, pool, end: float) -> None:
        self._mode("1", end)
        self._ping(self.revealed, 0.002, end)
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        answered = [p for p in self.revealed if p in self.pongs]
        for addr, port in answered:
            self.udp.sendto(bytes.fromhex("2900000029") + os.urandom(4), (addr, port))
            self.log(kind="setup", peer=addr, port=port)
        list(pool.map(lambda p: self._connect(p, "1", 0.5), answered))


def client(args) -> int:
    summary = Client(args).run()
    print(json.dumps(summary), flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="p2pwall_lab.fasttrack.emulator")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("peers", help="outside FastTrack peers")
    s.add_argument("--log", required=True)
    s.add_argument("--ports", default="1214,2121,3131,4141")
    s.add_argument("--seconds", type=float, default=600)
    c = sub.add_parser("client", help="an emulated FastTrack client")
    c.add_argument("--log", required=True)
    c.add_argument("--peer-addresses", required=True, help="comma-separated outside addresses")
    c.add_argument("--ports", default="1214,2121,3131,4141")
    c.add_argument("--cache", type=int, default=200)
    c.add_argument("--revealed", type=float, default=0.7, help="share of the cache pinged in mode 1")
    c.add_argument("--seed", type=int, default=None)
    c.add_argument("--seconds", type=float, default=40, help="how long the client runs in all")
    c.add_argument("--mode1", type=float, default=4)
    c.add_argument("--mode2", type=float, default=8)
    c.add_argument("--gap", type=float, default=10, help="mode 3 pause between attempts")
    c.add_argument("--parallel", type=int, default=20)
    c.add_argument("--udp-port", type=int, default=1214)
    c.add_argument("--no-udp", action="store_true", help="UDP disabled: straight to HTTP downloads")
    c.add_argument("--connect-first", type=int, default=0,
                   help="open sessions to this many cached nodes before pinging (as giFT-FastTrack does)")
    c.add_argument("--reping", action="store_true", help="ping the peers it pinged again in every cycle of mode 2")
    c.add_argument("--answer", choices=sorted(ANSWERS), default="node",
                   help="how it answers pings (probes): an ordinary node's 13-byte 0x29 by default")
    c.add_argument("--supernode", default="203.0.113.1:1214")
    args = p.parse_args(argv)
    return {"peers": peers, "client": client}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
