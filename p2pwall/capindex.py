"""Captures as columns, for replay: where every record's IP header sits, its time, and
the header fields the kernel model needs, read for a whole capture at once with numpy.

A classic pcap file is memory-mapped and walked record by record only to find where
each record starts (its length field decides where the next one is); everything else
(timestamps, link headers, IPv4/IPv6, TCP/UDP headers) is read for all records at once.
Records the fast path cannot read on its own (VLAN or PPPoE frames, fragments, IPv6
extension headers, other link types, pcapng) go through :func:`p2pwall.pcap.read` and
:func:`p2pwall.packet.parse`, the same code the daemon uses, so both agree.
"""

from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from struct import Struct

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import pcap
from .packet import SYN, ACK, FIN, RST, TCP, UDP, parse

MAX_RECORD = 262144 * 4  # as pcap.read: a longer record is corruption, not a packet
_BLOCK = 1 << 18  # rows per block of header reading: temporaries reused, not faulted in anew
_BLOCK_BYTES = 1 << 24  # a capture is walked in blocks of this many bytes (progress, and the thread)
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
            return _slow(path, progress)  # pcapng, or the errors pcap.read words
        # mapped in one go (MAP_POPULATE): far cheaper than a page fault per page later
        mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                       prot=mmap.PROT_READ)
    e, scale = _CLASSIC[head[:4]]
    linktype = Struct(e + "I").unpack_from(head, 20)[0] & 0x0FFFFFFF
    arr = np.frombuffer(mm, np.uint8)
    walk = _Walk(mm, size, e, progress)
    # while the walk (pure Python) finds the next block of records, a thread reads the
    # last one's headers (numpy, which lets go of the interpreter while it works)
    with ThreadPoolExecutor(1) as pool:
        blocks = [(first, pool.submit(_block, mm, arr, np.array(starts, np.int64), e, scale, linktype, path))
                  for first, starts in walk.blocks()]
        done = [(first, future.result()) for first, future in blocks]
    if not done:
        done = [(0, _block(mm, arr, np.zeros(0, np.int64), e, scale, linktype, path))]
    ts, ip, iplen = (np.concatenate([part[k] for _, part in done]) for k in range(3))
    heads = [part[3] for _, part in done]
    for (first, _), h in zip(done, heads):
        h.rows += first
    seg = Segment(mm, ts, ip, iplen, None if walk.cut is None else str(pcap.Truncated(path, len(ts), walk.cut)))
    seg.headers = heads[0] if len(heads) == 1 else _concat(heads)
    return seg


def _block(mm, arr, rec, e: str, scale: float, linktype: int, path: str):
    """Timestamps, IP header offsets and lengths, and header columns of some records."""
    head = _rows(arr, rec, 32)  # record header and the frame's first 16 bytes
    fields = np.ascontiguousarray(head[:, :16]).view(e + "u4").astype(np.int64)
    incl = fields[:, 2]
    bad = np.flatnonzero(incl > MAX_RECORD)
    if len(bad):
        raise pcap.PcapError(f"{path}: corrupt packet record (length {int(incl[bad[0]])})")
    ts = fields[:, 0] + fields[:, 1] * scale
    frame = rec + 16
    ip = np.full(len(rec), -1, np.int64)
    iplen = np.zeros(len(rec), np.int64)
    if linktype == pcap.LINK_ETHERNET:
        etype = (head[:, 28].astype(np.int64) << 8) | head[:, 29]
        plain = (incl >= 14) & ((etype == 0x0800) | (etype == 0x86DD))
        ip[plain] = frame[plain] + 14
        iplen[plain] = incl[plain] - 14
        other = np.flatnonzero(~plain & (incl >= 18) & np.isin(etype, (0x8100, 0x88A8, 0x9100, 0x8864)))
    elif linktype in (pcap.LINK_RAW, pcap.LINK_IPV4, pcap.LINK_IPV6) or linktype in pcap.LINK_RAW_ALT:
        ip[:] = frame
        iplen[:] = incl
        other = np.zeros(0, np.int64)
    else:
        other = np.arange(len(rec))
    for i in other.tolist():  # the link headers only pcap.link_offset reads
        start, n = int(frame[i]), int(incl[i])
        off = pcap.link_offset(linktype, mm[start:start + n])
        if off is not None:
            ip[i], iplen[i] = start + off, n - off
    return ts, ip, iplen, _headers(mm, arr, ip, iplen)


class _Walk:
    """Where every record starts: the one loop over records (each length says where the
    next one is), in blocks.  Afterwards ``cut`` says what a cut-off file ends inside."""

    def __init__(self, mm, size: int, e: str, progress):
        self.mm, self.size, self.e, self.progress = mm, size, e, progress
        self.cut: str | None = None

    def blocks(self):
        """(number of the block's first record, the records' offsets) for each block."""
        mm, size, progress = self.mm, self.size, self.progress
        length = Struct(self.e + "8xI").unpack_from  # a record header's captured length
        off, last, first = 24, size - 16, 0
        while off <= last:
            starts: list[int] = []
            add = starts.append
            stop = min(last, off + _BLOCK_BYTES)
            while off <= stop:
                add(off)
                off += 16 + length(mm, off)[0]
            if progress is not None:
                progress(min(off, size))
            if off > size:  # the last record's data runs past the end
                starts.pop()
                self.cut = "packet data"
            if starts:
                yield first, starts
            first += len(starts)
        if self.cut is None and off < size:
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
    out = np.zeros((len(starts), width), np.uint8)
    if n >= width:
        view = as_strided(arr, shape=(n - width + 1, width), strides=(1, 1))
        inside = starts <= n - width
        out[inside] = view[starts[inside]]
    else:
        inside = np.zeros(len(starts), bool)
    for k in np.flatnonzero(~inside & (starts < n)).tolist():  # the last few bytes
        tail = arr[starts[k]:]
        out[k, :len(tail)] = tail
    return out


