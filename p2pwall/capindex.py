"""Captures as columns, for replay: where every record's IP header sits, its time, and
the header fields the kernel model needs, read for a whole capture at once with numpy.

A classic pcap file is memory-mapped and walked record by record only to find where
each record starts (its length field decides where the next one is); everything else
(timestamps, link headers, IPv4/IPv6, TCP/UDP headers) is read for all records at once.
Records the fast path cannot read on its own (VLAN or PPPoE frames, fragments, IPv6
extension headers, other link types, pcapng) go through :func:`p2pwall.pcap.read` and
:func:`p2pwall.packet.parse`, the same code the daemon uses, so both agree.

Why one module past 400 lines: one capture format walked into columns, its C walk's
Python twin and the per-record header reads that must agree with each other.
"""

from __future__ import annotations

import functools
import mmap
import os
from dataclasses import dataclass, fields
from struct import Struct

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import pcap
from .packet import SYN, ACK, FIN, RST, TCP, UDP, parse

try:  # the record walk in C, when it was built at install time (setup.py)
    from . import _capwalk
except ImportError:
    _capwalk = None

MAX_RECORD = 262144 * 4  # as pcap.read: a longer record is corruption, not a packet
_BLOCK = 1 << 18  # rows per block of header reading: temporaries reused, not faulted in anew
_BLOCK_BYTES = 1 << 24  # a capture is read in blocks of this many bytes (progress, reused temporaries)
_CLASSIC = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
            b"\xa1\xb2\xc3\xd4": (">", 1e-6), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}


@dataclass
class Segment:
    """One capture (or a batch of packets fed one by one): the bytes, and per record its
    timestamp and the offset of its IP header in ``buf`` (-1: not IP) and captured length."""

    buf: object
    ts: np.ndarray
    ip: np.ndarray
    iplen: np.ndarray
    warning: str | None = None
    headers: "Headers | None" = None  # read with the records, when the fast path read them

    def __len__(self) -> int:
        return len(self.ts)


def from_records(records) -> Segment:
    """A segment from (timestamp, IP bytes or None) pairs."""
    ts = np.fromiter((r[0] for r in records), np.float64, len(records))
    lens = np.fromiter((len(r[1]) if r[1] is not None else -1 for r in records), np.int64, len(records))
    buf = b"".join(r[1] for r in records if r[1] is not None)
    starts = np.zeros(len(records), np.int64)
    if len(records):
        sizes = np.maximum(lens, 0)
        starts[1:] = np.cumsum(sizes)[:-1]
    ip = np.where(lens >= 0, starts, -1)
    return Segment(buf, ts, ip, np.maximum(lens, 0))


def read_file(path: str, progress=None) -> Segment:
    """Index one capture.  Raises pcap.PcapError as :func:`pcap.read` does; a capture cut
    off mid-record gives the records before the cut and a ``warning``."""
    try:
        f = open(path, "rb")
    except IsADirectoryError:
        raise pcap.PcapError(f"{path}: is a directory") from None
    except OSError as exc:
        raise pcap.PcapError(f"{path}: cannot open: {exc.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(24)
        if head[:4] not in _CLASSIC or len(head) < 24:
            return _slow(path, progress)  # pcapng, gzip, or the errors pcap.read words
        # mapped in one go (MAP_POPULATE): far cheaper than a page fault per page later
        mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                       prot=mmap.PROT_READ)
    e, scale = _CLASSIC[head[:4]]
    linktype = Struct(e + "I").unpack_from(head, 20)[0] & 0x0FFFFFFF
    arr = np.frombuffer(mm, np.uint8)

    def block(starts) -> tuple:
        return _block(mm, arr, np.asarray(starts, np.int64), e, scale, linktype, path)

    walk = _Walk(mm, size, e, progress, block)
    done = list(walk.blocks()) or [(0, block([]))]
    ts, ip, iplen = (np.concatenate([part[k] for _, part in done]) for k in range(3))
    heads = [part[3] for _, part in done]
    for (first, _), h in zip(done, heads):
        h.rows += first
    seg = Segment(mm, ts, ip, iplen, None if walk.cut is None else str(pcap.Truncated(path, len(ts), walk.cut)))
    seg.headers = heads[0] if len(heads) == 1 else _concat(heads)
    return seg


