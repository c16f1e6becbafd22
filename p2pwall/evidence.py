"""Evidence before collateral: what a detector's request proves, and for whom.

A detector only says what it saw; this module decides what that earns, so that no single
packet, web page or hostile host can cut the LAN off from an address:

- a client's **own** outgoing packet (for TCP: only the first payload of its connection,
  as the kernel marks it, or a later one of a connection whose first payload the same
  detector recognised as its protocol's opening, to read the rest of that exchange)
  blocks that peer *for that client*;
- the peer's own P2P **reply** counts only on a flow whose request the same detector
  recognised as its protocol (and acted on), never on one the client opened with
  anything else, such as a browser's HTTP request: a web page cannot make a server's
  answer lock its visitors or block the server for the LAN.  On such a flow (the kernel
  queues no unsolicited inbound traffic; for TCP only its first reply payload counts)
  it blocks the peer for the whole LAN at once when the request itself was evidence (the
  client asked in P2P and the peer answered in P2P), and only for the client that asked
  when the answer is the only evidence (a request recognised but not acted on);
- an address **named** in a reply (tracker peer lists, DHT nodes) counts only when the
  same detector recognised a request on that same flow, at most ``MAX_NAMED`` per reply
  and ``NAMED_PER_SOURCE`` per replying source and minute, never once the peer table is
  nearly full (names never push out what clients' own packets proved), and blocks the
  named address only for the client that received the reply; an address named in a
  client's own request (a supernode header) is blocked for that client alone;
- own evidence from ``[peers] corroborate`` distinct clients makes a peer LAN-wide;
- a lock needs the client's own packet, or the answer to a probe p2pwall actually sent
  to that client, from the probed port, while the probe is outstanding;
- the allowlist, ``[peers] protect`` and the gateway's own nameservers are never blocked.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from .packet import FROM_LAN, TCP, TO_FIREWALL, TO_LAN
from .records import NAMED, OWN, REPLY

MAX_NAMED = 50  # addresses one reply may name
NAMED_PER_SOURCE = 500  # addresses one replying source may name per minute
MAX_FLOWS = 65536  # flows remembered for "a request was recognised here"
ACTED = "!"  # beside a detector's name in a flow's set: it also blocked the peer on the request
MAX_SOURCES = 4096
MAX_NOTES = 65536  # detectors' notes about a client and a peer


class Refused(Exception):
    """Why a request earns nothing (counted as ``evidence_refused.<why>``)."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


