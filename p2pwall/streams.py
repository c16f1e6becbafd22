"""The first bytes of a TCP stream, however the sender segments them.

Detectors read a connection's opening (its first payload, in each direction).  A sender
that puts the first byte of its handshake in a segment of its own, or spreads the
opening over three, would walk past every rule that reads the first payload.  So when a
connection's first payload in a direction is shorter than :data:`SHORT` bytes, the
kernel queues the rest of that connection's first packets too (``rules.py``: the
``short`` conntrack bit), and here the segments that continue the stream in sequence are
joined: each in-sequence segment is judged as a view of the stream's start
(``Packet.joined``: the first payload, from the stream's first byte to this segment's
last), until the start is :data:`SHORT` bytes long, or until the other side sends a
payload (then the opening was a message of its own, answered: an exchange, which
detectors read step by step, not a split one).

Bounded: at most :data:`MAX_STREAMS` streams (the oldest out first), each at most
:data:`MAX_BYTES` bytes, for :data:`SECONDS` seconds; a segment out of sequence (a gap)
is judged as it is and leaves the stream as it was.  A retransmitted or overlapping
segment replaces the bytes it covers, as the receiver will see them last.
"""

from __future__ import annotations

from collections import OrderedDict

SHORT = 64  # a first payload shorter than this starts a stream to join (rules.py queues what follows)
MAX_BYTES = 1024  # the most of a stream's start kept
MAX_STREAMS = 65536
SECONDS = 10.0  # a stream not continued within this long is forgotten


class Streams:
    """Streams whose first payload was short: flow (addresses, ports) -> [first sequence
    number, bytes so far, expiry]."""

    def __init__(self, short: int = SHORT, max_streams: int = MAX_STREAMS):
        self.short = short
        self.max_streams = max_streams
        self._open: OrderedDict = OrderedDict()
        self.joined = 0  # segments judged as part of a stream's start

    def __len__(self) -> int:
        return len(self._open)

    @property
    def active(self) -> bool:
        """Some stream waits for its next segment (else only first payloads need a look)."""
        return bool(self._open)

    def feed(self, packet, now: float):
        """A TCP payload of a LAN connection (``packet.first``: the first of its direction,
        as the kernel marks it): the view to judge it by (the packet itself, or the
        stream's start joined up to its end)."""
        n = packet.end - packet.off
        key = (packet.src, packet.dst, packet.sport, packet.dport)
        streams = self._open
        if streams:  # the other side spoke: its opening is a message of its own, not to be joined further
            streams.pop((packet.dst, packet.src, packet.dport, packet.sport), None)
        if packet.first:
            if n < self.short:
                streams[key] = [packet.seq, packet.data, now + SECONDS]
                streams.move_to_end(key)
                if len(streams) > self.max_streams:
                    streams.popitem(last=False)
            return packet
        if not streams:
            return packet
        stream = streams.get(key)
        if stream is None:
            return packet
        start, kept, until = stream
        if now > until:
            del streams[key]
            return packet
        at = (packet.seq - start) & 0xFFFFFFFF
        if at > len(kept):
            return packet  # a gap: what joins it has not come yet
        data = (kept[:at] + packet.data)[:MAX_BYTES]
        if len(data) >= self.short:
            del streams[key]
        else:
            stream[1] = data
        self.joined += 1
        return packet.joined(start, data)

    def expire(self, now: float) -> None:
        """Forget the streams not continued in time (oldest first; called now and then)."""
        streams = self._open
        while streams:
            key, stream = next(iter(streams.items()))
            if stream[2] > now:
                break
            del streams[key]
