"""An encrypted opening read from the exchange, not from one packet (shared by the
BitTorrent detector's MSE rule and the eDonkey detector's obfuscation rule).

A client's first payload of the opening's shape (``opening``), the peer's first payload
back of the answer's shape acknowledging exactly that opening (the client sent nothing
more: it waited), then at once the client's next payload continuing where the opening
ended, of at least ``step_min`` bytes: one exchange.  Exchanges with ``peers`` distinct
addresses within ``window`` seconds are the evidence, per client.  The state is the
core's (client-scoped notes), bounded like every note; nothing is kept here.
"""

from __future__ import annotations

import struct

from p2pwall import SERVICE_PORTS, Block, Drop, Lock

OPENED, ANSWERED, DONE = 1, 2, 3
_STEP = struct.Struct("!BIdH")  # stage, the client's next sequence number after its opening, when, its size
STEP_SECONDS = 10.0  # the opening, the answer and the next step of one exchange come within this


def _entries(note: bytes | None, width: int) -> list[tuple[bytes, float]]:
    out = []
    step = width + 4
    for i in range(0, len(note or b"") - step + 1, step):
        out.append((note[i:i + width], float(struct.unpack_from("!I", note, i + width)[0])))
    return out


class Exchange:
    """One protocol's opening exchange.  ``opening(data)`` and ``answer(data, opened)``
    (``opened``: the opening's size) say whether a payload has the shape; ``reason``
    names the protocol in the actions."""

    def __init__(self, name: str, opening, answer, step_min: int, reason: str,
                 peers: int = 3, window: float = 120.0):
        self.flow, self.tag = f"{name}-flow", f"{name}-peers"
        self.opening, self.answer = opening, answer
        self.step_min, self.reason, self.peers, self.window = step_min, reason, peers, window

    def outgoing(self, packet, context):
        """A LAN client's TCP payload: its opening (remembered), or the next step of an
        exchange whose first two steps had the shapes (counted); the actions, or None."""
        if packet.dport in SERVICE_PORTS:
            return None
        data, client, peer, now = packet.data, packet.src, packet.dst, context.now
        tag = f"{self.flow}:{packet.sport}:{packet.dport}"
        if packet.first:
            if not self.opening(data):
                return None
            context.recognise(packet)  # its reply and its next payload may count, on this flow only
            context.keep_note(client, peer, tag,
                              _STEP.pack(OPENED, (packet.seq + len(data)) & 0xFFFFFFFF, now, min(len(data), 65535)),
                              STEP_SECONDS)
            return None
        note = context.note_for(client, peer, tag)
        if note is None:
            return None
        stage, expected, at, _ = _STEP.unpack(note)
        context.keep_note(client, peer, tag, _STEP.pack(DONE, 0, now, 0), 1.0)  # one look at the next step
        if stage != ANSWERED or packet.seq != expected or len(data) < self.step_min or now - at > STEP_SECONDS:
            return None
        return self.count(context, client, peer, now)

    def incoming(self, packet, context) -> None:
        """The peer's first payload back on a flow the client opened with the opening's
        shape: the answer when it has the answer's shape and acknowledges exactly the
        client's opening."""
        client, peer = packet.dst, packet.src
        tag = f"{self.flow}:{packet.dport}:{packet.sport}"
        note = context.note_for(client, peer, tag)
        if note is None:
            return
        stage, expected, _, size = _STEP.unpack(note)
        if stage == OPENED and packet.ack == expected and self.answer(packet.data, size):
            context.keep_note(client, peer, tag, _STEP.pack(ANSWERED, expected, context.now, size), STEP_SECONDS)
        else:
            context.keep_note(client, peer, tag, _STEP.pack(DONE, 0, context.now, 0), 1.0)

    def count(self, context, client: bytes, peer: bytes, now: float):
        """One more exchange of ``client`` with ``peer``: the actions once there were
        exchanges with ``peers`` distinct addresses within ``window``."""
        width = len(client)
        seen = [(a, t) for a, t in _entries(context.note_for(client, client, self.tag), width)
                if now - t <= self.window and a != peer]
        seen.append((peer, now))
        keep = seen[-(64 // (width + 4)):]
        context.keep_note(client, client, self.tag,
                          b"".join(a + struct.pack("!I", int(t) & 0xFFFFFFFF) for a, t in keep), self.window)
        if len({a for a, _ in seen}) < self.peers:
            return None
        reason = self.reason
        actions = [Block(peer, reason=reason), Drop(reason), Lock(client, reason=reason)]
        actions += [Block(a, reason=reason, evidence="named") for a, _ in seen[:-1]]
        return actions
