"""The daemon's status socket (server side) and the client the CLI uses.

Served off the packet path: a thread accepts each connection and reads its request
(one JSON line, ``{"cmd": "status"}``, ``{"cmd": "unblock", "address": ...}``...), with
a time limit; the daemon's loop answers queued requests between verdict batches (the
tables are only touched from the loop), and the thread writes the answer back.  An idle
or slow client costs the loop nothing.  The socket is created with root-only
permissions (root and ``[status] group`` with a group), and commands that change state are refused unless the peer is root.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import stat
import struct
import threading

MAX_CLIENTS = 16  # connections served at once; more wait in the listen backlog
CLIENT_TIMEOUT = 2.0  # seconds a client may take to send its request or read the answer
CHANGES = ("block", "unblock", "unlock")


class StatusError(Exception):
    """No daemon to ask, or it refused the request (exit status 1; 2 with ``usage``:
    the caller may not ask)."""

    def __init__(self, message: str, usage: bool = False):
        super().__init__(message)
        self.usage = usage


class Request:
    """One client request, answered by the daemon's loop."""

    __slots__ = ("doc", "uid", "answer", "done")

    def __init__(self, doc: dict, uid: int | None):
        self.doc, self.uid = doc, uid
        self.answer: bytes | None = None
        self.done = threading.Event()


class ThreadedServer:
    """Accepts in a thread; hands each parsed request to the loop through ``pending``
    and a wake-up socket (``fileno()`` is that socket, for select)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        sock.settimeout(0.5)  # the accept loop looks at _closed this often
        self.pending: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name=type(self).__name__, daemon=True)
        self._thread.start()

    def fileno(self) -> int:
        return self._wake_r.fileno()

    # ---------------------------------------------------------------- threads
    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._closed:
                    return
                continue
            if not self._slots.acquire(blocking=False):
                conn.close()  # too many at once: this one is turned away, nobody waits
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(CLIENT_TIMEOUT)
                doc = self.read_request(conn)
                if doc is None:
                    return
                request = Request(doc, _peer_uid(conn))
                self.pending.put(request)
                try:
                    self._wake_w.send(b"x")
                except OSError:
                    pass
                if request.done.wait(10.0) and request.answer is not None:
                    conn.sendall(request.answer)
        except OSError:
            pass  # a client that went away costs nothing
        finally:
            self._slots.release()

    def read_request(self, conn: socket.socket) -> dict | None:
        raise NotImplementedError

    # ---------------------------------------------------------------- the loop
    def serve_pending(self, handle) -> None:
        """Answer every queued request with ``handle(request) -> bytes`` (loop thread)."""
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while True:
            try:
                request = self.pending.get_nowait()
            except queue.Empty:
                return
            try:
                request.answer = handle(request)
            except Exception as exc:  # a bad request never takes the loop down
                request.answer = _line({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
            request.done.set()

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(2)
        self._wake_r.close()
        self._wake_w.close()


def _peer_uid(conn: socket.socket) -> int | None:
    if conn.family != socket.AF_UNIX:
        return None
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[1]
    except OSError:
        return None


def _line(doc) -> bytes:
    return json.dumps(doc).encode() + b"\n"


class StatusServer(ThreadedServer):
    def __init__(self, path: str, group: str = ""):
        """``group``: a group whose members may read the status (mode 0660); changes stay
        root's (the peer's uid is checked on every request)."""
        self.path = path
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise OSError(f"{path} exists and is not a socket")
            if _alive(path):
                raise OSError(f"{path} is in use by another p2pwall")
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        if group:
            import grp

            gid = grp.getgrnam(group).gr_gid
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
            if directory and "p2pwall" in os.path.basename(directory):  # its own: the group may pass
                os.chown(directory, -1, gid)
                os.chmod(directory, (os.stat(directory).st_mode & 0o7777) | 0o010)
        else:
            os.chmod(path, 0o600)
        sock.listen(64)
        super().__init__(sock)

    def read_request(self, conn: socket.socket) -> dict | None:
        data = b""
        while b"\n" not in data and len(data) < 8192:
            try:
                chunk = conn.recv(4096)
            except socket.timeout:
                return None
            if not chunk:
                break
            data += chunk
        if not data.strip():
            return {"cmd": "status"}  # a client that only connects gets the status
        try:
            doc = json.loads(data.split(b"\n", 1)[0])
        except ValueError:
            conn.sendall(_line({"ok": False, "error": "not a JSON request"}))
            return None
        return doc if isinstance(doc, dict) else {"cmd": None}

    def close(self) -> None:
        super().close()
        try:
            os.unlink(self.path)
        except OSError:  # gone already, or no longer ours to remove: stopping goes on
            pass


def _alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
            return True
        except OSError:
            return False


def query(path: str, request: dict | None = None, timeout: float = 5.0) -> dict:
    """Send one request (default: the status) and return the daemon's answer."""
    request = request or {"cmd": "status"}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except FileNotFoundError:
            raise StatusError(f"no p2pwall daemon: {path} does not exist") from None
        except PermissionError:
            raise StatusError(f"{path}: permission denied: the status socket is root's (and its "
                              f"[status] group's, if one is set); run this as root or as a member "
                              f"of that group", usage=True) from None
        except OSError as exc:
            raise StatusError(f"no p2pwall daemon answering on {path}: {exc.strerror or exc}") from None
        chunks = []
        try:
            s.sendall(_line(request))
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except socket.timeout:
            raise StatusError(f"the daemon on {path} did not answer in {timeout:g} s") from None
        except OSError as exc:
            raise StatusError(f"the daemon on {path} closed the connection: {exc.strerror or exc}") from None
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        raise StatusError(f"the daemon on {path} sent a malformed answer") from None
