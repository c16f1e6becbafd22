"""Learned state that survives a restart: blocked peers and locked clients.

Written atomically (temporary file, fsync, rename) at stop and every ``[state]
save_seconds``; times are stored as wall-clock ends so that a restart, or a reboot,
keeps only what has not yet expired.  A corrupt or truncated file is reported, set
aside beside the original, and p2pwall starts without it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time

from .actions import MAX_NOTE, MAX_SECONDS

from .packet import ip_bytes, ip_text

log = logging.getLogger("p2pwall.state")
VERSION = 3  # 2: entries may carry a detector's note (hex); 3: peers carry their evidence


class StateError(Exception):
    pass


def save(path: str, tables: dict, now: float, wall: float | None = None) -> None:
    """``tables``: {"peers": ExpiringTable, "locks": ExpiringTable}; ``now`` their clock."""
    wall = time.time() if wall is None else wall
    doc = {"version": VERSION, "saved": wall}
    for name, table in tables.items():
        rows = []
        for key, left, entry in table.full_entries(now):
            row = {"address": ip_text(key), "until": round(wall + left, 3), "detector": entry.detector,
                   "reason": entry.reason}
            if entry.note is not None:
                row["note"] = entry.note.hex()
            if table.evidence:
                row.update(evidence=entry.kind, lanwide=entry.lanwide,
                           clients=[ip_text(c) for c in entry.clients], own=entry.own)
            rows.append(row)
        doc[name] = rows
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


def load(path: str, wall: float | None = None) -> dict[str, list[tuple]]:
    """{"peers": [(address, seconds_left, detector, reason, note, kind, lanwide, clients,
    own)], "locks": [(address, seconds_left, detector, reason, note)]}; {} if no file.
    Every entry is checked for shape and range here; the engine then checks it as it
    checks a live one (LAN, allowlist, unicast).  A link, a FIFO or anything but a
    regular file at ``path`` is refused (StateError: the daemon sets it aside)."""
    wall = time.time() if wall is None else wall
    try:  # never follow a link, never block on a FIFO, read regular files only
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}
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
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise StateError(f"{path}: unreadable state: {exc}") from None
    finally:
        if fd is not None:
            os.close(fd)
    if not isinstance(doc, dict) or doc.get("version") not in (1, 2, VERSION):
        raise StateError(f"{path}: not a p2pwall state file of version {VERSION}")
    out = {}
    for name in ("peers", "locks"):
        entries = doc.get(name, [])
        if not isinstance(entries, list):
            raise StateError(f"{path}: '{name}' is not a list")
        kept = []
        for e in entries:
            try:
                until = e["until"]
                if isinstance(until, bool) or not isinstance(until, (int, float)) or not math.isfinite(until):
                    raise ValueError(f"until is not a finite number: {until!r}")
                left = float(until) - wall
                if left > MAX_SECONDS:
                    raise ValueError(f"until lies more than {MAX_SECONDS:g} s ahead")
                if not isinstance(e["detector"], str) or not isinstance(e.get("reason", ""), str):
                    raise ValueError("detector and reason must be strings")
                note = e.get("note")
                note = None if note is None else bytes.fromhex(note)
                if note is not None and len(note) > MAX_NOTE:
                    raise ValueError("note too long")
                item = (ip_bytes(str(e["address"])), left, e["detector"][:64], e.get("reason", "")[:200], note)
                if name == "peers":
                    item += _evidence(e)
            except (KeyError, TypeError, ValueError) as exc:
                raise StateError(f"{path}: bad entry in '{name}': {exc}") from None
            if left > 0:
                kept.append(item)
        out[name] = kept
    return out


def _evidence(e: dict) -> tuple:
    """(kind, lanwide, clients, own) of a saved peer; a file from before evidence existed
    restores its peers as LAN-wide, as they were enforced then."""
    if "evidence" not in e:
        return ("own", True, [], 0)
    kind, lanwide, own = e["evidence"], e.get("lanwide", False), e.get("own", 0)
    clients = e.get("clients", [])
    if kind not in ("own", "reply", "named", "operator") or not isinstance(lanwide, bool):
        raise ValueError("bad evidence")
    if not isinstance(clients, list) or len(clients) > 4 or not isinstance(own, int) or not 0 <= own < 16:
        raise ValueError("bad clients")
    return kind, lanwide, [ip_bytes(str(c)) for c in clients], own


def set_aside(path: str) -> str:
    """Move a bad state file out of the way; returns where it went."""
    aside = f"{path}.corrupt-{int(time.time())}"
    os.replace(path, aside)
    return aside
