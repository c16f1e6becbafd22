"""Ordinary traffic for false-positive checks: ``python -m p2pwall_lab.testbed.ordinary CMD``.

``serve`` (outside host): HTTP on 80 and TLS on 443 (a 1 MiB download each), DNS on
53/udp, and UDP sinks on 443 and 5004 that count what arrives.  ``client`` (LAN host):
one of each, QUIC-looking and RTP-looking UDP streams included; prints a JSON report.
Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.request

BODY = os.urandom(1 << 20)
UDP_SINKS = (443, 5004)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


def _dns_answer(query: bytes) -> bytes | None:
    if len(query) < 12:
        return None
    qid, flags, qd = struct.unpack("!HHH", query[:6])
    end = 12
    while end < len(query) and query[end]:
        end += query[end] + 1
    question = query[12:end + 5]
    header = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0)
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton("203.0.113.250")
    return header + question + answer


def serve(args) -> int:
    certdir = args.dir
    cert, key = os.path.join(certdir, "cert.pem"), os.path.join(certdir, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=p2pwall-test", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    httpd = http.server.ThreadingHTTPServer((args.bind, 80), _Handler)
    tlsd = http.server.ThreadingHTTPServer((args.bind, 443), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    tlsd.socket = ctx.wrap_socket(tlsd.socket, server_side=True)
    for server in (httpd, tlsd):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    counts: dict[tuple[int, str], int] = {}  # (port, sender) -> datagrams arrived
    socks = {}
    for port in (53, *UDP_SINKS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((args.bind, port))
        s.settimeout(0.2)
        socks[port] = s

    def udp_loop(port, s):
        while True:
            try:
                data, src = s.recvfrom(65535)
            except socket.timeout:
                continue
            if port == 53:
                reply = _dns_answer(data)
                if reply:
                    s.sendto(reply, src)
            elif data == b"COUNT?":
                s.sendto(str(counts.get((port, src[0]), 0)).encode(), src)
                counts[(port, src[0])] = 0
            else:
                counts[(port, src[0])] = counts.get((port, src[0]), 0) + 1

    for port, s in socks.items():
        threading.Thread(target=udp_loop, args=(port, s), daemon=True).start()
    print(json.dumps({"ready": True}), flush=True)
    time.sleep(args.seconds)
    return 0


def _udp_stream(server: str, port: int, first: bytes, count: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(count):
            s.sendto(first + struct.pack("!I", i) + os.urandom(1000), (server, port))
            if i % 50 == 49:
                time.sleep(0.01)
        time.sleep(0.5)
        s.settimeout(2)
        s.sendto(b"COUNT?", (server, port))
        try:
            return int(s.recvfrom(64)[0])
        except (socket.timeout, ValueError):
            return -1


def client(args) -> int:
    server = args.server
    report = {}
    for scheme in ("http", "https"):
        ctx = ssl._create_unverified_context() if scheme == "https" else None  # test cert
        try:
            with urllib.request.urlopen(f"{scheme}://{server}/file", timeout=5, context=ctx) as r:
                report[scheme] = len(r.read()) == len(BODY) or r.status == 200
        except Exception as exc:
            report[scheme] = f"failed: {type(exc).__name__}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00\x00\x01\x00\x01"
        s.sendto(query, (server, 53))
        try:
            report["dns"] = s.recvfrom(512)[0][:2] == b"\x12\x34"
        except socket.timeout:
            report["dns"] = "failed: timeout"
    quic = bytes([0xC3, 0, 0, 0, 1, 8]) + os.urandom(8)  # a QUIC v1 Initial's first bytes
    rtp = bytes([0x80, 0x60])  # RTP version 2, dynamic payload type
    sent = args.count
    report["quic_udp"] = {"sent": sent, "arrived": _udp_stream(server, 443, quic, sent)}
    report["rtp_udp"] = {"sent": sent, "arrived": _udp_stream(server, 5004, rtp, sent)}
    print(json.dumps(report))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="p2pwall_lab.testbed.ordinary")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", required=True)
    s.add_argument("--dir", required=True)
    s.add_argument("--seconds", type=float, default=300)
    c = sub.add_parser("client")
    c.add_argument("--server", required=True)
    c.add_argument("--count", type=int, default=300)
    args = p.parse_args(argv)
    return {"serve": serve, "client": client}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
