"""Learned peers and locks mirrored into kernel sets, so the kernel enforces them.

The peers (``peers``, ``nolock``) and the client-scoped blocks (``pairs``) are nft sets
in p2pwall's own table, whose one chain before conntrack drops what the LAN sends to
them; the locks are an ipset set, which the iptables rules read (see
:func:`p2pwall.nftables.nft_table`).

The in-process tables stay the source of truth (status, replay, probes); the sets let
the kernel drop every packet to a blocked peer, established flows included, and every
SYN of a locked client, without a trip to user space.  The mirror is exact: every add
is validated first, every expiry, eviction, unblock and reload purge is a delete, and
one bad element never cancels the rest of its batch (an nft batch is all or nothing:
a refused one is sent again in halves down to the bad elements; ``ipset restore`` stops
at its first error: the lines after it are sent again, the bad one is counted).  Updates are batched and written
after the verdicts, never on the verdict path.  Which sets exist and how big they are
comes from the queue policy.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import subprocess

from .events import emit
from .packet import ip_text
from .policy import NFT_KINDS, STATION_TABLE, QueuePolicy, SetSpec, set_name
from .records import UDPLOCKS
from .nftables import nft_table

log = logging.getLogger("p2pwall.kernelsets")
MAX_TIMEOUT = 2147483  # ipset's limit, in seconds
_LINE = re.compile(r"Error in line (\d+):\s*(.*)")
_FRESH_BATCH = 256  # nft batches this big try one line per new element first
_NFT = NFT_KINDS + (UDPLOCKS,)  # the address sets in p2pwall's nft table (udplocks: QueuePolicy.udp_lockers)


class KernelSetError(Exception):
    pass


def _timeout(seconds: float) -> int:
    return max(1, min(MAX_TIMEOUT, math.ceil(seconds)))


_COMMENT_BAD = re.compile(r"[^A-Za-z0-9 _.:/()|,+-]")


def comment(*parts: str) -> str:
    """What an element carries in the kernel beside its timeout (detector, evidence,
    reason), so a crashed run's entries come back with their evidence."""
    return _COMMENT_BAD.sub("_", "|".join(parts))[:200]


def parse_comment(text: str) -> list[str]:
    return text.split("|", 2) if text else []


def valid_element(addr: bytes) -> bool:
    """An address ipset can hold and that may ever be enforced: ordinary unicast."""
    if len(addr) == 4:
        return 0 < addr[0] < 224 and addr[0] != 127 and addr != b"\xff\xff\xff\xff"
    if len(addr) == 16:
        return addr[0] != 0xFF and addr != bytes(15) + b"\x01" and any(addr)
    return False


def nft_elements(listing: str) -> list[tuple[object, float, str]]:
    """The elements of an nft set as ``nft -j list set`` gives them: (value: an address, or
    [client, peer] for a pair; seconds left; comment); none when it is no such listing."""
    import json

    try:
        doc = json.loads(listing or "{}")
    except ValueError:
        return []
    out = []
    for item in doc.get("nftables", []) if isinstance(doc, dict) else ():
        for elem in item.get("set", {}).get("elem", []) if isinstance(item, dict) else ():
            # an element with a timeout or comment comes as {"elem": {...}}; a bare one as its value
            e = elem["elem"] if isinstance(elem, dict) and "elem" in elem else {"val": elem}
            val = e.get("val")
            if isinstance(val, dict):
                val = val.get("concat")
            if isinstance(val, (str, list)):
                out.append((val, float(e.get("expires", 0)), str(e.get("comment", ""))))
    return out


