"""FastTrack (Kazaa, KazaaLite, iMesh, Grokster): the ftwall logic as a p2pwall detector.

What it recognises (``shared/protocols.md``; giFT-FastTrack, ipp2p, l7-filter, nDPI):

- the UDP ping a client sends to peers: ``27 00 00 00 (29|a9) 80 <network name> 00``;
- the UDP pong: ``28 00 00 00 (29|a9) <6 bytes> <network name> 00`` (or a 5-byte ``29``);
- a clear-text FastTrack HTTP transfer: ``GET /.hash=...`` and friends, ``X-Kazaa-*``
  headers, the ``KazaaClient``/``PeerEnabler`` user agents, or a ``GIVE <n>`` push;
- a session's cipher hello: the 12-byte first payload a client sends a supernode (a
  32-bit value, its cipher seed, the encryption type mangled with the seed;
  giFT-FastTrack ``fst_session.c``), on any port but the ordinary services.  A real
  client opens its sessions to the first nodes of its cache *before* it pings the next
  ones, so those nodes are never pinged: the hellos are remembered per client, and the
  client's first FastTrack ping blocks their nodes for it (the pair set cuts the
  sessions that are up) and locks it; a hello from a client that already pinged blocks
  its node for it at once.  (The mangled type is not checked: its key schedule,
  ``enc_type_2``, is too long to re-implement here; the exchange is judged by its shape
  together with the same client's pings.)

What it asks for: a ping to a peer blocks the peer, drops the ping and spoofs a pong
from the peer so the client keeps to its UDP mode.  Every ping is answered, to a peer
already learned as well (``udp_answered``: the kernel still queues pings to blocked peers,
bounded): unanswered, a real client (giFT-FastTrack) times those peers out, deletes them
from its node cache and moves on to addresses it never revealed.  The core then drops the client's
follow-ups to the peer and time-locks a client that sends a TCP SYN to it.  While a
client is locked this detector supplies a probe (a copy of the client's own ping, kept
as the note of the peer entry it blocked, which the engine hands over with the lock); a
pong from the client to the firewall restarts the lock.  A transfer request blocks its
target and the supernode named in ``X-Kazaa-SupernodeIP`` and locks the client.

Can a browser, an ordinary protocol or one hostile LAN host make it fire?
- UDP ping and pong: five fixed bytes, a printable network name that fills the rest and
  a NUL at the very end: random datagrams match below 1 in 10^11, and the chance test
  (``tests/plugins/test_chance.py``, 100,000 each of randomised DNS, IKEv2, QUIC, STUN,
  RTP and random payloads) measures 0 blocks.  A browser cannot send UDP.
- A hostile LAN host can send a crafted ping to any address (the resolver, a CDN): it
  blocks that address *for that host alone* (the core's scope rule), never for the LAN
  unless a second client does the same, and never the gateway's nameservers, the
  allowlist or ``[peers] protect``.
- HTTP transfers: any web page can make a browser request ``/.hash=...`` or ``/.files``
  (``<img src=...>``): a browser-shaped request (:func:`p2pwall.browser_shaped`) is
  dropped and reported, never evidence.  A non-browser request counts only as the first
  payload of its connection (the core's rule), with a FastTrack request line or Kazaa
  headers in its header block (a POST body cannot carry them in); ``GIVE <n>`` only as
  a first payload, which a browser never sends.
- Cipher hellos: a 12-byte first payload is common enough alone (nothing in it is fixed
  here), so it earns nothing without a FastTrack ping from the same client within the
  hour (before or after), which a browser cannot send and an ordinary program does not.
  It then concerns that client alone: its own sessions' nodes, blocked for it.
- ``X-Kazaa-SupernodeIP`` names an address: it is blocked only for the client whose
  genuine Kazaa request named it (evidence "named"), never on that word alone.
- Probe answers: only from a host p2pwall actually probed, from the probed port, while
  its lock lasts (the core checks), so a spoofed pong locks nobody.
"""

from __future__ import annotations

import ipaddress
import re
import struct

from p2pwall import (FROM_LAN, SERVICE_PORTS, TO_FIREWALL, UDP, Block, ConfigError, DetectorInfo, Drop, Lock, Probe,
                     Report, Spoof, browser_shaped, header_block, hookimpl)

