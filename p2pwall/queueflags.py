"""The queue's overflow policy, set over netlink on the queue's own socket.

NetfilterQueue 1.1 binds a queue but does not expose ``NFQA_CFG_F_FAIL_OPEN``: with it,
a full queue lets packets through unjudged instead of dropping them (as
``--queue-bypass`` does when nobody listens).  libnetfilter_queue would set it with one
``NFQNL_MSG_CONFIG`` message carrying ``NFQA_CFG_FLAGS`` and ``NFQA_CFG_MASK``; this
module sends exactly that message on a duplicate of the bound socket, so the flag
applies to the queue p2pwall owns (the kernel ties the queue to the socket's port id),
without a second netfilter binding.
"""

from __future__ import annotations

import socket
import struct

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_CONFIG = 2
NFQA_CFG_MASK, NFQA_CFG_FLAGS = 4, 5
NFQA_CFG_F_FAIL_OPEN = 0x1
NLM_F_REQUEST = 0x1


def _attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + bytes(-len(data) % 4)


def config_message(queue: int, fail_open: bool, seq: int = 1) -> bytes:
    """The NFQNL_MSG_CONFIG message that sets (or clears) fail-open on ``queue``."""
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue))
    body += _attr(NFQA_CFG_FLAGS, struct.pack(">I", NFQA_CFG_F_FAIL_OPEN if fail_open else 0))
    body += _attr(NFQA_CFG_MASK, struct.pack(">I", NFQA_CFG_F_FAIL_OPEN))
    header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG,
                         NLM_F_REQUEST, seq, 0)
    return header + body


def set_fail_open(fd: int, queue: int, fail_open: bool) -> None:
    """Send the flag on the bound queue's socket ``fd``; raises OSError if the kernel
    refuses the message outright."""
    sock = socket.fromfd(fd, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.sendto(config_message(queue, fail_open), (0, 0))
    finally:
        sock.close()  # the duplicate only: NetfilterQueue keeps its own