def _block(mm, arr, rec, e: str, scale: float, linktype: int, path: str):
    """Timestamps, IP header offsets and lengths, and header columns of some records."""
    ether = linktype == pcap.LINK_ETHERNET
    raw = linktype in (pcap.LINK_RAW, pcap.LINK_IPV4, pcap.LINK_IPV6) or linktype in pcap.LINK_RAW_ALT
    base = 30 if ether else 16 if raw else None  # where the IP header sits in a record
    # one gather per record: its header, and (Ethernet, raw IP) the IP and transport headers
    head = _rows(arr, rec, (base or 16) + _WINDOW)
    r = head.view(_record_layout(e, head.shape[1])).ravel()
    incl = r["incl"].astype(np.int64)
    bad = np.flatnonzero(incl > MAX_RECORD)
    if len(bad):
        raise pcap.PcapError(f"{path}: corrupt packet record (length {int(incl[bad[0]])})")
    ts = r["sec"] + r["frac"] * scale
    frame = rec + 16
    ip = np.full(len(rec), -1, np.int64)
    iplen = np.zeros(len(rec), np.int64)
    if ether:
        etype = r["etype"]
        plain = (incl >= 14) & ((etype == 0x0800) | (etype == 0x86DD))
        ip[plain] = frame[plain] + 14
        iplen[plain] = incl[plain] - 14
        other = np.flatnonzero(~plain & (incl >= 18) & one_of(etype, (0x8100, 0x88A8, 0x9100, 0x8864)))
    elif raw:
        ip[:] = frame
        iplen[:] = incl
        plain = np.ones(len(rec), bool)
        other = np.zeros(0, np.int64)
    else:
        plain = np.zeros(len(rec), bool)
        other = np.arange(len(rec))
    for i in other.tolist():  # the link headers only pcap.link_offset reads
        start, n = int(frame[i]), int(incl[i])
        off = pcap.link_offset(linktype, mm[start:start + n])
        if off is not None:
            ip[i], iplen[i] = start + off, n - off
    if base is None:
        return ts, ip, iplen, _headers(mm, arr, ip, iplen)
    out = _headers(mm, arr, np.where(plain, ip, -1), iplen, head, base)
    rest = np.flatnonzero(~plain & (ip >= 0))  # VLAN, PPPoE: read from where their IP header is
    if len(rest):
        more = _headers(mm, arr, ip[rest], iplen[rest])
        more.rows = rest[more.rows]
        out = _merge(out, more)
    return ts, ip, iplen, out