def _be(cols: np.ndarray, dtype: str) -> np.ndarray:
    """Big-endian numbers from the byte columns ``cols`` (n, k) of a row gather."""
    return np.ascontiguousarray(cols).view(dtype).astype(np.uint64 if dtype.endswith("8") else np.int64)


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


def _headers(buf, arr: np.ndarray, ip: np.ndarray, iplen: np.ndarray) -> "Headers":
    valid = ip >= 0
    h = _rows(arr, np.where(valid, ip, 0), 54)  # IP header and the TCP/UDP header after it
    ver = np.where(valid, h[:, 0] >> 4, 0)
    v4 = (ver == 4) & (iplen >= 20)
    v6 = (ver == 6) & (iplen >= 40)
    ihl = (h[:, 0] & 15).astype(np.int64) * 4
    total = (h[:, 2].astype(np.int64) << 8) | h[:, 3]
    fragment = ((h[:, 6] & 0x3F) != 0) | (h[:, 7] != 0)
    plen6 = (h[:, 4].astype(np.int64) << 8) | h[:, 5]
    simple4 = v4 & (ihl == 20) & (total >= 20) & ~fragment
    broken4 = v4 & ((ihl < 20) | (total < ihl))  # parse() refuses these
    simple6 = v6 & ((h[:, 6] == TCP) | (h[:, 6] == UDP))
    proto = np.where(v4, h[:, 9], h[:, 6]).astype(np.int64)
    end = np.where(v4, np.minimum(total, iplen), np.minimum(40 + plen6, iplen))
    l4 = np.where(v6, 40, 20)
    fast = (simple4 | simple6) & ((proto == TCP) | (proto == UDP))
    complex_ = np.flatnonzero((v4 & ~simple4 & ~broken4) | (v6 & ~simple6))
    t = np.where(v6[:, None], h[:, 40:54], h[:, 20:34])  # the transport header's first 14 bytes
    doff = (t[:, 12] >> 4).astype(np.int64) * 4
    ulen = (t[:, 4].astype(np.int64) << 8) | t[:, 5]
    is_tcp = proto == TCP
    ok = fast & np.where(is_tcp, (l4 + 20 <= end) & (doff >= 20) & (l4 + doff <= end), l4 + 8 <= end)
    rows = np.flatnonzero(ok)
    r_end, r_l4, r_tcp, r_ulen = end[rows], l4[rows], is_tcp[rows], ulen[rows]
    udp_stop = np.where((r_ulen >= 8) & (r_l4 + r_ulen <= r_end), r_l4 + r_ulen, r_end)
    payrel = np.where(r_tcp, r_l4 + doff[rows], r_l4 + 8)
    stop = np.where(r_tcp, r_end, udp_stop)
    r_v6 = v6[rows]
    hr = h[rows]
    src_hi = np.zeros(len(rows), np.uint64)
    dst_hi = np.zeros(len(rows), np.uint64)
    addr4 = _be(hr[:, 12:20], ">u4").astype(np.uint64)
    src_lo, dst_lo = addr4[:, 0].copy(), addr4[:, 1].copy()
    six = np.flatnonzero(r_v6)
    if len(six):
        a6 = _be(hr[six, 8:40], ">u8")
        src_hi[six], src_lo[six], dst_hi[six], dst_lo[six] = a6[:, 0], a6[:, 1], a6[:, 2], a6[:, 3]
    tr = t[rows]
    ports = _be(tr[:, 0:4], ">u2")
    out = Headers(rows, proto[rows].astype(np.int32), r_v6, src_hi, src_lo, dst_hi, dst_lo,
                  ports[:, 0].astype(np.int32), ports[:, 1].astype(np.int32),
                  np.where(r_tcp, tr[:, 13], 0).astype(np.int32), ip[rows] + payrel, (stop - payrel).astype(np.int32))
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
    names = ("rows", "proto", "v6", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "flags",
             "payoff", "paylen")
    merged = {}
    for name, values in zip(names, cols):
        old = getattr(h, name)
        merged[name] = np.concatenate([old, np.array(values, dtype=old.dtype)])
    order = np.argsort(merged["rows"], kind="stable")
    return Headers(**{k: v[order] for k, v in merged.items()})


def _halves(addr: bytes) -> tuple[int, int]:
    if len(addr) == 4:
        return 0, int.from_bytes(addr, "big")
    return int.from_bytes(addr[:8], "big"), int.from_bytes(addr[8:], "big")


def address(hi: int, lo: int, v6: bool) -> bytes:
    """The packed address back from its halves."""
    return (int(hi).to_bytes(8, "big") + int(lo).to_bytes(8, "big")) if v6 else int(lo).to_bytes(4, "big")
