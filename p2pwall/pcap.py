"""Reading captures: pcap and pcapng, Ethernet (with VLAN tags), raw IP, Linux cooked
(SLL and SLL2) and BSD loopback link types.  Yields (timestamp, IP packet bytes).
"""

from __future__ import annotations

from struct import unpack_from


class PcapError(Exception):
    """A capture that cannot be read (exit status 2)."""


LINK_NULL, LINK_ETHERNET, LINK_RAW, LINK_LOOP = 0, 1, 101, 108
LINK_RAW_ALT = (12, 14)
LINK_IPV4, LINK_IPV6 = 228, 229
LINK_SLL, LINK_SLL2 = 113, 276

_ETH_IP = (0x0800, 0x86DD)
_VLAN = (0x8100, 0x88A8, 0x9100)


def link_offset(linktype: int, frame: bytes) -> int | None:
    """Where the IP packet starts inside a frame, or None when it is not IP."""
    if linktype == LINK_ETHERNET:
        if len(frame) < 14:
            return None
        etype = (frame[12] << 8) | frame[13]
        off = 14
        while etype in _VLAN and len(frame) >= off + 4:
            etype = (frame[off + 2] << 8) | frame[off + 3]
            off += 4
        if etype == 0x8864 and len(frame) >= off + 8:  # PPPoE session
            proto = (frame[off + 6] << 8) | frame[off + 7]
            etype = {0x0021: 0x0800, 0x0057: 0x86DD}.get(proto, 0)
            off += 8
        return off if etype in _ETH_IP else None
    if linktype in (LINK_RAW, LINK_IPV4, LINK_IPV6) or linktype in LINK_RAW_ALT:
        return 0
    if linktype == LINK_SLL:
        if len(frame) < 16:
            return None
        return 16 if ((frame[14] << 8) | frame[15]) in _ETH_IP else None
    if linktype == LINK_SLL2:
        if len(frame) < 20:
            return None
        return 20 if ((frame[0] << 8) | frame[1]) in _ETH_IP else None
    if linktype in (LINK_NULL, LINK_LOOP):
        return 4 if len(frame) > 4 else None
    return None


