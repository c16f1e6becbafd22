"""Real aMule daemons (Debian's ``amule-daemon``) in test namespaces: a closed Kad network
of outside nodes, one of them sharing a file, and a leecher on the LAN that finds its
source through Kad.

Each node gets a configuration directory of its own: ``amule.conf`` with aMule's defaults
but for what a closed lab needs (no eD2k servers, no LAN/IP filters, no UPnP, no update
URLs, the External Connection on loopback for ``amulecmd``, a 4 MB/s uplink so a control
run shows the file flowing within seconds); ``preferences.dat`` with a user hash and
``preferencesKad.dat`` with
a Kad ID chosen here; and ``nodes.dat`` naming the other nodes with their IDs and Kad
version, so every Kad packet is obfuscated from the first (aMule encrypts to a contact
whose ID it knows) and no node has to bootstrap in the clear.  Obfuscation stays at
aMule's defaults (supported and requested, 0-254 bytes of padding).

File formats as aMule reads them (``kademlia/kademlia/Prefs.cpp``,
``kademlia/routing/RoutingZone.cpp``): IDs as four little-endian 32-bit words, addresses
as host-order 32-bit numbers.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

KAD_VERSION = 9  # aMule 2.3's Kademlia version: above 6, so contacts are sent obfuscated
EC_PASSWORD = "p2pwall-lab"


def have_amule() -> bool:
    return all(shutil.which(p) for p in ("amuled", "amulecmd", "alcc"))


def uint128(be: bytes) -> bytes:
    """A 128-bit value given big-endian (a hash as aMule prints it) as aMule's files hold
    it: four 32-bit words, most significant first, each little-endian."""
    return b"".join(be[i:i + 4][::-1] for i in range(0, 16, 4))


def user_hash() -> bytes:
    """A user hash with eMule's marker bytes (hash[5] = 14, hash[14] = 111)."""
    h = bytearray(secrets.token_bytes(16))
    h[5], h[14] = 14, 111
    return bytes(h)


def _tag(kind: int, name: int, value: int) -> bytes:
    fmt = {0x03: "<I", 0x08: "<H", 0x09: "<B"}[kind]
    return struct.pack("<BHB", kind, 1, name) + struct.pack(fmt, value)


def source_index(file_hash: bytes, source: "Node", lifetime: float = 3600) -> bytes:
    """A ``src_index.dat`` (version 2) holding ``source`` as an open source of the file, as
    a Kad node stores a source a client published to it (``Indexed.cpp``): type 1 (open),
    its address, TCP and Kad ports, and its connect options (obfuscation supported and
    requested, aMule's defaults)."""
    until = int(time.time() + lifetime)
    tags = [_tag(0x09, 0xFF, 1),                                            # TAG_SOURCETYPE
            _tag(0x03, 0xFE, int(ipaddress.IPv4Address(source.address))),  # TAG_SOURCEIP
            _tag(0x08, 0xFD, source.tcp),                                   # TAG_SOURCEPORT
            _tag(0x08, 0xFC, source.udp),                                   # TAG_SOURCEUPORT
            _tag(0x09, 0xF3, 0x03)]                                         # TAG_ENCRYPTION
    entry = struct.pack("<IB", until, len(tags)) + b"".join(tags)
    return (struct.pack("<III", 2, until, 1) + uint128(file_hash) + struct.pack("<I", 1) +
            uint128(source.user_hash) + struct.pack("<I", 1) + entry)


def ed2k_link(path: Path) -> str:
    """The file's ed2k link, as aMule's own ``alcc`` computes it."""
    done = subprocess.run(["alcc", str(path)], capture_output=True, text=True, check=True)
    link = done.stdout.strip().splitlines()[-1]
    if not link.startswith("ed2k://|file|"):
        raise RuntimeError(f"alcc gave no link for {path}: {done.stdout!r} {done.stderr!r}")
    return link


