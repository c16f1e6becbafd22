"""Obfuscated eDonkey and Kad as aMule sends them (``EncryptedStreamSocket``,
``EncryptedDatagramSocket``): byte-exact builders for tests, and a small emulator run
inside test namespaces (``python -m p2pwall_lab.testbed.emule CMD``):

- ``serve``: outside sources (TCP: answer an obfuscated opening keyed by ``--hash``,
  read the encrypted hello, then send file data) and Kad nodes (UDP: answer each
  lookup with a result of 35 + 25n bytes); every arrival logged as a JSON line;
- ``client``: a LAN client that opens obfuscated sessions to each source (opening,
  waits for the answer, then its hello, then reads the file) and sends Kad lookups to
  each node; prints what it got as JSON.

The RC4 streams are keyed as aMule keys them (MD5 of the user hash, a magic byte and
the random key part; the first 1024 bytes discarded for TCP).  Every loop is bounded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import selectors
import socket
import struct
import sys
import time

SYNC_TCP, SYNC_UDP = 0x835E6FC4, 0x395F2EC1
PADDING = 254  # aMule's default CryptoPaddingLenght (eMule's is 128): TCP padding is 0 to this
MARKERS = (0xE3, 0xC5, 0xD4, 0xE4, 0xE5, 0xA3, 0xB2)


class RC4:
    def __init__(self, key: bytes, drop: int = 0):
        s, j = list(range(256)), 0
        for i in range(256):
            j = (j + s[i] + key[i % len(key)]) & 0xFF
            s[i], s[j] = s[j], s[i]
        self.s, self.i, self.j = s, 0, 0
        self.crypt(bytes(drop))

    def crypt(self, data: bytes) -> bytes:
        out, s = bytearray(), self.s
        i, j = self.i, self.j
        for b in data:
            i = (i + 1) & 0xFF
            j = (j + s[i]) & 0xFF
            s[i], s[j] = s[j], s[i]
            out.append(b ^ s[(s[i] + s[j]) & 0xFF])
        self.i, self.j = i, j
        return bytes(out)


def marker(rng, kad: bool = False) -> int:
    while True:
        b = rng.randrange(256) & (0xFC if kad else 0xFF)
        if b not in MARKERS:
            return b


def keys(user_hash: bytes, key_part: bytes) -> tuple[RC4, RC4]:
    """(requester's send stream, requester's receive stream)."""
    return (RC4(hashlib.md5(user_hash + b"\x22" + key_part).digest(), 1024),
            RC4(hashlib.md5(user_hash + b"\xcb" + key_part).digest(), 1024))


def opening(rng, user_hash: bytes, pad: int | None = None) -> tuple[bytes, RC4, RC4]:
    """The requester's opening, and its two streams (to answer and go on with)."""
    key_part = rng.randbytes(4)
    send, recv = keys(user_hash, key_part)
    pad = rng.randrange(PADDING + 1) if pad is None else pad
    return (bytes([marker(rng)]) + key_part + send.crypt(struct.pack("<IBBB", SYNC_TCP, 0, 0, pad) + rng.randbytes(pad)),
            send, recv)


def answer(rng, stream: RC4, pad: int | None = None) -> bytes:
    pad = rng.randrange(PADDING + 1) if pad is None else pad
    return stream.crypt(struct.pack("<IBB", SYNC_TCP, 0, pad) + rng.randbytes(pad))


def hello(rng, stream: RC4) -> bytes:
    body = b"\x01\x10" + rng.randbytes(16) + rng.randbytes(6) + struct.pack("<I", 4) + rng.randbytes(40)
    return stream.crypt(b"\xe3" + struct.pack("<I", len(body)) + body)


def tcp_exchange(rng, pad_a=None, pad_b=None):
    """An opening, its answer and the encrypted hello, as one exchange's bytes."""
    user_hash = rng.randbytes(16)
    first, send, _ = opening(rng, user_hash, pad_a)
    _, recv_b = keys(user_hash, first[1:5])  # the source's own send stream is the requester's receive one
    return first, answer(rng, recv_b, pad_b), hello(rng, send)


def kad_datagram(rng, plain: bytes) -> bytes:
    kad_id, key_part = rng.randbytes(16), rng.randbytes(2)
    rc4 = RC4(hashlib.md5(kad_id + key_part).digest())
    return bytes([marker(rng, kad=True)]) + key_part + rc4.crypt(struct.pack("<IB", SYNC_UDP, 0) + rng.randbytes(8)
                                                                 + plain)


