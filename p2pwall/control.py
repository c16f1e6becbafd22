"""The control protocol: what the status socket and the metrics endpoint are asked, and
the answers, given in the daemon's loop between verdict batches.

``status`` (the whole snapshot, or one address's entries and evidence), ``metrics``
(Prometheus text), and the operator's changes ``block``, ``unblock``, ``unlock`` (root
only: in the ledger, and so in the kernel, at once; forwarded to the workers; saved at
once).  Collaborators are passed in, so it is tested without root or a queue.
"""

from __future__ import annotations

import json
import time

from .actions import MAX_SECONDS
from .packet import ip_bytes
from .status import CHANGES, StatusError, query
from .tables import describe


class Control:
    def __init__(self, engine, settings, snapshot, save=lambda: None, children=()):
        """``snapshot()`` gives the status document; ``save()`` writes the state file;
        ``children`` are worker processes (each with a ``status`` socket path)."""
        self.engine = engine
        self.settings = settings
        self.snapshot = snapshot
        self.save = save
        self.children = children

    def answer(self, request) -> bytes:
        """Answer one status-socket or metrics request."""
        doc = request.doc
        cmd = doc.get("cmd")
        if cmd == "metrics":
            from .metrics import http_answer, render

            return http_answer(render(self.snapshot(), self.settings.queue_number))
        if cmd == "status":
            answer = self.address_report(doc["address"]) if doc.get("address") else self.snapshot()
        elif cmd in CHANGES:
            if request.uid not in (0, None):
                answer = {"ok": False, "error": "only root may change p2pwall's tables"}
            else:
                answer = self.change(cmd, doc)
        else:
            answer = {"ok": False, "error": f"unknown request {cmd!r}"}
        return json.dumps(answer).encode() + b"\n"

    def address_report(self, text) -> dict:
        try:
            key = ip_bytes(str(text))
        except ValueError:
            return {"ok": False, "error": f"not an IP address: {text!r}"}
        engine, now = self.engine, self.engine.clock()
        wall = time.time()

        def entry(table):
            e = table.get(key, now)
            if e is None:
                return None
            d = describe(key, e.until - now, e, now, table.evidence)
            d.update(until=round(wall + e.until - now, 3), note=e.note is not None)
            if table.evidence:  # which gateway saw the clients behind other gateways
                seen = {c: engine.ledger.gateway_of(ip_bytes(c)) for c in d.get("clients", [])}
                d["gateways"] = {c: gw for c, gw in seen.items() if gw}
            return d

        return {"ok": True, "address": str(text), "peer": entry(engine.peers), "lock": entry(engine.locks),
                "in_lan": key in engine.lan, "allowlisted": key in engine.allow,
                "protected": key in engine.protected}

    def change(self, cmd: str, doc: dict) -> dict:
        text = doc.get("address")
        try:
            key = ip_bytes(str(text))
        except ValueError:
            return {"ok": False, "error": f"not an IP address: {text!r}", "usage": True}
        ledger = self.engine.ledger
        if cmd == "block":
            seconds = doc.get("seconds") or self.settings.peer_seconds
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_SECONDS:
                return {"ok": False, "error": f"seconds must be between 0 and a year, got {seconds!r}", "usage": True}
            ok = ledger.operator_block(key, float(seconds))
            error = None if ok else f"{text} cannot be blocked (inside the LAN, allowlisted or not unicast)"
        elif cmd == "unblock":
            ok = ledger.unblock(key, why="unblocked by an operator")
            error = None if ok else f"{text} is not blocked"
        else:
            ok = ledger.unlock(key, why="unlocked by an operator")
            error = None if ok else f"{text} is not locked"
        self.engine.flush()
        for child in self.children:  # workers hold tables of their own
            try:
                query(child.status, dict(doc, forwarded=True), timeout=2.0)
            except StatusError:
                pass
        if ok:
            self.save()  # an operator's word survives a crash too
        return {"ok": ok, "error": error} if error and not doc.get("forwarded") else {"ok": True}
