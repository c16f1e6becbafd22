"""The daemon's status socket (server side) and the ``p2pwall status`` client.

The daemon answers each connection with one JSON document and closes it; the socket is
created with root-only permissions.
"""

from __future__ import annotations

import json
import os
import socket
import stat


class StatusError(Exception):
    """No daemon to ask (exit status 1)."""


class PolledServer:
    """A listening socket the daemon's loop polls: each connection gets one answer from
    ``respond(conn)`` and is closed.  Subclasses set ``self.sock`` (non-blocking)."""

    sock: socket.socket
    timeout = 1.0

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve_one(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(self.timeout)
            try:
                self.respond(conn)
            except OSError:
                pass  # a client that went away costs nothing

    def respond(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


class StatusServer(PolledServer):
    def __init__(self, path: str, snapshot):
        self.path = path
        self.snapshot = snapshot
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        if os.path.exists(path):
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                raise OSError(f"{path} exists and is not a socket")
            if _alive(path):
                raise OSError(f"{path} is in use by another p2pwall")
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.sock.listen(8)
        self.sock.setblocking(False)

    def respond(self, conn: socket.socket) -> None:
        conn.sendall(json.dumps(self.snapshot()).encode() + b"\n")

    def close(self) -> None:
        super().close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


def query(path: str, timeout: float = 5.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except FileNotFoundError:
            raise StatusError(f"no p2pwall daemon: {path} does not exist") from None
        except OSError as exc:
            raise StatusError(f"no p2pwall daemon answering on {path}: {exc.strerror or exc}") from None
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                raise StatusError(f"the daemon on {path} did not answer in {timeout:g} s") from None
            if not chunk:
                break
            chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        raise StatusError(f"the daemon on {path} sent a malformed answer") from None
