"""One learned entry, one shape: the record every source produces and every sink consumes.

A detector's accepted request, an operator's command, a state file row, a kernel set
element left by a crashed run, another gateway's change and replay's model all become a
:class:`Record`; the ledger (:mod:`p2pwall.ledger`) checks and applies it, and hands
records to its mirrors.  The evidence vocabulary lives here too, once.

A record's time is relative (``seconds``: how long the entry has left when the record
is made), so it means the same to the engine's clock, to the kernel's timeouts and, once
turned into wall-clock time by :meth:`Record.to_doc`, to a file or another gateway.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from .packet import ip_bytes, ip_text

# what kind of evidence an entry rests on
OWN = "own"  # the client's own outgoing packet
REPLY = "reply"  # the peer's own answer, on a flow a LAN client opened
NAMED = "named"  # the address was named in a reply (tracker peer list, DHT nodes) or request
OPERATOR = "operator"  # put there by hand
KINDS = (OWN, REPLY, NAMED, OPERATOR)
_RANK = {NAMED: 0, OWN: 1, REPLY: 2, OPERATOR: 3}

# what a record does
BLOCK, LOCK, UNBLOCK, UNLOCK = "block", "lock", "unblock", "unlock"
EXPIRE = "expire"  # housekeeping removal (expiry, eviction, a wider entry covering a narrower one)
OPS = (BLOCK, LOCK, UNBLOCK, UNLOCK)

# where a record comes from: "" is this gateway's own live decision (the only kind that
# is published to other gateways); restored ones and other gateways' are never sent on
RESTORED = "restored"
CONFIG = "config"  # a reload's purge
GATEWAY_PREFIX = "gw:"

# where an entry lives in the kernel (the mirrors' "where")
PEERS, NOLOCK, PAIR, LOCKS = "peers", "nolock", "pair", "locks"
UDPLOCKS = "udplocks"  # the kernel's second set of a lock whose detector locks UDP (see mirrors.py)

MAX_SECONDS = 366 * 86400.0  # a year and a day: the longest any entry may live
MAX_NOTE = 512
_DETECTOR = re.compile(r"[A-Za-z0-9_.-]{0,64}")


def rank(kind: str) -> int:
    """How strong a kind of evidence is: an entry keeps the strongest it ever had."""
    return _RANK.get(kind, 0)


@dataclass(frozen=True, slots=True)
class Record:
    """A decision or claim about one address: op, address, client, how long, who, why,
    on what evidence, for whom (``lanwide``: the whole LAN; else ``client`` alone)."""

    op: str
    address: bytes
    client: bytes | None = None
    seconds: float = 0.0
    detector: str = ""
    reason: str = ""
    kind: str = OWN
    lanwide: bool = False
    note: bytes | None = None
    origin: str = ""  # "" (this gateway, live), RESTORED, CONFIG or "gw:<name>"

    @property
    def scope(self) -> str:
        return "lan" if self.lanwide else "client"

    @property
    def local(self) -> bool:
        return not self.origin

    def but(self, **changes) -> "Record":
        return replace(self, **changes)

    # ------------------------------------------------------------------ documents
    def to_doc(self, wall: float) -> dict:
        """The record as JSON-ready fields (state file, cluster wire), with ``until`` as
        wall-clock seconds."""
        doc = {"op": self.op, "addr": ip_text(self.address), "detector": self.detector, "reason": self.reason}
        if self.op in (BLOCK, LOCK):
            doc["until"] = round(wall + self.seconds, 3)
        if self.op == BLOCK:
            doc.update(kind=self.kind, lanwide=self.lanwide)
        if self.client is not None:
            doc["client"] = ip_text(self.client)
        if self.note is not None:
            doc["note"] = self.note.hex()
        return doc

    @classmethod
    def from_doc(cls, doc, wall: float, origin: str = "") -> "Record":
        """Parse and check :meth:`to_doc`'s fields; ValueError says what is wrong."""
        if not isinstance(doc, dict):
            raise ValueError("not a record")
        op = doc.get("op")
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}")
        addr, client = doc.get("addr"), doc.get("client")
        if not isinstance(addr, str) or len(addr) > 45:
            raise ValueError("bad address")
        if client is not None and (not isinstance(client, str) or len(client) > 45):
            raise ValueError("bad client")
        detector, reason = doc.get("detector", ""), doc.get("reason", "")
        if not isinstance(detector, str) or not _DETECTOR.fullmatch(detector):
            raise ValueError("bad detector name")
        if not isinstance(reason, str) or len(reason) > 200:
            raise ValueError("bad reason")
        kind, lanwide = doc.get("kind", OWN), doc.get("lanwide", False)
        if kind not in KINDS or not isinstance(lanwide, bool):
            raise ValueError("bad evidence")
        seconds = 0.0
        if op in (BLOCK, LOCK):
            until = doc.get("until")
            if isinstance(until, bool) or not isinstance(until, (int, float)) or not math.isfinite(until):
                raise ValueError(f"until is not a finite number: {until!r}")
            seconds = float(until) - wall
            if seconds > MAX_SECONDS:
                raise ValueError(f"until lies more than {MAX_SECONDS:g} s ahead")
        note = doc.get("note")
        if note is not None:
            if not isinstance(note, str) or len(note) > 2 * MAX_NOTE or not re.fullmatch(r"[0-9a-f]*", note):
                raise ValueError("bad note")
            note = bytes.fromhex(note)
        return cls(op, ip_bytes(addr), None if client is None else ip_bytes(client), seconds, detector,
                   reason, kind, lanwide, note, origin)

    # ------------------------------------------------------------------ the kernel
    def comment(self) -> str:
        """What a kernel set element carries beside its timeout: enough to take the entry
        back after a crash (see :func:`from_kernel`)."""
        return f"{self.detector}|{LOCK if self.op == LOCK else self.kind}|{self.reason}"


def from_kernel(where: str, address: str, seconds: float, comment: str, client: str | None = None) -> Record:
    """The record of one element a crashed run left in a kernel set (ValueError if it is
    no address)."""
    parts = (comment.split("|", 2) if comment else []) + ["", "", ""]
    detector, kind, reason = parts[0] or "kernel", parts[1], parts[2]
    if where == LOCKS:
        return Record(LOCK, ip_bytes(address), None, seconds, detector, reason, origin=RESTORED)
    if where == PAIR:
        kind = kind if kind in (OWN, NAMED) else OWN
        return Record(BLOCK, ip_bytes(address), ip_bytes(client), seconds, detector, reason, kind, False,
                      origin=RESTORED)
    kind = kind if kind in KINDS else OWN
    return Record(BLOCK, ip_bytes(address), None, seconds, detector, reason, kind, True, origin=RESTORED)