class KernelSets:
    """The kernel sets of one queue; ``create`` at start, ``destroy`` at stop."""

    def __init__(self, policy: QueuePolicy, command: tuple[str, ...] = ("ipset",)):
        self.policy = policy
        self.command = tuple(command)  # tests prefix "ip netns exec NS"
        self.pending: list[str] = []  # ipset restore lines (the locks)
        self.pending_nft: list[tuple] = []  # (op, set name, element, timeout, comment)
        self.families: list[int] = []
        self.table = False  # p2pwall's nft table exists (the peer sets)
        self.pairs = False  # and holds the pair sets
        self.owner = False  # only the process that created the sets destroys them
        self.failures = 0  # elements the kernel refused
        self.refused = 0  # elements refused before reaching the kernel
        self.last_error = ""
        self._stations: set | None = set()  # (address, MAC) the stations sets hold; None: unknown
        self._made = 0  # how many times the nft table was made (a sync that raced one starts over)

    @staticmethod
    def available() -> bool:
        return shutil.which("ipset") is not None and shutil.which("nft") is not None

    def _ipset(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*self.command, *args], input=stdin, text=True, capture_output=True)

    def _nft(self, script: str) -> subprocess.CompletedProcess:
        prefix = self.command[:-1]  # "ip netns exec NS" in tests, nothing live
        return subprocess.run([*prefix, "nft", "-f", "-"], input=script, text=True, capture_output=True)

    def _names(self, family: int) -> dict[str, str]:
        return self.policy.set_names(family)

    def create(self, families=(4, 6)) -> None:
        families = list(families)
        self.families = []
        for family in families:
            for kind in NFT_KINDS:  # ipset peer sets an older version left behind
                self._ipset("destroy", set_name(self.policy.queue, kind, family))
            for spec in self.policy.sets(family):
                self._ipset("destroy", spec.name)  # leftovers of a crashed run
                done = self._ipset(*spec.create_args(), "-exist")
                if done.returncode != 0:
                    raise KernelSetError(f"ipset create {spec.name}: {done.stderr.strip()}")
            self.families.append(family)
        self.owner = True
        script = nft_table(self.policy)
        if script:
            self._nft(f"table inet {self.policy.nft_table}\ndelete table inet {self.policy.nft_table}\n")
            done = self._nft(script)
            if done.returncode != 0:
                raise KernelSetError(f"nft table {self.policy.nft_table}: {done.stderr.strip()[:300]}")
            self.table, self.pairs = True, self.policy.pair_sets
            self._made, self._stations = self._made + 1, None

    def remake_table(self) -> bool:
        """Make p2pwall's nft table anew, empty, from the current policy (a reload changed
        the LAN interfaces or the marks; a firewall reload removed it): True when it was
        made (the ledger then renders its entries into it).  The ipset lock sets stay."""
        if not self.owner:
            return False
        self.pending_nft = []  # the ledger renders everything again
        self._nft(f"table inet {self.policy.nft_table}\ndelete table inet {self.policy.nft_table}\n")
        self.table = self.pairs = False
        script = nft_table(self.policy)
        if not script:
            return False
        done = self._nft(script)
        if done.returncode != 0:
            self.failures += 1
            self.last_error = done.stderr.strip()[:200]
            emit(log, logging.ERROR, "kernel_set_error", set=self.policy.nft_table, error=self.last_error)
            return False
        self.table, self.pairs = True, self.policy.pair_sets
        self._made, self._stations = self._made + 1, None  # the stations too are written anew
        return True

    def sync_stations(self, table: dict[bytes, bytes]) -> None:
        """Make the nft ``stations`` sets hold exactly the pairs of ``table`` (address ->
        MAC: the neighbours the gateway resolved on the LAN interfaces), which key the
        per-host bound (:meth:`QueuePolicy.fairness`).  Called by the watch thread after
        each reading of the neighbour table; only the changes are written, the whole set
        again after a refusal or a remade table.  At most ``STATION_TABLE`` pairs."""
        if not (self.owner and self.table and self.policy.stations):
            return
        want = {(a, m) for a, m in table.items() if len(m) == 6 and valid_element(a)}
        if len(want) > STATION_TABLE:
            want = set(sorted(want)[:STATION_TABLE])
        made, have = self._made, self._stations
        element = lambda a, m: f"{{ {ip_text(a)} . {m.hex(':')} }}"  # noqa: E731
        name = lambda a: f"inet {self.policy.nft_table} stations{4 if len(a) == 4 else 6}"  # noqa: E731
        if have is not None:
            lines = [f"delete element {name(a)} {element(a, m)}" for a, m in have - want]
            lines += [f"add element {name(a)} {element(a, m)}" for a, m in want - have]
            if not lines:
                return
            done = self._nft("".join(line + "\n" for line in lines))
        if have is None or done.returncode != 0:  # the whole set again
            lines = [f"flush set inet {self.policy.nft_table} stations{f}" for f in (4, 6)]
            lines += [f"add element {name(a)} {element(a, m)}" for a, m in sorted(want)]
            done = self._nft("".join(line + "\n" for line in lines))
            if done.returncode != 0:
                self.failures += 1
                self.last_error = done.stderr.strip()[:200]
                emit(log, logging.WARNING, "kernel_set_error", set=f"{self.policy.nft_table} stations",
                     error=self.last_error)
                self._stations = None
                return
        self._stations = want if made == self._made else None

    def missing(self) -> list[str]:
        """What of the sets this process made the kernel no longer has (a firewall reload
        flushed the ruleset, an admin destroyed a set): named; [] when all is there."""
        if not self.owner:
            return []
        gone = []
        if self.table and self._nft(f"list table inet {self.policy.nft_table}\n").returncode != 0:
            gone.append(f"nft table inet {self.policy.nft_table}")
        for family in self.families:
            for spec in self.policy.sets(family):
                if self._ipset("list", "-n", spec.name).returncode != 0:
                    gone.append(f"ipset {spec.name}")
        return gone

    def attach(self, families=(4, 6)) -> None:
        """Use sets another process created (a worker beside the main process)."""
        self.families = list(families)
        self.table = bool(nft_table(self.policy))
        self.pairs = self.table and self.policy.pair_sets

    def add_pair(self, client: bytes, peer: bytes, seconds: float, note: str = "") -> bool:
        """Block ``peer`` for ``client`` alone (the nft pair set)."""
        if not self.pairs or len(client) != len(peer) or not valid_element(peer) or not valid_element(client):
            if self.pairs:
                self.refused += 1
            return False
        if not math.isfinite(seconds) or seconds <= 0:
            self.refused += 1
            return False
        family = 4 if len(peer) == 4 else 6
        self.pending_nft.append(("add", f"pairs{family}", f"{ip_text(client)} . {ip_text(peer)}",
                                 _timeout(seconds), comment(note) if note else ""))
        return True

    def remove_pair(self, client: bytes, peer: bytes) -> None:
        if self.pairs and len(client) == len(peer) and valid_element(peer) and valid_element(client):
            family = 4 if len(peer) == 4 else 6
            self.pending_nft.append(("del", f"pairs{family}", f"{ip_text(client)} . {ip_text(peer)}", 1, ""))

    @property
    def udp_lockers(self) -> frozenset:
        return self.policy.udp_lockers

    def add(self, kind: str, addr: bytes, seconds: float, note: str = "") -> bool:
        """Queue an add of ``addr`` to the ``kind`` set; False (and counted) when refused."""
        family = 4 if len(addr) == 4 else 6
        if kind == UDPLOCKS and not self.policy.udp_lockers:
            return False  # the table has no udplocks sets
        if family not in self.families or (kind in _NFT and not self.table):
            return False
        if not valid_element(addr) or not math.isfinite(seconds) or seconds <= 0:
            self.refused += 1
            return False
        if kind in _NFT:
            self.pending_nft.append(("add", f"{kind}{family}", ip_text(addr), _timeout(seconds),
                                     comment(note) if note else ""))
            return True
        name = self._names(family)[kind]
        text = f' comment "{comment(note)}"' if note else ""
        self.pending.append(f"add {name} {ip_text(addr)} timeout {_timeout(seconds)}{text} -exist")
        return True

    def remove(self, kind: str, addr: bytes) -> None:
        family = 4 if len(addr) == 4 else 6
        if family not in self.families or not valid_element(addr):
            return
        if kind == UDPLOCKS and not self.policy.udp_lockers:
            return
        if kind in _NFT:
            if self.table:
                self.pending_nft.append(("del", f"{kind}{family}", ip_text(addr), 1, ""))
        else:
            self.pending.append(f"del {self._names(family)[kind]} {ip_text(addr)} -exist")

    def _nft_lines(self, op: str, name: str, element: str, timeout: int, note: str = "",
                   fresh: bool = False) -> list[str]:
        table = f"inet {self.policy.nft_table} {name}"
        text = f' comment "{note}"' if note else ""
        if fresh and op == "add":  # fails if the element is there: then the batch goes the long way
            return [f"create element {table} {{ {element} timeout {timeout}s{text} }}"]
        # nft has no "add or refresh" nor "delete if present": add (a no-op when there),
        # delete, and add again with the new timeout, in one atomic batch
        lines = [f"add element {table} {{ {element} timeout 1s }}", f"delete element {table} {{ {element} }}"]
        if op == "add":
            lines.append(f"add element {table} {{ {element} timeout {timeout}s{text} }}")
        return lines

    def _flush_nft(self) -> None:
        batch, self.pending_nft = self.pending_nft, []
        if not batch or not self.table:
            return
        if len(batch) >= _FRESH_BATCH:  # a restore or a resync: most elements are new
            script = "".join(line + "\n" for item in batch for line in self._nft_lines(*item, fresh=True))
            if self._nft(script).returncode == 0:
                return
        self._write_nft(batch)

    def _write_nft(self, batch: list[tuple]) -> None:
        """One atomic batch; if the kernel refuses it, each half again, down to the bad
        elements, which are counted (the rest is written)."""
        done = self._nft("".join(line + "\n" for item in batch for line in self._nft_lines(*item)))
        if done.returncode == 0:
            return
        if len(batch) > 1:
            half = len(batch) // 2
            self._write_nft(batch[:half])
            self._write_nft(batch[half:])
            return
        self.failures += 1
        self.last_error = done.stderr.strip()[:200]
        emit(log, logging.WARNING, "kernel_set_error", set=f"{self.policy.nft_table} {batch[0][1]}",
             error=self.last_error)

    def _nft_elements(self, name: str) -> list[tuple[object, float, str]]:
        prefix = self.command[:-1]
        done = subprocess.run([*prefix, "nft", "-j", "list", "set", "inet", self.policy.nft_table, name],
                              capture_output=True, text=True)
        return nft_elements(done.stdout)

    def pair_members(self, family: int = 4) -> set[tuple[str, str]]:
        """(client, peer) pairs the kernel holds now (for tests and checks)."""
        return {(v[0], v[1]) for v, _, _ in self._nft_elements(f"pairs{family}") if isinstance(v, list) and len(v) == 2}

    def flush(self) -> None:
        """Write what is pending; a refused element is counted and the rest still written.
        (``ipset restore`` stops at its first bad line, and may not have applied the
        lines before it either: the batch is sent again without that line; adds and
        deletes are idempotent with ``-exist``.)"""
        self._flush_nft()
        batch, self.pending = self.pending, []
        for _ in range(len(batch) + 1):
            if not batch:
                return
            done = self._ipset("restore", "-exist", stdin="\n".join(batch) + "\n")
            if done.returncode == 0:
                return
            m = _LINE.search(done.stderr)
            self.failures += 1
            self.last_error = (m.group(2) if m else done.stderr.strip())[:200]
            emit(log, logging.WARNING, "kernel_set_error", error=self.last_error,
                 line=batch[int(m.group(1)) - 1] if m and 0 < int(m.group(1)) <= len(batch) else None)
            if m is None:
                return  # not a per-line error (ipset gone?): nothing to retry
            bad = int(m.group(1))
            if not 0 < bad <= len(batch):
                return
            batch = batch[:bad - 1] + batch[bad:]

    def resize(self, policy: QueuePolicy, live: dict[str, list[tuple[bytes, float]]]) -> None:
        """Take a new policy; ipset sets whose size changed are rebuilt beside the old ones
        with ``live`` (kind -> [(address, seconds left)]) and swapped in atomically.  (The
        nft peer sets have no size of their own: the peer table bounds them.)"""
        old = {(s.kind, s.family): s for s in self.policy.sets()}
        self.policy = policy
        if not self.owner:
            return
        for spec in policy.sets():
            before = old.get((spec.kind, spec.family))
            if before is not None and before.maxelem == spec.maxelem:
                continue
            if spec.family not in self.families:
                continue
            self._rebuild(spec, [(a, left) for a, left in live.get(spec.kind, [])
                                 if (len(a) == 4) == (spec.family == 4)])

    def _rebuild(self, spec: SetSpec, entries) -> None:
        tmp = SetSpec(spec.kind, spec.family, spec.name[:28] + "-r", spec.maxelem)
        self._ipset("destroy", tmp.name)
        lines = [" ".join(tmp.create_args())]
        lines += [f"add {tmp.name} {ip_text(a)} timeout {_timeout(left)} -exist"
                  for a, left in entries[:spec.maxelem] if valid_element(a)]
        lines.append(f"swap {tmp.name} {spec.name}")
        done = self._ipset("restore", "-exist", stdin="\n".join(lines) + "\n")
        if done.returncode != 0:
            self.failures += 1
            self.last_error = done.stderr.strip()[:200]
            emit(log, logging.WARNING, "kernel_set_error", set=spec.name, error=self.last_error)
        self._ipset("destroy", tmp.name)
        emit(log, logging.INFO, "kernel_set_resized", set=spec.name, maxelem=spec.maxelem, entries=len(entries))

    def leftovers(self) -> dict[str, list]:
        """What a crashed run on this queue left in the kernel, read before ``create``
        replaces it: {"peers"/"nolock"/"locks": [(address, seconds left, comment)],
        "pairs": [(client, peer, seconds left, comment)]}."""
        found: dict[str, list] = {"peers": [], "nolock": [], "locks": [], "pairs": []}
        for spec in self.policy.sets():
            found[spec.kind] += [(addr, float(left), note) for addr, left, note in self._list(spec.name) if left > 0]
        if nft_table(self.policy):
            for family in (4, 6):
                for kind in NFT_KINDS:
                    found[kind] += [(v, left, note) for v, left, note in self._nft_elements(f"{kind}{family}")
                                    if isinstance(v, str) and left > 0]
                if self.policy.pair_sets:
                    found["pairs"] += [(v[0], v[1], left, note) for v, left, note in self._nft_elements(f"pairs{family}")
                                       if isinstance(v, list) and len(v) == 2 and left > 0]
        return found

    def _list(self, name: str) -> list[tuple[str, int, str]]:
        """An ipset set's members as the kernel lists them: (address, seconds left, comment)."""
        done = self._ipset("list", name)
        out = []
        members = False
        for line in done.stdout.splitlines() if done.returncode == 0 else ():
            if line.startswith("Members:"):
                members = True
                continue
            m = re.match(r'(\S+)(?: timeout (\d+))?(?: comment "([^"]*)")?', line) if members else None
            if m and line.strip():
                out.append((m.group(1), int(m.group(2) or 0), m.group(3) or ""))
        return out

    def members(self, kind: str, family: int = 4) -> dict[str, int]:
        """What the kernel holds now: address -> seconds left (for tests and checks)."""
        if kind in _NFT:
            return {v: int(left) for v, left, _ in self._nft_elements(f"{kind}{family}") if isinstance(v, str)}
        return {addr: left for addr, left, _ in self._list(self._names(family)[kind])}

    def counters(self) -> dict:
        return {"kernel_set_failures": self.failures, "kernel_set_refused": self.refused}

    def destroy(self) -> None:
        if not self.owner:
            return
        if self.table:
            self._nft(f"delete table inet {self.policy.nft_table}\n")
            self.table = self.pairs = False
        for family in self.families:
            for name in (spec.name for spec in self.policy.sets(family)):
                for _ in range(20):  # the rules referencing it may take a moment to go
                    if (self._ipset("destroy", name).returncode == 0
                            or "does not exist" in self._ipset("list", "-n", name).stderr):
                        break
        self.families.clear()