@dataclass
class Node:
    name: str
    ns: str
    address: str
    tcp: int = 4662
    udp: int = 4672
    ec: int = 4712
    kad_id: bytes = field(default_factory=lambda: secrets.token_bytes(16))  # big-endian
    user_hash: bytes = field(default_factory=user_hash)
    dir: Path | None = None
    proc: subprocess.Popen | None = None

    def contact(self) -> bytes:
        """This node as a version-2 nodes.dat entry (no UDP key, not verified)."""
        ip = int(ipaddress.IPv4Address(self.address))
        return uint128(self.kad_id) + struct.pack("<IHHBIIB", ip, self.udp, self.tcp, KAD_VERSION, 0, 0, 0)


def _conf(node: Node, incoming: Path, temp: Path) -> str:
    md5 = hashlib.md5(EC_PASSWORD.encode()).hexdigest()
    return f"""[eMule]
Nick=p2pwall-lab-{node.name}
Address={node.address}
Port={node.tcp}
UDPPort={node.udp}
UDPEnable=1
MaxUpload=4000
UploadCapacity=4000
SlotAllocation=1000
ConnectToKad=1
ConnectToED2K=0
Autoconnect=1
Reconnect=1
AddServersFromServer=0
AddServersFromClient=0
UPnPEnabled=0
IncomingDir={incoming}
TempDir={temp}
FilterLanIPs=0
ParanoidFiltering=0
IPFilterAutoLoad=0
IPFilterURL=
KadNodesUrl=
Ed2kServersUrl=
NewVersionCheck=0
[ExternalConnect]
AcceptExternalConnections=1
ECAddress=127.0.0.1
ECPort={node.ec}
ECPassword={md5}
IpFilterClients=0
IpFilterServers=0
UseSecIdent=1
"""


class KadLab:
    """Nodes on given (namespace, address) pairs: ``add``, then ``prepare`` (their files)
    and ``run``; every process is started through ``net.spawn``, so ``net.close()`` ends
    them even when a test fails."""

    def __init__(self, net, tag: str):
        self.net, self.tag = net, tag
        self.nodes: list[Node] = []

    def add(self, name: str, ns: str, address: str) -> Node:
        node = Node(name, ns, address, ec=4712 + len(self.nodes))
        node.dir = self.net.dir / f"amule-{self.tag}-{name}"
        self.nodes.append(node)
        return node

    def prepare(self, node: Node, share: Path | None = None, contacts: list[Node] | None = None,
                stores: tuple[bytes, Node] | None = None) -> None:
        """Write ``node``'s files: sharing ``share``, knowing ``contacts`` (default: every
        other node), holding ``stores`` = (file hash, source) in its Kad source index."""
        d = node.dir
        incoming, temp = d / "Incoming", d / "Temp"
        incoming.mkdir(parents=True, exist_ok=True)
        temp.mkdir(exist_ok=True)
        (d / "amule.conf").write_text(_conf(node, incoming, temp))
        ip = int(ipaddress.IPv4Address(node.address))
        (d / "preferencesKad.dat").write_bytes(struct.pack("<IH", ip, 0) + uint128(node.kad_id) + b"\x00")
        (d / "preferences.dat").write_bytes(b"\x14" + node.user_hash)
        if stores is not None:
            (d / "src_index.dat").write_bytes(source_index(*stores))
        others = [n for n in (contacts if contacts is not None else self.nodes) if n is not node]
        (d / "nodes.dat").write_bytes(struct.pack("<III", 0, 2, len(others)) +
                                      b"".join(n.contact() for n in others))
        if share is not None:
            shutil.copy(share, incoming / share.name)

    def run(self, node: Node, ready_timeout: float = 30.0) -> None:
        from . import wait_for_log

        log = f"amule-{self.tag}-{node.name}.log"
        node.proc = self.net.spawn(node.ns, "stdbuf", "-oL", "amuled", "-c", str(node.dir) + "/", "-o", log=log)
        wait_for_log(self.net.dir / log, node.proc, "starting timer", ready_timeout)

    def cmd(self, node: Node, command: str, timeout: float = 20) -> str:
        done = self.net.exec(node.ns, "amulecmd", "-h", "127.0.0.1", "-p", str(node.ec), "-P", EC_PASSWORD,
                             "-c", command, check=False, timeout=timeout)
        return done.stdout

    def downloads(self, node: Node) -> str:
        """``amulecmd``'s download list: a line per file, progress and sources."""
        return self.cmd(node, "show dl")

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(5)