def nameservers(path: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf (missing file: none)."""
    found = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        found.append(str(ipaddress.ip_address(parts[1].split("%")[0])))
                    except ValueError:
                        continue
    except OSError:
        pass
    return found


def flow_key(packet, outgoing: bool) -> tuple:
    """The flow as seen from its LAN side: (proto, client, client port, peer, peer port)."""
    if outgoing:
        return packet.proto, packet.src, packet.sport, packet.dst, packet.dport
    return packet.proto, packet.dst, packet.dport, packet.src, packet.sport


class Evidence:
    """The bounded memory the rules above need: flows where a detector recognised a
    request, what each source named lately, probes outstanding."""

    def __init__(self):
        self.asked: OrderedDict[tuple, set] = OrderedDict()
        self.named: OrderedDict[bytes, list] = OrderedDict()  # source -> [minute, count]
        self.probes: dict[bytes, tuple[int, float, float]] = {}  # client -> (port, sent, until)
        self.notes: OrderedDict[tuple, tuple[float, bytes]] = OrderedDict()
        self.neighbours = None  # a Neighbours (live): a LAN host cannot speak for another
        self.named_in_packet = 0  # reset by the engine for each detector's answer

    # ------------------------------------------------------------------ requests
    def recognised(self, packet, detector: str, acted: bool = False) -> None:
        """A detector recognised a LAN client's packet as its protocol (``acted``: and
        blocked its peer on it): remember the flow for its replies."""
        key = flow_key(packet, True)
        found = self.asked.get(key)
        if found is None:
            if len(self.asked) >= MAX_FLOWS:
                self.asked.popitem(last=False)
            found = self.asked[key] = set()
        else:
            self.asked.move_to_end(key)
        found.add(detector)
        if acted:
            found.add(detector + ACTED)

    def block(self, packet, detector: str, peer: bytes, claimed: str | None, peers,
              now: float) -> tuple[str, bytes | None, bool]:
        """(kind, client, LAN-wide now) for a Block of ``peer`` seen in ``packet``."""
        direction = packet.direction
        if direction == FROM_LAN or direction == TO_FIREWALL:
            if packet.proto == TCP and packet.end > packet.off and not packet.first and not self._opened(packet, detector):
                raise Refused("not_first_payload")
            self._genuine(packet)
            if peer == packet.dst and claimed != NAMED:
                return OWN, packet.src, False
            return NAMED, packet.src, False  # named in the client's own request
        if direction == TO_LAN:
            if peer == packet.src and claimed != NAMED:
                if packet.proto == TCP and packet.end > packet.off and not packet.first:
                    raise Refused("not_first_reply")
                asked = self.asked.get(flow_key(packet, False), ())
                if detector not in asked:
                    raise Refused("reply_unasked")  # an answer proves only what was asked
                # LAN-wide only when the request was evidence itself; an answer that is the only
                # evidence (to a request recognised but not acted on) is for the client that asked
                return REPLY, packet.dst, detector + ACTED in asked
            if detector not in self.asked.get(flow_key(packet, False), ()):
                raise Refused("named_unasked")
            if peers.reserve_full():
                raise Refused("named_table_full")
            self._count_named(packet.src, now)
            return NAMED, packet.dst, False
        raise Refused("direction")

    def _count_named(self, source: bytes, now: float) -> None:
        self.named_in_packet += 1
        if self.named_in_packet > MAX_NAMED:
            raise Refused("named_per_reply")
        minute = int(now // 60)
        slot = self.named.get(source)
        if slot is None or slot[0] != minute:
            if slot is None and len(self.named) >= MAX_SOURCES:
                self.named.popitem(last=False)
            slot = self.named[source] = [minute, 0]
        slot[1] += 1
        if slot[1] > NAMED_PER_SOURCE:
            raise Refused("named_per_source")

    # ------------------------------------------------------------------ notes
    def note(self, detector: str, client: bytes, peer: bytes, tag: str, now: float) -> bytes | None:
        found = self.notes.get((detector, client, peer, tag))
        if found is None or found[0] <= now:
            return None
        return found[1]

    def keep_note(self, detector: str, client: bytes, peer: bytes, tag: str, data: bytes, seconds: float,
                  now: float) -> None:
        key = (detector, client, peer, tag)
        if key not in self.notes and len(self.notes) >= MAX_NOTES:
            self.notes.popitem(last=False)
        self.notes[key] = (now + seconds, data)
        self.notes.move_to_end(key)

    # ------------------------------------------------------------------ locks
    def _opened(self, packet, detector: str | None) -> bool:
        """A later payload of a connection whose first one this detector recognised as its
        protocol's opening (``Context.recognise``): the rest of that opening exchange may
        count as well (a browser's connection never gets there: its first payload is its
        own request, which no detector takes for P2P)."""
        return detector is not None and detector in self.asked.get(flow_key(packet, True), ())

    def lock(self, packet, client: bytes, now: float, detector: str | None = None) -> None:
        """Raise Refused unless ``packet`` may lock ``client``."""
        direction = packet.direction
        if direction == FROM_LAN or direction == TO_FIREWALL:
            self._genuine(packet)
        if direction == TO_FIREWALL:
            probe = self.probes.get(client)
            if client != packet.src or probe is None:
                raise Refused("no_probe_outstanding")
            port, sent, until = probe
            if packet.sport != port or not sent <= now <= until:
                raise Refused("not_the_probe_answer")
            del self.probes[client]
            return
        if direction != FROM_LAN or client != packet.src:
            raise Refused("not_own_packet")
        if packet.proto == TCP and packet.end > packet.off and not packet.first and not self._opened(packet, detector):
            raise Refused("not_first_payload")

    def _genuine(self, packet) -> None:
        if self.neighbours is not None and not self.neighbours.genuine(packet.src, packet.mac):
            raise Refused("spoofed_neighbour")

    def probe_sent(self, client: bytes, port: int, now: float, until: float) -> None:
        self.probes[client] = (port, now, until)

    def forget(self, client: bytes) -> None:
        self.probes.pop(client, None)
