"""Just enough bencode to find a torrent's info-hash (for tests and the lab)."""

from __future__ import annotations

import hashlib


def _end(data: bytes, i: int) -> int:
    """Index just past the bencoded value starting at ``i``."""
    c = data[i:i + 1]
    if c == b"i":
        return data.index(b"e", i) + 1
    if c in (b"l", b"d"):
        i += 1
        while data[i:i + 1] != b"e":
            i = _end(data, i)
        return i + 1
    colon = data.index(b":", i)
    return colon + 1 + int(data[i:colon])


def info_hash(torrent: bytes) -> str:
    """The hex SHA-1 of a .torrent's bencoded ``info`` dictionary."""
    key = torrent.index(b"4:info") + len(b"4:info")
    return hashlib.sha1(torrent[key:_end(torrent, key)]).hexdigest()