__version__ = "1.0.0"

PING, PONG, SETUP = 0x27, 0x28, 0x29
ENC_TYPES = (0x29, 0xA9)
DEFAULT_NETWORK = b"KaZaA"
MAX_NAME = 31
# Kernel-side pre-filter: only TCP payloads containing one of these are queued.
HTTP_STRINGS = [b"GET /.", b"X-Kazaa-", b"GIVE ", b"KazaaClient", b"PeerEnabler/"]
HELLO_SIZE = 12  # a session's cipher hello: 32-bit value, seed, mangled encryption type
HELLO_MEMORY = 120.0  # seconds a client's hellos wait for its first ping
PINGED_MEMORY = 3600.0  # seconds a client that pinged stays "a FastTrack client" for its hellos

_REQUEST = re.compile(
    rb"^(?:GET|HEAD) /\.(?:hash=[0-9a-fA-F]{20,64}|files|download/|supernode|status|network)[^\r\n]* HTTP/1\.[01]\r?\n")
_HEADER = re.compile(
    rb"\r?\n(?:X-Kazaa-(?:Username|Network|IP|SupernodeIP|XferId|XferUid)\s*:|"
    rb"User-Agent:\s*(?:KazaaClient|PeerEnabler/))", re.IGNORECASE)
_GIVE = re.compile(rb"^GIVE [0-9]{1,10}\r\n")
_SUPERNODE = re.compile(rb"\r?\nX-Kazaa-SupernodeIP:[ \t]*([0-9.]{7,15}):([0-9]{1,5})[ \t]*\r?\n", re.IGNORECASE)
_HTTP_METHOD = re.compile(rb"^(?:GET|HEAD|POST) /")


def _network_name(payload, start: int) -> bytes | None:
    """The NUL-terminated printable network name at ``start`` filling the rest, or None."""
    end = len(payload) - 1
    if end - start < 1 or end - start > MAX_NAME or payload[end] != 0:
        return None
    name = bytes(payload[start:end])
    if not all(0x21 <= c < 0x7F for c in name):
        return None
    return name


def parse_ping(payload) -> bytes | None:
    """The network name of a FastTrack UDP ping, or None."""
    if len(payload) < 8 or payload[0] != PING or payload[4] not in ENC_TYPES or payload[5] != 0x80:
        return None
    if payload[1] or payload[2] or payload[3]:
        return None
    return _network_name(payload, 6)


def parse_pong(payload) -> bool:
    """True for every documented answer to a ping: the supernode's ``0x28`` pong (six
    bytes of state, then the network name), an ordinary node's ``0x29`` "node pong" (13
    or 21 bytes: ``01|02``, a flag, ``00 00``, a 4-byte id and, with the flag set, an
    address, a port and two bytes), and giFT's bare 5-byte ``0x29``."""
    n = len(payload)
    if n < 5 or payload[1] or payload[2] or payload[3] or payload[4] not in ENC_TYPES:
        return False
    if payload[0] == SETUP:
        if n == 5:
            return True
        if n not in (13, 21) or payload[5] not in (1, 2) or payload[6] not in (0, 1):
            return False
        return payload[7] == 0 and payload[8] == 0 and n == (21 if payload[6] else 13)
    return payload[0] == PONG and n >= 13 and _network_name(payload, 11) is not None


def make_node_pong(node_id: int = 0x01020304, address: tuple[bytes, int] | None = None) -> bytes:
    """A 0x29 node pong as an ordinary node sends it (13 bytes, or 21 with its address)."""
    body = bytes([SETUP, 0, 0, 0, 0x29, 0x01, 1 if address else 0, 0, 0]) + node_id.to_bytes(4, "big")
    if address:
        body += address[0] + address[1].to_bytes(2, "big") + b"\x00\x00"
    return body


def make_pong(network: bytes = DEFAULT_NETWORK, load: int = 20) -> bytes:
    """A well-formed 0x28 pong as giFT-FastTrack parses it: 'up, with a free slot'."""
    return bytes([PONG, 0, 0, 0, 0x29, 0x00, 0x1E, 0x05, 0x00, load & 0x7F, 0x00]) + network + b"\x00"


