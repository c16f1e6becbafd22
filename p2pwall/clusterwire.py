"""The cluster's wire format: one change (a ledger record with its gateway's name, when it
learned it and its sequence number) or a gateway's networks, as signed JSON, and the
checks a change passes before anything else reads it (bounded size and depth, the
signature, the gateway's name, the record's own checks, nothing unsigned that widens
scope).  :mod:`p2pwall.cluster` moves them through Redis."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass

from .records import BLOCK, GATEWAY_PREFIX, NAMED, OWN, UNBLOCK, Record

_GATEWAY = re.compile(r"[A-Za-z0-9_.:/@-]{1,100}")


@dataclass
class Change:
    """One record on the wire: what a gateway learned (or undid), who and when."""

    record: Record
    gw: str = ""
    ts: float = 0.0  # when the gateway learned it (wall clock); for an unblock/unlock, what it cancels
    seq: int = 0  # the gateway's own sequence number (monotonic, signed with the change)

    @property
    def table(self) -> str:
        return "peers" if self.record.op in (BLOCK, UNBLOCK) else "locks"


@dataclass
class Served:
    """A gateway's word on which networks it serves (signed): clients there are its own,
    and their evidence corroborates with this gateway's clients'."""

    gw: str
    networks: tuple[str, ...]
    seq: int = 0
    ts: float = 0.0


def encode_served(served: Served, key: bytes) -> str:
    doc = {"op": NETWORKS, "gw": served.gw, "networks": list(served.networks), "ts": served.ts, "seq": served.seq}
    doc["sig"] = hmac.new(key, _canonical(doc), hashlib.sha256).hexdigest()
    return json.dumps(doc, separators=(",", ":"))


def _networks(doc: dict, gw: str) -> tuple[str, ...]:
    import ipaddress

    nets = doc.get("networks")
    if not isinstance(nets, list) or len(nets) > MAX_NETWORKS:
        raise Rejected("bad networks", gw)
    try:
        return tuple(str(ipaddress.ip_network(n, strict=False)) for n in nets if isinstance(n, str) and len(n) <= 49)
    except ValueError:
        raise Rejected("bad networks", gw) from None


def _canonical(doc: dict) -> bytes:
    return json.dumps({k: v for k, v in doc.items() if k != "sig"}, sort_keys=True,
                      separators=(",", ":")).encode()


def encode(change: Change, key: bytes | None, wall: float | None = None) -> str:
    wall = time.time() if wall is None else wall
    doc = {**change.record.to_doc(wall), "gw": change.gw, "ts": change.ts, "seq": change.seq}
    if key is not None:
        doc["sig"] = hmac.new(key, _canonical(doc), hashlib.sha256).hexdigest()
    return json.dumps(doc, separators=(",", ":"))


class Rejected(ValueError):
    """A change refused by ``decode``; ``gw`` is the gateway it claims to come from (not
    verified: a forged or garbled change names whoever it likes), or "" when it names none."""

    def __init__(self, why: str, gw: str = ""):
        super().__init__(why)
        self.gw = gw


MAX_NETWORKS = 64  # networks one gateway may say it serves
NETWORKS = "networks"  # the op of a gateway's Served document


def decode(text, key: bytes | None, wall: float | None = None) -> "Change | Served":
    """Parse and check one change (or a gateway's networks, :class:`Served`); raises
    ValueError with the reason it is refused.
    Bounded before anything else: at most 4 KiB, and nesting deep enough to exhaust the
    parser is refused like any other garbage."""
    wall = time.time() if wall is None else wall
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str) or len(text) > 4096:
        raise ValueError("not a change")
    try:
        doc = json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError("not a change")
    gw, ts = doc.get("gw", ""), doc.get("ts", 0.0)
    claimed = gw if isinstance(gw, str) and _GATEWAY.fullmatch(gw) else ""
    if key is not None:
        sig = doc.get("sig")
        try:
            good = hmac.new(key, _canonical(doc), hashlib.sha256).hexdigest()
        except (TypeError, ValueError, RecursionError):
            raise Rejected("not a change", claimed) from None
        if not isinstance(sig, str) or not hmac.compare_digest(sig, good):
            raise Rejected("missing or bad signature", claimed)
    if not claimed:
        raise ValueError("bad gateway name")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or ts != ts or abs(ts) > 1e11:
        raise Rejected("ts is not a time", gw)
    seq = doc.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq < 2 ** 63:
        raise Rejected("no sequence number", gw)
    if doc.get("op") == NETWORKS:
        if key is None:
            raise Rejected("unsigned networks", gw)  # they widen what counts as a client
        return Served(gw, _networks(doc, gw), seq, float(ts))
    try:
        record = Record.from_doc(doc, wall, origin=GATEWAY_PREFIX + gw)
    except Rejected:
        raise
    except ValueError as exc:
        raise Rejected(str(exc), gw) from None
    if key is None and (record.op != BLOCK or record.lanwide or record.kind not in (OWN, NAMED)):
        # unsigned (insecure = true): whoever can write to Redis wrote it; only what a
        # client-scoped block earns is taken, nothing that widens scope or undoes a block
        raise Rejected(f"unsigned {'LAN-wide ' if record.lanwide else ''}{record.op} ({record.kind})", gw)
    return Change(record, gw, float(ts), seq)
