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
VERSION = 2  # 2: entries may carry a detector's note (hex)


class StateError(Exception):
    pass


def save(path: str, tables: dict, now: float, wall: float | None = None) -> None:
    """``tables``: {"peers": ExpiringTable, "locks": ExpiringTable}; ``now`` their clock."""
    wall = time.time() if wall is None else wall
    doc = {"version": VERSION, "saved": wall}
    for name, table in tables.items():
        rows = []
        for key, left, detector, reason in table.entries(now):
            row = {"address": ip_text(key), "until": round(wall + left, 3), "detector": detector, "reason": reason}
            note = table.note(key)
            if note is not None:
                row["note"] = note.hex()
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


def load(path: str, wall: float | None = None) -> dict[str, list[tuple[bytes, float, str, str, bytes | None]]]:
    """{"peers": [(address, seconds_left, detector, reason, note)], "locks": [...]}; {} if
    no file.  Every entry is checked for shape and range here; the engine then checks it
    as it checks a live one (LAN, allowlist, unicast)."""
    wall = time.time() if wall is None else wall
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise StateError(f"{path}: unreadable state: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") not in (1, VERSION):
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
            except (KeyError, TypeError, ValueError) as exc:
                raise StateError(f"{path}: bad entry in '{name}': {exc}") from None
            if left > 0:
                kept.append(item)
        out[name] = kept
    return out


def set_aside(path: str) -> str:
    """Move a bad state file out of the way; returns where it went."""
    aside = f"{path}.corrupt-{int(time.time())}"
    os.replace(path, aside)
    return aside