def make_ping(network: bytes = DEFAULT_NETWORK, enc: int = 0x29) -> bytes:
    return bytes([PING, 0, 0, 0, enc, 0x80]) + network + b"\x00"


def parse_http(data: bytes) -> tuple[str, tuple[str, int] | None] | None:
    """(reason, supernode address or None) for a FastTrack transfer request, else None.
    Headers are read in the header block only: a request body never makes one."""
    if _GIVE.match(data):
        return "FastTrack GIVE push", None
    if not _HTTP_METHOD.match(data) or data.startswith(b"POST"):
        return None
    head = header_block(data)
    if _REQUEST.match(head):
        reason = "FastTrack HTTP request"
    elif _HEADER.search(head):
        reason = "FastTrack HTTP headers"
    else:
        return None
    return reason, _supernode(head)


def _supernode(data: bytes) -> tuple[str, int] | None:
    """The X-Kazaa-SupernodeIP address, strictly parsed; anything odd is ignored."""
    m = _SUPERNODE.search(data)
    if not m:
        return None
    try:
        addr = ipaddress.IPv4Address(m.group(1).decode("ascii"))
    except ValueError:
        return None
    port = int(m.group(2))
    if not 0 < port < 65536 or addr.is_unspecified or addr.is_multicast or addr.is_loopback:
        return None
    return str(addr), port


