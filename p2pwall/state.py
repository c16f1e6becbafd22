"""Learned state that survives a restart: blocked peers and locked clients.

Written atomically (temporary file, fsync, rename) at stop and every ``[state]
save_seconds``; times are stored as wall-clock ends so that a restart, or a reboot,
keeps only what has not yet expired.  A corrupt or truncated file is reported, set
aside beside the original, and p2pwall starts without it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time

from .packet import ip_bytes
from .records import BLOCK, KINDS, LOCK, NAMED, OWN, RESTORED, Record

log = logging.getLogger("p2pwall.state")
VERSION = 4  # 2: notes (hex); 3: peers carry their evidence; 4: one list of ledger records


class StateError(Exception):
    pass


def save(path: str, records, wall: float | None = None) -> None:
    """Write ``records`` (the ledger's live entries, :meth:`Ledger.records`), each with its
    end as wall-clock time, atomically."""
    wall = time.time() if wall is None else wall
    doc = {"version": VERSION, "saved": wall, "records": [r.to_doc(wall) for r in records]}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".p2pwall-state-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load(path: str, wall: float | None = None) -> list[Record]:
    """The live records of a state file (of this version or an older one); [] if there is
    no file.  Every entry is checked for shape and range here; the ledger then checks it
    as it checks a live one (LAN, allowlist, unicast).  A link, a FIFO or anything but a
    regular file at ``path`` is refused (StateError: the daemon sets it aside)."""
    wall = time.time() if wall is None else wall
    try:  # never follow a link, never block on a FIFO, read regular files only
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StateError(f"{path}: cannot open the state file safely: {exc.strerror or exc}") from None
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StateError(f"{path}: not a regular file")
        with os.fdopen(fd, encoding="utf-8") as f:
            fd = None
            doc = json.loads(f.read(256 * 1024 * 1024))
    except StateError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise StateError(f"{path}: unreadable state: {exc}") from None
    finally:
        if fd is not None:
            os.close(fd)
    if not isinstance(doc, dict) or doc.get("version") not in (1, 2, 3, VERSION):
        raise StateError(f"{path}: not a p2pwall state file of version {VERSION}")
    if doc["version"] == VERSION:
        rows = doc.get("records", [])
        if not isinstance(rows, list):
            raise StateError(f"{path}: 'records' is not a list")
        try:
            records = [Record.from_doc(row, wall, RESTORED) for row in rows]
        except (TypeError, ValueError) as exc:
            raise StateError(f"{path}: bad record: {exc}") from None
    else:
        records = _older(path, doc, wall)
    return [r for r in records if r.seconds > 0]


def _older(path: str, doc: dict, wall: float) -> list[Record]:
    """The records of a version 1-3 file: one row per peer (with its clients and which of
    them gave their own packet) or lock."""
    out = []
    for name, op in (("peers", BLOCK), ("locks", LOCK)):
        rows = doc.get(name, [])
        if not isinstance(rows, list):
            raise StateError(f"{path}: '{name}' is not a list")
        for e in rows:
            try:
                if not isinstance(e, dict):
                    raise ValueError("not an entry")
                base = Record.from_doc({"op": op, "addr": e["address"], "until": e["until"],
                                        "detector": e["detector"], "reason": e.get("reason", ""),
                                        "note": e.get("note")}, wall, RESTORED)
                if op == BLOCK:
                    out += _peer_records(base, e)
                else:
                    out.append(base)
            except (KeyError, TypeError, ValueError) as exc:
                raise StateError(f"{path}: bad entry in '{name}': {exc}") from None
    return out


def _peer_records(base: Record, e: dict) -> list[Record]:
    """A saved peer as records; a file from before evidence existed restores its peers as
    LAN-wide, as they were enforced then."""
    if "evidence" not in e:
        return [base.but(kind=OWN, lanwide=True)]
    kind, lanwide, own = e["evidence"], e.get("lanwide", False), e.get("own", 0)
    clients = e.get("clients", [])
    if kind not in KINDS or not isinstance(lanwide, bool):
        raise ValueError("bad evidence")
    if not isinstance(clients, list) or len(clients) > 4 or not isinstance(own, int) or not 0 <= own < 16:
        raise ValueError("bad clients")
    clients = [ip_bytes(str(c)) for c in clients] or [None]
    return [base.but(client=c, kind=kind if (own >> i & 1 or kind != OWN) else NAMED,
                     lanwide=lanwide and i == len(clients) - 1) for i, c in enumerate(clients)]


def set_aside(path: str) -> str:
    """Move a bad state file out of the way; returns where it went."""
    aside = f"{path}.corrupt-{int(time.time())}"
    os.replace(path, aside)
    return aside
