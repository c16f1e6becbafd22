"""Small traffic tools run inside test namespaces: ``python -m p2pwall_lab.testbed.traffic CMD``.

- ``serve``: UDP echo and TCP accept on the given ports, logging every arrival as a JSON
  line (what reached the far side);
- ``udp``: send datagrams and report the replies;
- ``tcp``: connect (optionally send) and report whether it worked;
- ``listen``: receive UDP datagrams on a port and report them;
- ``relay``: a logging TCP relay (an IPv6 front for an IPv4-only server);
- ``newflows``: a new-flow flood (``--spoof ADDR``: raw frames from this host's MAC with
  another address, as a host sending as its neighbour).

Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import time

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python < 3.12 lacks the name


def udp_sockets(port: int) -> list[socket.socket]:
    """A UDP socket per address family bound to ``port`` (IPv6 only for IPv6), each set
    to report the address a datagram was sent to (``recv_to``)."""
    v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    v4.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    v4.bind(("0.0.0.0", port))
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    v6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    v6.bind(("::", port))
    return [v4, v6]


def tcp_listeners(port: int, backlog: int = 128) -> list[socket.socket]:
    out = []
    for fam, any_ in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((any_, port))
        s.listen(backlog)
        out.append(s)
    return out


def recv_to(sock: socket.socket, size: int = 65535):
    """(data, source, the local address it was sent to or None), from a ``udp_sockets`` socket."""
    data, anc, _flags, src = sock.recvmsg(size, 256)
    for level, typ, cdata in anc:
        if level == socket.IPPROTO_IP and typ == IP_PKTINFO:
            return data, src, socket.inet_ntoa(cdata[8:12])
        if level == socket.IPPROTO_IPV6 and typ == socket.IPV6_PKTINFO:
            return data, src, socket.inet_ntop(socket.AF_INET6, cdata[:16])
    return data, src, None


def send_from(sock: socket.socket, data: bytes, local: str | None, to) -> None:
    """Answer ``to`` from the local address that was asked (hosts with many addresses)."""
    if local is None:
        sock.sendto(data, to)
    elif sock.family == socket.AF_INET6:
        sock.sendmsg([data], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO,
                               socket.inet_pton(socket.AF_INET6, local) + b"\0" * 4)], 0, to)
    else:
        sock.sendmsg([data], [(socket.IPPROTO_IP, IP_PKTINFO,
                               b"\0" * 4 + socket.inet_aton(local) + b"\0" * 4)], 0, to)


def family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _ports(text: str) -> list[int]:
    out = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def serve(args) -> int:
    sel = selectors.DefaultSelector()
    log = open(args.log, "a", buffering=1)
    for port in _ports(args.udp):
        for s in udp_sockets(port):
            sel.register(s, selectors.EVENT_READ, ("udp", port))
    for port in _ports(args.tcp):
        for s in tcp_listeners(port):
            sel.register(s, selectors.EVENT_READ, ("tcp", port))
    print(json.dumps({"ready": True}), flush=True)
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            kind, port = key.data
            sock = key.fileobj
            if kind == "udp":
                data, src, dst = recv_to(sock)
                log.write(json.dumps({"t": time.time(), "proto": "udp", "src": src[0], "sport": src[1],
                                      "dst": dst, "dport": port, "data": data.hex()}) + "\n")
                send_from(sock, b"ECHO:" + data, dst, src)
            else:
                try:
                    conn, src = sock.accept()
                except OSError:
                    continue
                with conn:
                    conn.settimeout(1.0)
                    dst = conn.getsockname()[0]
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        data = b""
                    log.write(json.dumps({"t": time.time(), "proto": "tcp", "src": src[0], "sport": src[1],
                                          "dst": dst, "dport": port, "data": data.hex()}) + "\n")
                    try:
                        conn.sendall(b"OK\n")
                    except OSError:
                        pass
    return 0


def udp(args) -> int:
    results = []
    with socket.socket(family(args.to), socket.SOCK_DGRAM) as s:
        if args.sport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::" if s.family == socket.AF_INET6 else "0.0.0.0", args.sport))
        s.settimeout(args.wait)
        for _ in range(args.count):
            s.sendto(bytes.fromhex(args.hex), (args.to, args.port))
            try:
                data, src = s.recvfrom(65535)
                results.append({"reply": data.hex(), "from": src[0], "from_port": src[1]})
            except socket.timeout:
                results.append({"reply": None})
    print(json.dumps(results))
    return 0


def tcp(args) -> int:
    result = {"connected": False, "reply": None}
    try:
        with socket.create_connection((args.to, args.port), timeout=args.timeout) as s:
            result["connected"] = True
            if args.data:
                s.sendall(args.data.encode().decode("unicode_escape").encode("latin-1"))
            elif args.hex:
                s.sendall(bytes.fromhex(args.hex))
            s.settimeout(args.timeout)
            try:
                result["reply"] = s.recv(4096).decode("latin-1")
            except OSError:
                pass
    except OSError as exc:
        result["error"] = type(exc).__name__
    print(json.dumps(result))
    return 0


def http(args) -> int:
    import urllib.request

    result = {"ok": False, "bytes": 0}
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as r:
            body = r.read(1 << 20)
            result.update(ok=r.status == 200, bytes=len(body))
    except Exception as exc:  # any failure is the answer, not a crash
        result["error"] = type(exc).__name__
    print(json.dumps(result))
    return 0


def listen(args) -> int:
    got = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", args.port))
        print(json.dumps({"ready": True}), flush=True)
        deadline = time.monotonic() + args.seconds
        while len(got) < args.count and time.monotonic() < deadline:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data, src = s.recvfrom(65535)
            except socket.timeout:
                break
            got.append({"data": data.hex(), "from": src[0], "from_port": src[1]})
    print(json.dumps(got), flush=True)
    return 0


def relay(args) -> int:
    """A TCP relay from ``--listen``:``--port`` to ``--to``:``--port`` (an IPv6 front for
    an IPv4-only server); each connection is a JSON line in ``--log`` with the bytes
    relayed each way.  Runs ``--seconds`` at most."""
    import threading

    log = open(args.log, "a", buffering=1)
    lock = threading.Lock()

    def pipe(a: socket.socket, b: socket.socket, counts: list, i: int) -> None:
        try:
            while chunk := a.recv(65536):
                counts[i] += len(chunk)
                b.sendall(chunk)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def handle(conn: socket.socket, src) -> None:
        counts = [0, 0]
        try:
            upstream = socket.create_connection((args.to, args.port), timeout=5)
        except OSError as exc:
            with lock:
                log.write(json.dumps({"src": src[0], "error": type(exc).__name__}) + "\n")
            conn.close()
            return
        with conn, upstream:
            conn.settimeout(30)
            upstream.settimeout(30)
            back = threading.Thread(target=pipe, args=(upstream, conn, counts, 1), daemon=True)
            back.start()
            pipe(conn, upstream, counts, 0)
            back.join(30)
        with lock:
            log.write(json.dumps({"t": time.time(), "src": src[0], "up": counts[0], "down": counts[1]}) + "\n")

    with socket.socket(family(args.listen), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((args.listen, args.port))
        s.listen(64)
        s.settimeout(0.5)
        print(json.dumps({"ready": True}), flush=True)
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            try:
                conn, src = s.accept()
            except socket.timeout:
                continue
            threading.Thread(target=handle, args=(conn, src), daemon=True).start()
    return 0


def newflows(args) -> int:
    """A new-flow flood: every datagram to a new address/port pair (as a port scan or a
    DHT crawler sends them), from a non-blocking socket in a tight loop, bounded in time;
    prints how many were sent."""
    import random

    end = time.time() + args.seconds
    sent = 0
    rnd = random.Random(1)
    payload = bytes(rnd.getrandbits(8) for _ in range(args.size))
    if args.spoof:
        return _spoofed_flows(args, payload, rnd, end)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        while time.time() < end:
            for _ in range(512):
                try:
                    s.sendto(payload, (f"{args.prefix}.{rnd.randrange(1, args.hosts + 1)}", rnd.randrange(1024, 65535)))
                    sent += 1
                except BlockingIOError:
                    pass
    print(sent, flush=True)
    return 0


def _spoofed_flows(args, payload: bytes, rnd, end: float) -> int:
    """The new-flow flood as raw Ethernet frames from this host's MAC with the source
    address ``--spoof`` (a neighbour's), paced to ``--rate`` a second; prints how many
    were sent.  IPv4 and UDP only (the UDP checksum left out, as IPv4 allows)."""
    import struct

    iface = args.iface
    mine = bytes.fromhex(open(f"/sys/class/net/{iface}/address").read().strip().replace(":", ""))
    gateway = bytes.fromhex(args.gateway_mac.replace(":", ""))
    src = socket.inet_aton(args.spoof)
    heads = []
    for host in range(1, args.hosts + 1):  # one IP header per destination, its checksum done once
        dst = socket.inet_aton(f"{args.prefix}.{host}")
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 0, 0x4000, 64, 17, 0, src, dst))
        words = sum(struct.unpack("!10H", bytes(ip)))
        while words >> 16:
            words = (words & 0xFFFF) + (words >> 16)
        ip[10:12] = struct.pack("!H", ~words & 0xFFFF)
        heads.append(gateway + mine + b"\x08\x00" + bytes(ip))
    sent = 0
    start = time.time()
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        while time.time() < end:
            due = int((time.time() - start) * args.rate)
            for _ in range(min(512, max(0, due - sent))):
                ports = struct.pack("!HHHH", rnd.randrange(1024, 65535), rnd.randrange(1024, 65535), 8 + len(payload), 0)
                try:
                    s.send(heads[rnd.randrange(len(heads))] + ports + payload)
                    sent += 1
                except BlockingIOError:
                    pass
            if sent >= due:
                time.sleep(0.001)
    print(sent, flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="p2pwall_lab.testbed.traffic")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--log", required=True)
    s.add_argument("--udp", default="")
    s.add_argument("--tcp", default="")
    s.add_argument("--seconds", type=float, default=600)
    s = sub.add_parser("udp")
    s.add_argument("--to", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--hex", required=True)
    s.add_argument("--sport", type=int, default=0)
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--wait", type=float, default=1.0)
    s = sub.add_parser("tcp")
    s.add_argument("--to", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--data", default="")
    s.add_argument("--hex", default="")
    s.add_argument("--timeout", type=float, default=2.0)
    s = sub.add_parser("http")
    s.add_argument("--url", required=True)
    s.add_argument("--timeout", type=float, default=2.0)
    s = sub.add_parser("listen")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--seconds", type=float, default=5)
    s = sub.add_parser("relay")
    s.add_argument("--listen", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--to", required=True)
    s.add_argument("--log", required=True)
    s.add_argument("--seconds", type=float, default=600)
    s = sub.add_parser("newflows")
    s.add_argument("--seconds", type=float, default=4)
    s.add_argument("--prefix", default="203.0.113")
    s.add_argument("--hosts", type=int, default=250)
    s.add_argument("--size", type=int, default=36)
    s.add_argument("--spoof", default="", help="raw frames with this source address (IPv4)")
    s.add_argument("--gateway-mac", default="", help="with --spoof: the gateway's MAC")
    s.add_argument("--iface", default="eth0")
    s.add_argument("--rate", type=float, default=20000, help="with --spoof: frames a second")
    args = p.parse_args(argv)
    return {"serve": serve, "udp": udp, "tcp": tcp, "http": http, "listen": listen,
            "relay": relay, "newflows": newflows}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
