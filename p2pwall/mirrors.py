"""Mirrors: where the ledger's entries are enforced or passed on.

The ledger (:mod:`p2pwall.ledger`) owns every learned peer and lock; each change it makes
goes, as a :class:`~p2pwall.records.Record`, to every mirror it was given, through one
interface:

- ``add(where, record)``: the entry is (again) in force for ``record.seconds``; ``where``
  is the ledger's word for where it belongs: ``peers`` or ``nolock`` (LAN-wide, a SYN to it
  locks its sender or not), ``pair`` (blocked for ``record.client`` alone), ``locks`` (a
  kernel mirror also puts a lock by a detector that locks UDP, ``QueuePolicy.udp_lockers``,
  in its ``udplocks`` set: one lock, two kernel rules);
- ``remove(where, record)``: it is no longer in force there (``record.op`` says why:
  ``unblock``/``unlock`` for an operator's or a peer gateway's word, ``expire`` for
  expiry, eviction, a purge, or a wider entry that now covers it);
- ``flush()``: write what is pending (called after the verdicts; never raises what it
  can count);
- ``counters()``: its own figures for status.

The mirrors are the kernel sets (:class:`KernelMirror` over
:class:`p2pwall.kernelsets.KernelSets`, or replay's model of them), the cluster publisher
(:mod:`p2pwall.cluster`) and, in monitor mode, :class:`DryRun`, which enforces nothing
and counts what it would have written.  The engine never asks which of them there are.
"""

from __future__ import annotations

from typing import Protocol

from .records import LOCKS, PAIR, UDPLOCKS, Record


class Mirror(Protocol):
    def add(self, where: str, record: Record) -> None: ...

    def remove(self, where: str, record: Record) -> None: ...

    def flush(self) -> None: ...

    def counters(self) -> dict: ...


class KernelMirror:
    """The ledger's entries in a set writer with ``add(kind, addr, seconds, note)``,
    ``add_pair(client, peer, seconds, note)``, ``remove(kind, addr)``,
    ``remove_pair(client, peer)``: the kernel sets, or replay's model of them."""

    def __init__(self, sets):
        self.sets = sets

    def add(self, where: str, record: Record) -> None:
        if where == PAIR:
            self.sets.add_pair(record.client, record.address, record.seconds, record.comment())
        else:
            self.sets.add(where, record.address, record.seconds, record.comment())
            if where == LOCKS and record.detector in getattr(self.sets, "udp_lockers", ()):
                self.sets.add(UDPLOCKS, record.address, record.seconds, record.comment())

    def remove(self, where: str, record: Record) -> None:
        if where == PAIR:
            self.sets.remove_pair(record.client, record.address)
        else:
            self.sets.remove(where, record.address)
            if where == LOCKS:
                self.sets.remove(UDPLOCKS, record.address)

    def flush(self) -> None:
        self.sets.flush()

    def counters(self) -> dict:
        return self.sets.counters()


class DryRun:
    """Monitor mode: nothing reaches the kernel or another gateway; what would have is
    counted (``would_block``, ``would_lock``)."""

    def __init__(self):
        self.blocks = self.locks = 0

    def add(self, where: str, record: Record) -> None:
        if where == LOCKS:
            self.locks += 1
        else:
            self.blocks += 1

    def remove(self, where: str, record: Record) -> None:
        pass

    def flush(self) -> None:
        pass

    def counters(self) -> dict:
        return {"would_block": self.blocks, "would_lock": self.locks}
