"""Telling a browser's HTTP request from a P2P client's: shared by every detector whose
signature travels over plain HTTP, since any web page can make a browser send a request
line of its choosing (``<img src=...>``, ``fetch``) and so must never be evidence.

A request is *browser-shaped* when its header block carries what browsers always send
and P2P clients do not: ``Sec-Fetch-*`` headers, a ``Mozilla/`` user agent (every
browser's), or an ``Accept`` naming ``text/html`` or ``image/*``.  Only the header block
(up to the blank line) is read, so a request body cannot make a request look like either.
"""

from __future__ import annotations

import re

_BROWSER = re.compile(rb"\r?\n(?:sec-fetch-[a-z-]*\s*:|user-agent\s*:[ \t]*mozilla/|"
                      rb"accept\s*:[^\r\n]*(?:text/html|image/))", re.IGNORECASE)


def header_block(data: bytes) -> bytes:
    """The request line and headers of an HTTP request (the body, if any, cut off)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    return data if end < 0 else data[:end + 2]


def browser_shaped(data: bytes) -> bool:
    """Whether this HTTP request came from a browser (see the module's docstring)."""
    return _BROWSER.search(header_block(data)) is not None