class FastTrackDetector:
    """The ftwall logic: UDP recognition, spoofed pongs, probes and the HTTP safety net."""

    def __init__(self):
        self.probes = True
        self.http = True
        self.spoof = True
        self.sessions = True
        self.networks: set[bytes] | None = None

    @hookimpl
    def p2pwall_detector_info(self):
        return DetectorInfo(
            name="fasttrack", version=__version__,
            protocols=["FastTrack", "Kazaa", "KazaaLite", "iMesh", "Grokster"],
            description="ftwall: UDP ping recognition with spoofed pongs, time lock, probes, HTTP safety net",
            wants=["udp", "tcp_payload"] if self.http or self.sessions else ["udp"],
            tcp_strings=HTTP_STRINGS if self.http else [],
            tcp_first_sizes=(HELLO_SIZE, HELLO_SIZE) if self.sessions else None,
            udp_screen=rb"[\x27\x28\x29]\x00\x00\x00[\x29\xa9]",
            udp_answered=[bytes([PING, 0, 0, 0])] if self.spoof else [],
        )

    @hookimpl
    def p2pwall_configure(self, table, settings):
        known = {"probes": bool, "http": bool, "spoof": bool, "sessions": bool, "networks": list}
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"unknown key {key}")
            if not isinstance(value, known[key]):
                raise ConfigError(f"{key}: expected {known[key].__name__}, got {value!r}")
        self.probes = table.get("probes", True)
        self.http = table.get("http", True)
        self.spoof = table.get("spoof", True)
        self.sessions = table.get("sessions", True)
        names = table.get("networks", [])
        if not all(isinstance(n, str) and 0 < len(n) <= MAX_NAME and n.isprintable() for n in names):
            raise ConfigError("networks: expected a list of network names such as \"KaZaA\"")
        self.networks = {n.encode() for n in names} or None

    @hookimpl
    def p2pwall_inspect(self, packet, context):
        if packet.proto == UDP:
            return self._udp(packet, context)
        if packet.direction != FROM_LAN or context.in_lan(packet.dst):
            return None
        if self.sessions and packet.first and len(packet.payload) == HELLO_SIZE:
            return self._hello(packet, context)
        if self.http:
            return self._tcp(packet)
        return None

    def _hello(self, packet, context):
        """A session's cipher hello: acted on for a client that pinged; else remembered
        until its first ping."""
        if packet.dport in SERVICE_PORTS:
            return None
        reason = "FastTrack session (cipher hello)"
        if context.note_for(packet.src, packet.src, "ft-pinged") is not None:
            return [Block(packet.dst, reason=reason), Drop(reason), Lock(packet.src, reason=reason)]
        kept = context.note_for(packet.src, packet.src, "ft-hellos") or b""
        entry = bytes([len(packet.dst)]) + packet.dst
        if entry not in _entries(kept):
            kept = _trim(kept + entry)
        context.keep_note(packet.src, packet.src, "ft-hellos", kept, HELLO_MEMORY)
        return None

    def _udp(self, packet, context):
        payload = packet.payload
        if len(payload) < 5 or payload[0] not in (PING, PONG, SETUP):
            return None
        if packet.direction == TO_FIREWALL:
            # the answer to one of our probes: the client still runs FastTrack
            if parse_pong(payload):
                return Lock(packet.src, reason="answered a FastTrack probe")
            return None
        if packet.direction != FROM_LAN or context.in_lan(packet.dst):
            return None  # clients inside may talk to each other; only outside peers matter
        name = parse_ping(payload)
        if name is not None and (self.networks is None or name in self.networks):
            actions = [Block(packet.dst, reason="FastTrack UDP ping", note=probe_note(packet)),
                       Drop("FastTrack UDP ping")]
            if self.sessions:
                actions += self._sessions_before(packet, context)
            if self.spoof:
                actions.append(Spoof(packet.dst, packet.dport, packet.src, packet.sport,
                                     make_pong(name), reason="FastTrack pong"))
            return actions
        if parse_pong(payload):
            return [Block(packet.dst, reason="FastTrack UDP pong"), Drop("FastTrack UDP pong")]
        return None

    def _sessions_before(self, packet, context) -> list:
        """A client's first ping: the nodes it opened sessions to before it (their hellos)
        are blocked for it, and it is locked."""
        context.keep_note(packet.src, packet.src, "ft-pinged", b"1", PINGED_MEMORY)
        kept = context.note_for(packet.src, packet.src, "ft-hellos")
        if not kept:
            return []
        context.keep_note(packet.src, packet.src, "ft-hellos", b"", 1.0)
        reason = "FastTrack session peer (cipher hello before the ping)"
        actions = [Block(addr, reason=reason, evidence="named") for addr in _entries(kept)]
        return actions + [Lock(packet.src, reason="FastTrack session up before its pings")]

    def _tcp(self, packet):
        found = parse_http(packet.data)
        if found is None:
            return None
        reason, supernode = found
        if reason != "FastTrack GIVE push" and browser_shaped(packet.data):
            return [Drop(reason), Report(f"browser-shaped {reason}")]
        actions = [Drop(reason), Block(packet.dst, reason=reason), Lock(packet.src, reason=reason)]
        if supernode is not None:
            actions.append(Block(supernode[0], reason="FastTrack supernode (X-Kazaa-SupernodeIP)",
                                 evidence="named"))
        return actions

    @hookimpl
    def p2pwall_make_probe(self, client, note, context):
        if not self.probes or note is None:
            return None
        found = parse_note(note)
        if found is None:
            return None
        client_port, peer_port, ping = found
        return Probe(client, dport=client_port, payload=ping, sport=peer_port, reason="FastTrack probe")


def _entries(kept: bytes) -> list[bytes]:
    """The addresses in a hellos note: each a length byte (4 or 16) and the address."""
    out, i = [], 0
    while i < len(kept) and kept[i] in (4, 16) and i + 1 + kept[i] <= len(kept):
        out.append(kept[i + 1:i + 1 + kept[i]])
        i += 1 + kept[i]
    return out


def _trim(kept: bytes, limit: int = 64) -> bytes:
    """The newest entries that fit a core note (64 bytes)."""
    entries = _entries(kept)
    while sum(1 + len(e) for e in entries) > limit:
        entries.pop(0)
    return b"".join(bytes([len(e)]) + e for e in entries)


def probe_note(packet) -> bytes:
    """What a probe needs later: the client's port, the peer's port and its own ping."""
    return struct.pack("!HH", packet.sport, packet.dport) + packet.data


def parse_note(note: bytes) -> tuple[int, int, bytes] | None:
    if len(note) < 12:
        return None
    client_port, peer_port = struct.unpack_from("!HH", note)
    ping = note[4:]
    if not client_port or parse_ping(ping) is None:
        return None
    return client_port, peer_port, ping