def kad_request(rng) -> bytes:
    """KADEMLIA2_REQ (type, target, receiver: 35 bytes) obfuscated: 51 bytes."""
    return kad_datagram(rng, b"\xe4\x21" + bytes([rng.choice((2, 4, 11))]) + rng.randbytes(32))


def kad_answer(rng, contacts: int) -> bytes:
    """KADEMLIA2_RES (target, count, 25 bytes a contact) obfuscated: 35 + 25n bytes."""
    return kad_datagram(rng, b"\xe4\x29" + rng.randbytes(16) + bytes([contacts]) + rng.randbytes(25 * contacts))


def _recv_exact(conn, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = conn.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def serve(args) -> int:
    rng = random.Random(args.seed)
    user_hash = bytes.fromhex(args.hash)
    log = open(args.log, "a", buffering=1)
    sel = selectors.DefaultSelector()
    for addr in args.bind.split(","):
        t = socket.socket()
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((addr, args.port))
        t.listen(16)
        sel.register(t, selectors.EVENT_READ, "tcp")
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((addr, args.kad_port))
        sel.register(u, selectors.EVENT_READ, "udp")
    print(json.dumps({"ready": True}), flush=True)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.5):
            sock = key.fileobj
            if key.data == "udp":
                data, src = sock.recvfrom(2048)
                log.write(json.dumps({"proto": "udp", "src": src[0], "dst": sock.getsockname()[0], "len": len(data)}) + "\n")
                if len(data) == 51:
                    sock.sendto(kad_answer(rng, rng.choice((2, 4, 11))), src)
                continue
            try:
                conn, src = sock.accept()
            except OSError:
                continue
            entry = {"proto": "tcp", "src": src[0], "dst": conn.getsockname()[0], "opening": 0, "hello": 0, "sent": 0}
            with conn:
                conn.settimeout(2.0)
                try:
                    head = _recv_exact(conn, 5)
                    send_b, recv_b = keys(user_hash, head[1:5])  # B receives with A's send key
                    fixed = send_b.crypt(_recv_exact(conn, 7))
                    pad = _recv_exact(conn, fixed[6])
                    send_b.crypt(pad)
                    entry["opening"] = 12 + len(pad)
                    if struct.unpack_from("<I", fixed)[0] == SYNC_TCP:
                        conn.sendall(answer(rng, recv_b))
                        got = conn.recv(4096)
                        entry["hello"] = len(got)
                        if got:
                            conn.sendall(recv_b.crypt(rng.randbytes(args.file)))
                            entry["sent"] = args.file
                except OSError:
                    pass
            log.write(json.dumps(entry) + "\n")
    return 0


def client(args) -> int:
    rng = random.Random(args.seed)
    user_hash = bytes.fromhex(args.hash)
    out = {"sessions": [], "kad": []}
    for source in args.sources.split(",") if args.sources else []:
        got = {"source": source, "connected": False, "answered": False, "file": 0}
        try:
            with socket.create_connection((source, args.port), timeout=2) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                got["connected"] = True
                first, send, recv = opening(rng, user_hash)
                s.sendall(first)
                reply = recv.crypt(_recv_exact(s, 6))
                if len(reply) == 6 and struct.unpack_from("<I", reply)[0] == SYNC_TCP:
                    recv.crypt(_recv_exact(s, reply[5]))
                    got["answered"] = True
                    s.sendall(hello(rng, send))
                    s.settimeout(1.5)
                    while got["file"] < 1 << 20:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        got["file"] += len(chunk)
        except OSError:
            pass
        out["sessions"].append(got)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("", args.kad_port))
        u.settimeout(0.5)
        for node in args.nodes.split(",") if args.nodes else []:
            u.sendto(kad_request(rng), (node, args.kad_port))
            try:
                data, _ = u.recvfrom(2048)
                out["kad"].append(len(data))
            except OSError:
                out["kad"].append(None)
    print(json.dumps(out), flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="p2pwall_lab.testbed.emule")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("serve", "client"):
        s = sub.add_parser(name)
        s.add_argument("--hash", default="00112233445566778899aabbccddeeff")
        s.add_argument("--port", type=int, default=4662)
        s.add_argument("--kad-port", type=int, default=4672)
    s = sub.choices["serve"]
    s.add_argument("--bind", required=True, help="addresses, comma separated")
    s.add_argument("--log", required=True)
    s.add_argument("--file", type=int, default=65536, help="bytes of file data a source sends after the hello")
    s.add_argument("--seconds", type=float, default=300)
    s.add_argument("--seed", type=int, default=1)
    s = sub.choices["client"]
    s.add_argument("--sources", default="")
    s.add_argument("--nodes", default="")
    s.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    return {"serve": serve, "client": client}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