def link_to_ip(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet inside a frame, or None when it is not IP."""
    off = link_offset(linktype, frame)
    return None if off is None else frame[off:]


def read(path: str, progress=None):
    """Yield (timestamp, ip_bytes) for every IP packet of a pcap or pcapng file.

    Non-IP frames yield (timestamp, None) so that callers can count them.
    """
    try:
        f = open(path, "rb")
    except IsADirectoryError:
        raise PcapError(f"{path}: is a directory") from None
    except OSError as exc:
        raise PcapError(f"{path}: cannot open: {exc.strerror}") from None
    with f:
        head = f.read(4)
        if head[:2] == b"\x1f\x8b":  # .pcap.gz, .pcapng.gz: read through gzip, as they are
            import gzip

            f = gzip.open(path, "rb")
            try:
                head = f.read(4)
            except (OSError, EOFError) as exc:
                f.close()
                raise PcapError(f"{path}: not a readable gzip file: {exc}") from None
        if len(head) < 4:
            raise PcapError(f"{path}: not a capture file (too short)")
        magic = head
        if magic == b"\x0a\x0d\x0d\x0a":
            records = _read_pcapng(path, f, head)
        elif magic in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
            records = _read_pcap(path, f, head)
        else:
            raise PcapError(f"{path}: not a pcap or pcapng file (magic {head.hex()})")
        n = 0
        try:
            for record in records:
                if progress is not None and n % 4096 == 0:
                    progress(_position(f))
                n += 1
                yield record
        except _Cut as cut:
            raise Truncated(path, n, str(cut)) from None
        except (EOFError, OSError) as exc:  # a gzip stream cut off or corrupt
            raise Truncated(path, n, f"compressed data: {exc}") from None
        finally:
            f.close()
        if progress is not None:
            progress(_position(f))


def _position(f) -> int:
    """How far into the file on disk: for gzip, the compressed bytes read so far."""
    raw = getattr(f, "fileobj", None)
    return raw.tell() if raw is not None else f.tell()


def _read_pcap(path, f, head):
    little = head in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
    nano = head in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    e = "<" if little else ">"
    rest = f.read(20)
    if len(rest) < 20:
        raise PcapError(f"{path}: truncated pcap header")
    linktype = unpack_from(e + "I", rest, 16)[0] & 0x0FFFFFFF
    scale = 1e-9 if nano else 1e-6
    rec = e + "IIII"
    while True:
        hdr = f.read(16)
        if not hdr:
            return
        if len(hdr) < 16:
            raise _Cut("packet record")
        sec, frac, incl, _orig = unpack_from(rec, hdr)
        if incl > 262144 * 4:
            raise PcapError(f"{path}: corrupt packet record (length {incl})")
        frame = f.read(incl)
        if len(frame) < incl:
            raise _Cut("packet data")
        yield sec + frac * scale, link_to_ip(linktype, frame)


def _read_pcapng(path, f, head):
    interfaces: list[tuple[int, float]] = []
    e = "<"
    first = True
    while True:
        if first:
            more = f.read(8)
            if len(more) < 8:
                raise PcapError(f"{path}: truncated pcapng header")
            bom = more[4:8]
            if bom == b"\x4d\x3c\x2b\x1a":
                e = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                e = ">"
            else:
                raise PcapError(f"{path}: bad pcapng byte-order magic")
            blen = unpack_from(e + "I", more, 0)[0]
            if blen < 28 or blen % 4:
                raise PcapError(f"{path}: corrupt pcapng section header")
            if len(f.read(blen - 12)) < blen - 12:
                raise PcapError(f"{path}: truncated pcapng section header")
            first = False
            interfaces = []
            continue
        hdr = f.read(8)
        if not hdr:
            return
        if len(hdr) < 8:
            raise _Cut("pcapng block")
        btype, blen = unpack_from(e + "II", hdr)
        if blen < 12 or blen % 4 or blen > 16 * 1024 * 1024:
            raise PcapError(f"{path}: corrupt pcapng block (length {blen})")
        body = f.read(blen - 8)
        if len(body) < blen - 8:
            raise _Cut("pcapng block")
        body = body[:-4]
        if btype == 0x0A0D0D0A:  # a new section: byte order may change
            bom = body[0:4]
            e = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
            interfaces = []
        elif btype == 1:  # interface description
            if len(body) < 8:
                raise PcapError(f"{path}: corrupt interface block")
            linktype = unpack_from(e + "H", body, 0)[0]
            interfaces.append((linktype, _tsresol(body[8:], e)))
        elif btype == 6:  # enhanced packet
            if len(body) < 20:
                raise PcapError(f"{path}: corrupt packet block")
            iface, hi, lo, cap, _orig = unpack_from(e + "IIIII", body)
            if iface >= len(interfaces):
                raise PcapError(f"{path}: packet names unknown interface {iface}")
            linktype, scale = interfaces[iface]
            frame = body[20:20 + cap]
            yield ((hi << 32) | lo) * scale, link_to_ip(linktype, frame)
        elif btype == 3:  # simple packet: no timestamp
            if not interfaces:
                raise PcapError(f"{path}: packet before any interface block")
            linktype, _ = interfaces[0]
            yield 0.0, link_to_ip(linktype, body[4:])


def _tsresol(options: bytes, e: str) -> float:
    off = 0
    while off + 4 <= len(options):
        code, length = unpack_from(e + "HH", options, off)
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = options[off + 4]
            return 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
        off += 4 + ((length + 3) & ~3)
    return 1e-6


class _Cut(Exception):
    """The file ends inside a record (inside the readers)."""


class Truncated(PcapError):
    """The capture stops in the middle of a record, as a capture cut off mid-write does:
    every packet before the cut was delivered."""

    def __init__(self, path: str, packets: int, where: str):
        super().__init__(f"{path}: truncated after packet {packets} (the file ends inside a {where})")
        self.path, self.packets = path, packets


class PcapSource:
    """A capture as a packet source for the engine: iterates (timestamp, IP bytes or None)."""

    def __init__(self, path: str, progress=None):
        self.path, self.progress = path, progress

    def __iter__(self):
        return read(self.path, self.progress)