class _Walk:
    """Where every record starts: the one loop over records (each length says where the
    next one is), in blocks of about 16 MiB, in C when p2pwall._capwalk was built (a
    pointer chase: ~50 ns a record) and in Python otherwise (~180 ns).  ``blocks()``
    reads each block into columns with ``block(starts)`` as soon as it is walked;
    afterwards ``cut`` says what a cut-off file ends inside.

    (A forked helper reading half the blocks into shared memory was tried: the child's
    page faults on the file and on fresh memory cost more than the half it saves.)"""

    def __init__(self, mm, size: int, e: str, progress, block):
        self.mm, self.size, self.e, self.progress, self.block = mm, size, e, progress, block
        self.cut: str | None = None
        self.off, self.first = 24, 0  # where the walk is: the next record's offset and number

    def _walk(self, off: int, until: int) -> tuple[np.ndarray, int]:
        """The starts of the records from ``off`` that begin before ``until`` (their
        header inside the file), and where the walk stopped: the next record's start, or
        past the end."""
        stop = min(self.size - 16, until - 1)
        if off > stop:
            return np.zeros(0, np.int64), off
        if _capwalk is not None:
            out = np.empty((stop - off) // 16 + 1, np.int64)  # a record takes 16 bytes at least
            n, off = _capwalk.walk(self.mm, off, until, self.e == ">", out)
            return out[:n], off
        mm, starts = self.mm, []
        length = Struct(self.e + "8xI").unpack_from  # a record header's captured length
        add = starts.append
        while off <= stop:
            add(off)
            off += 16 + length(mm, off)[0]
        return np.array(starts, np.int64), off

    def blocks(self):
        """(number of the block's first record, ``block()`` of its records) for each block."""
        size, progress = self.size, self.progress
        while self.off <= size - 16:
            starts, self.off = self._walk(self.off, self.off + _BLOCK_BYTES + 1)
            if self.off > size:  # the last record's data runs past the end
                starts = starts[:-1]
                self.cut = "packet data"
            if len(starts):
                yield self.first, self.block(starts)
            self.first += len(starts)
            if progress is not None:
                progress(min(self.off, size))
        if self.cut is None and self.off < size:
            self.cut = "packet record"
        if progress is not None:
            progress(size)


def _slow(path: str, progress) -> Segment:
    records = []
    warning = None
    try:
        for record in pcap.read(path, progress):
            records.append(record)
    except pcap.Truncated as exc:
        warning = str(exc)
    seg = from_records(records)
    seg.warning = warning
    return seg


# ---------------------------------------------------------------------- header columns
def _rows(arr: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """``width`` bytes from each of ``starts``, as an (n, width) array: one copy per row
    from a strided view of the buffer.  Rows that would run past the end of the buffer
    come back zero-filled past it."""
    n = len(arr)
    last = n - width
    if len(starts) and last >= 0 and int(starts.max()) <= last:
        return as_strided(arr, shape=(last + 1, width), strides=(1, 1))[starts]
    out = np.zeros((len(starts), width), np.uint8)
    inside = starts <= last
    if last >= 0:
        out[inside] = as_strided(arr, shape=(last + 1, width), strides=(1, 1))[starts[inside]]
    for k in np.flatnonzero(~inside & (starts < n)).tolist():  # the last few bytes
        tail = arr[starts[k]:]
        out[k, :len(tail)] = tail
    return out


@dataclass
class Headers:
    """TCP/UDP header fields of a segment's packets, one row per packet that parses as
    TCP or UDP (``rows``: their record numbers).  Addresses are two 64-bit halves (IPv4 in
    the low half, ``v6`` tells the family); ``payoff`` is the payload's offset in the
    segment's bytes and ``paylen`` its length."""

    rows: np.ndarray
    proto: np.ndarray
    v6: np.ndarray
    src_hi: np.ndarray
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    flags: np.ndarray
    payoff: np.ndarray
    paylen: np.ndarray

    @property
    def syn(self) -> np.ndarray:
        return (self.proto == TCP) & ((self.flags & (SYN | ACK)) == SYN)

    @property
    def fin_rst(self) -> np.ndarray:
        return (self.proto == TCP) & ((self.flags & (FIN | RST)) != 0)


def headers(seg: Segment) -> Headers:
    """The TCP/UDP header columns of ``seg``, as :func:`p2pwall.packet.parse` reads them.
    IPv4 without options and IPv6 without extension headers are read here, a block of
    rows at a time; the rest (options, fragments, extension chains) by parse() itself."""
    if seg.headers is not None:
        return seg.headers
    arr = np.frombuffer(seg.buf, np.uint8) if len(seg.buf) else np.zeros(0, np.uint8)
    parts = []
    for a in range(0, max(len(seg), 1), _BLOCK):
        h = _headers(seg.buf, arr, seg.ip[a:a + _BLOCK], seg.iplen[a:a + _BLOCK])
        h.rows += a
        parts.append(h)
    return parts[0] if len(parts) == 1 else _concat(parts)


def _concat(parts: list["Headers"]) -> "Headers":
    return Headers(*(np.concatenate([getattr(h, f.name) for h in parts]) for f in fields(Headers)))


_V6_EXT = (0, 43, 44, 51, 60, 135, 139, 140)  # the extension headers parse() walks
_WINDOW = 54  # bytes of IP and transport header read per packet (IPv6 + 14 of TCP/UDP)
_IP_FIELDS = {  # name: (format, offset in the IP header); overlapping fields are fine
    "b0": ("u1", 0), "total": (">u2", 2), "plen6": (">u2", 4), "nh": ("u1", 6), "frag": (">u2", 6),
    "proto4": ("u1", 9), "src4": (">u4", 12), "dst4": (">u4", 16),
    "src6hi": (">u8", 8), "src6lo": (">u8", 16), "dst6hi": (">u8", 24), "dst6lo": (">u8", 32),
    "sport4": (">u2", 20), "dport4": (">u2", 22), "ulen4": (">u2", 24), "doff4": ("u1", 32), "flags4": ("u1", 33),
    "nh2": ("u1", 40), "sport6": (">u2", 40), "dport6": (">u2", 42), "ulen6": (">u2", 44), "doff6": ("u1", 52), "flags6": ("u1", 53),
}


def starts_with(segments, seg: np.ndarray, off: np.ndarray, length: np.ndarray,
                prefixes: tuple[bytes, ...]) -> np.ndarray:
    """For each of some payloads (segment index, offset and length in that segment's
    buffer), whether it starts with one of ``prefixes`` (1-4 bytes each): their first four
    bytes read a column at a time, one segment after another."""
    lead = np.zeros(len(seg), np.uint64)
    width = np.minimum(length, 4).astype(np.int64)
    for k, segment in enumerate(segments):
        mine = np.flatnonzero(seg == k)
        if not len(mine):
            continue
        buf = np.frombuffer(segment.buf, np.uint8)
        at = off[mine].astype(np.int64)
        for b in range(4):  # left-aligned: a shorter payload is padded with zeros
            has = width[mine] > b
            byte = np.zeros(len(mine), np.uint64)
            byte[has] = buf[at[has] + b]
            lead[mine] = (lead[mine] << np.uint64(8)) | byte
    found = np.zeros(len(seg), bool)
    for prefix in prefixes:
        n = len(prefix)
        want = np.uint64(int.from_bytes(prefix, "big") << (8 * (4 - n)))
        mask = np.uint64(((1 << (8 * n)) - 1) << (8 * (4 - n)))
        found |= ((lead & mask) == want) & (width >= n)
    return found


def one_of(values: np.ndarray, choices: tuple[int, ...]) -> np.ndarray:
    """``values`` (16-bit at most) that are among ``choices``: a table lookup (np.isin
    sorts, and pulls in numpy.ma on its way)."""
    return _table(choices)[values]


@functools.lru_cache(maxsize=16)
def _table(choices: tuple[int, ...]) -> np.ndarray:
    table = np.zeros(65536, bool)
    table[list(choices)] = True
    return table


@functools.lru_cache(maxsize=16)
def _ip_layout(base: int, itemsize: int) -> np.dtype:
    """The header fields of a gathered row whose IP header starts at ``base``."""
    return np.dtype({"names": list(_IP_FIELDS), "formats": [f for f, _ in _IP_FIELDS.values()],
                     "offsets": [base + o for _, o in _IP_FIELDS.values()], "itemsize": itemsize})


@functools.lru_cache(maxsize=8)
def _record_layout(e: str, itemsize: int) -> np.dtype:
    """A pcap record header, and the Ethernet type after it."""
    return np.dtype({"names": ["sec", "frac", "incl", "etype"], "formats": [e + "u4", e + "u4", e + "u4", ">u2"],
                     "offsets": [0, 4, 8, 28], "itemsize": itemsize})


def _headers(buf, arr: np.ndarray, ip: np.ndarray, iplen: np.ndarray, h: np.ndarray | None = None,
             base: int = 0) -> "Headers":
    """Header columns of the rows whose IP header is at ``ip`` (-1: none); ``h`` may hold
    the rows already gathered, their IP header at ``base``."""
    valid = ip >= 0
    if h is None:
        h = _rows(arr, np.where(valid, ip, 0), _WINDOW)
    f = h.view(_ip_layout(base, h.shape[1])).ravel()
    b0 = f["b0"]
    ver = np.where(valid, b0 >> 4, 0)
    v4 = (ver == 4) & (iplen >= 20)
    v6 = (ver == 6) & (iplen >= 40)
    ihl = (b0 & 15).astype(np.int64) * 4
    total = f["total"].astype(np.int64)
    nh = f["nh"]
    simple4 = v4 & (ihl == 20) & (total >= 20) & ((f["frag"] & 0x3FFF) == 0)
    broken4 = v4 & ((ihl < 20) | (total < ihl))  # parse() refuses these
    simple6 = v6 & ((nh == TCP) | (nh == UDP))
    proto = np.where(v4, f["proto4"], nh)  # uint8
    end = np.where(v4, np.minimum(total, iplen), np.minimum(40 + f["plen6"].astype(np.int64), iplen))
    # parse() reads what these start: IPv4 options and fragments of TCP and UDP, IPv6
    # extension headers that lead on to TCP, UDP or another one (any other protocol,
    # ICMPv6 after a hop-by-hop header say, is neither TCP nor UDP)
    chains = v6 & one_of(nh, _V6_EXT) & one_of(f["nh2"], _V6_EXT + (TCP, UDP))
    complex_ = np.flatnonzero((v4 & ~simple4 & ~broken4 & ((f["proto4"] == TCP) | (f["proto4"] == UDP))) | chains)
    l4 = np.where(v6, 40, 20)
    doff = np.where(v6, f["doff6"], f["doff4"]).astype(np.int64) >> 4 << 2
    ulen = np.where(v6, f["ulen6"], f["ulen4"]).astype(np.int64)
    is_tcp = proto == TCP
    ok = (simple4 | simple6) & np.where(is_tcp, (l4 + 20 <= end) & (doff >= 20) & (l4 + doff <= end),
                                        (proto == UDP) & (l4 + 8 <= end))
    rows = np.flatnonzero(ok)
    r_end, r_l4, r_tcp, r_ulen, r_v6 = end[rows], l4[rows], is_tcp[rows], ulen[rows], v6[rows]
    udp_stop = np.where((r_ulen >= 8) & (r_l4 + r_ulen <= r_end), r_l4 + r_ulen, r_end)
    payrel = np.where(r_tcp, r_l4 + doff[rows], r_l4 + 8)
    stop = np.where(r_tcp, r_end, udp_stop)
    sixes = np.flatnonzero(r_v6)

    def col(six: str, four: str | None, dtype) -> np.ndarray:
        """One field of the kept rows, from its IPv4 place or (IPv6 rows) its IPv6 one."""
        out = f[four][rows].astype(dtype) if four is not None else np.zeros(len(rows), dtype)
        if len(sixes):
            out[sixes] = f[six][rows[sixes]]
        return out

    out = Headers(rows, proto[rows], r_v6, col("src6hi", None, np.uint64), col("src6lo", "src4", np.uint64),
                  col("dst6hi", None, np.uint64), col("dst6lo", "dst4", np.uint64),
                  col("sport6", "sport4", np.uint16), col("dport6", "dport4", np.uint16),
                  np.where(r_tcp, col("flags6", "flags4", np.uint8), 0).astype(np.uint8),
                  ip[rows] + payrel, (stop - payrel).astype(np.int32))
    if len(complex_):
        out = _add_parsed(out, buf, ip, iplen, complex_.tolist())
    return out


def _add_parsed(h: Headers, buf, ip: np.ndarray, iplen: np.ndarray, rows: list[int]) -> Headers:
    """Rows the vectorised reader leaves to parse(): options, fragments, IPv6 extension headers."""
    extra = []
    for i in rows:
        start = int(ip[i])
        p = parse(bytes(buf[start:start + int(iplen[i])]))
        if p is None or p.proto not in (TCP, UDP):
            continue
        hi_s, lo_s = _halves(p.src)
        hi_d, lo_d = _halves(p.dst)
        extra.append((i, p.proto, p.version == 6, hi_s, lo_s, hi_d, lo_d, p.sport, p.dport, p.flags,
                      start + p.off, p.end - p.off))
    if not extra:
        return h
    cols = list(zip(*extra))
    return _merge(h, Headers(*(np.array(values, dtype=getattr(h, f.name).dtype)
                               for f, values in zip(fields(Headers), cols))))


def _merge(a: Headers, b: Headers) -> Headers:
    """Two sets of rows as one, in row order."""
    both = _concat([a, b])
    order = np.argsort(both.rows, kind="stable")
    return Headers(*(getattr(both, f.name)[order] for f in fields(Headers)))


def _halves(addr: bytes) -> tuple[int, int]:
    if len(addr) == 4:
        return 0, int.from_bytes(addr, "big")
    return int.from_bytes(addr[:8], "big"), int.from_bytes(addr[8:], "big")


def address(hi: int, lo: int, v6: bool) -> bytes:
    """The packed address back from its halves."""
    return (int(hi).to_bytes(8, "big") + int(lo).to_bytes(8, "big")) if v6 else int(lo).to_bytes(4, "big")
