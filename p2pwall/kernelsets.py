"""Learned peers and locks mirrored into ipset sets, so the kernel enforces them.

The in-process tables stay the source of truth (status, replay, probes); the sets let
iptables drop every packet to a blocked peer, established flows included, and every
SYN of a locked client, without a trip to user space.  Updates are batched and written
with one ``ipset restore`` after the verdicts, never on the verdict path.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess

from .packet import ip_text

log = logging.getLogger("p2pwall.kernelsets")
MAX_TIMEOUT = 2147483  # ipset's limit, in seconds


class KernelSetError(Exception):
    pass


def set_names(queue: int, family: int) -> dict[str, str]:
    suffix = "" if family == 4 else "-6"
    return {"peers": f"p2pwall-peers{queue}{suffix}", "locks": f"p2pwall-locks{queue}{suffix}"}


def _ipset(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ipset", *args], input=stdin, text=True, capture_output=True)


def _timeout(seconds: float) -> int:
    return max(1, min(MAX_TIMEOUT, math.ceil(seconds)))


class KernelSets:
    """The ipset sets of one queue; ``create`` at start, ``destroy`` at stop."""

    def __init__(self, queue: int, peer_max: int, lock_max: int):
        self.queue = queue
        self.peer_max, self.lock_max = peer_max, lock_max
        self.pending: list[str] = []
        self.families: list[int] = []
        self.owner = False  # only the process that created the sets destroys them

    @staticmethod
    def available() -> bool:
        return shutil.which("ipset") is not None

    def create(self, families=(4, 6)) -> None:
        for family in families:
            names = set_names(self.queue, family)
            fam = "inet" if family == 4 else "inet6"
            for kind, maxelem in (("peers", self.peer_max), ("locks", self.lock_max)):
                _ipset("destroy", names[kind])  # leftovers of a crashed run
                done = _ipset("create", names[kind], "hash:ip", "family", fam, "timeout", "0",
                              "maxelem", str(max(maxelem, 64)), "-exist")
                if done.returncode != 0:
                    raise KernelSetError(f"ipset create {names[kind]}: {done.stderr.strip()}")
            self.families.append(family)
        self.owner = True

    def attach(self, families=(4, 6)) -> None:
        """Use sets another process created (a worker beside the main process)."""
        self.families = list(families)

    def add(self, kind: str, addr: bytes, seconds: float) -> None:
        family = 4 if len(addr) == 4 else 6
        if family not in self.families:
            return
        name = set_names(self.queue, family)[kind]
        self.pending.append(f"add {name} {ip_text(addr)} timeout {_timeout(seconds)} -exist")

    def remove(self, kind: str, addr: bytes) -> None:
        family = 4 if len(addr) == 4 else 6
        if family in self.families:
            self.pending.append(f"del {set_names(self.queue, family)[kind]} {ip_text(addr)} -exist")

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        done = _ipset("restore", "-exist", stdin="\n".join(batch) + "\n")
        if done.returncode != 0:
            log.warning("event=kernel_set_error error=%s", done.stderr.strip().splitlines()[:1])

    def destroy(self) -> None:
        if not self.owner:
            return
        for family in self.families:
            for name in set_names(self.queue, family).values():
                for _ in range(20):  # the rules referencing it may take a moment to go
                    if _ipset("destroy", name).returncode == 0 or "does not exist" in _ipset("list", "-n", name).stderr:
                        break
        self.families.clear()
