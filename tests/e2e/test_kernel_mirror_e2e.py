"""The kernel sets mirror the engine's tables exactly, on the real kernel: after learning,
expiry, eviction, unblock, a reload that widens the allowlist and the LAN, and a reload
that resizes the tables; and one bad element never cancels the rest of its batch."""

import secrets
import subprocess

import pytest

from p2pwall import Block, Lock, hookimpl
from p2pwall.config import from_dict
from p2pwall.engine import Engine
from p2pwall.kernelsets import KernelSets
from p2pwall.packet import FROM_LAN, ip_text, parse
from p2pwall.plugins import register
from p2pwall.policy import QueuePolicy
from p2pwall.testing import Clock, udp

from .conftest import _need_root

pytestmark = pytest.mark.e2e


class Teacher:
    """Blocks the destination of every datagram and locks its sender."""

    @hookimpl
    def p2pwall_detector_info(self):
        return {"wants": ["udp"]}

    @hookimpl
    def p2pwall_inspect(self, packet, context):
        return [Block(packet.dst, seconds=30), Lock(packet.src, seconds=20)]


@pytest.fixture
def ns():
    _need_root()
    name = f"p2pw{secrets.token_hex(3)}-sets"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def build(ns, config, clock):
    settings = from_dict(config)
    detectors = register([("teacher", Teacher(), "test")])
    detectors.configure(settings)
    policy = QueuePolicy.build(settings, detectors)
    kernel = KernelSets(policy, command=("ip", "netns", "exec", ns, "ipset"))
    kernel.create()
    engine = Engine(settings, detectors, clock=clock, kernel=kernel)
    return engine, kernel, detectors


def feed(engine, src, dst):
    p = parse(udp(src, dst, 1, 2, b"x"))
    p.direction = FROM_LAN
    engine.handle(p)
    engine.flush()


def assert_mirror(engine, kernel, clock):
    entries = list(engine.peers.full_entries(clock.now))
    lanwide = {ip_text(k) for k, _, e in entries if e.lanwide}
    pairs = {(ip_text(c), ip_text(k)) for k, _, e in entries if not e.lanwide for c in e.clients}
    locks = {ip_text(k) for k, *_ in engine.locks.entries(clock.now)}
    assert set(kernel.members("peers")) == lanwide
    assert kernel.pair_members() == pairs
    assert set(kernel.members("locks")) == locks
    assert kernel.members("nolock") == {}


CONFIG = {"network": {"lan_networks": ["192.0.2.0/24"], "lan_interfaces": ["lo"]},
          "peers": {"max": 100}, "lock": {"max": 10}}


def test_the_kernel_follows_every_change_of_the_tables(ns):
    clock = Clock()
    engine, kernel, detectors = build(ns, CONFIG, clock)
    try:
        for i in range(1, 11):
            feed(engine, f"192.0.2.{i}", f"203.0.113.{i}")  # one client each: client-scoped
        for i in range(1, 6):
            feed(engine, f"192.0.2.{i + 20}", f"203.0.113.{i}")  # a second client: LAN-wide
        assert_mirror(engine, kernel, clock)
        assert len(kernel.members("peers")) == 5 and len(kernel.pair_members()) == 5
        # eviction: 5 more clients than the lock table holds
        for i in range(11, 16):
            feed(engine, f"192.0.2.{i}", "203.0.113.200")
        assert len(engine.locks) == 10
        assert_mirror(engine, kernel, clock)
        # unblock
        assert engine.ledger.unblock(bytes([203, 0, 113, 1]))
        engine.flush()
        assert_mirror(engine, kernel, clock)
        # expiry: locks (20 s) go, peers (30 s) stay
        clock.advance(21)
        engine.tick()
        engine.flush()
        assert len(engine.locks) == 0 and len(engine.peers) == 10
        assert_mirror(engine, kernel, clock)
        # the client-scoped peer 203.0.113.8 is forgotten for its client, in the kernel too
        assert engine.ledger.unblock(bytes([203, 0, 113, 8]))
        engine.flush()
        assert_mirror(engine, kernel, clock)
        # reload: 203.0.113.2 is now allowlisted, 203.0.113.3 now inside the LAN
        wider = dict(CONFIG, network={"lan_networks": ["192.0.2.0/24", "203.0.113.3/32"],
                                      "allow": ["203.0.113.2"], "lan_interfaces": ["lo"]})
        settings = from_dict(wider)
        engine.reconfigure(settings, detectors)
        engine.flush()
        assert not engine.peers.live(bytes([203, 0, 113, 2]), clock.now)
        assert not engine.peers.live(bytes([203, 0, 113, 3]), clock.now)
        assert_mirror(engine, kernel, clock)
        # reload with bigger tables: the lock set is rebuilt with the new size, entries
        # kept; the nft peer sets have no size of their own (the peer table bounds them)
        for i in range(1, 4):
            feed(engine, f"192.0.2.{i + 40}", f"203.0.113.{i + 210}")
        bigger = from_dict(dict(wider, peers={"max": 5000}, lock={"max": 700}))
        engine.reconfigure(bigger, detectors)
        kernel.resize(QueuePolicy.build(bigger, detectors), engine.ledger.live_entries())
        listing = subprocess.run(["ip", "netns", "exec", ns, "ipset", "list", kernel.policy.set_names(4)["locks"]],
                                 capture_output=True, text=True).stdout
        assert "maxelem 700" in listing
        assert len(kernel.members("locks")) == 3
        assert_mirror(engine, kernel, clock)
        assert kernel.failures == 0
    finally:
        kernel.destroy()


def test_one_bad_element_does_not_cancel_its_batch(ns):
    clock = Clock()
    engine, kernel, _ = build(ns, CONFIG, clock)
    try:
        name = kernel.policy.set_names(4)["locks"]  # an ipset batch
        kernel.pending += [f"add {name} 192.0.2.7 timeout 60 -exist",
                           f"add {name} 0.0.0.0 timeout 60 -exist",  # refused by the kernel
                           f"add {name} 192.0.2.8 timeout 60 -exist",
                           f"add {name} 2001:db8::1 timeout 60 -exist",  # wrong family
                           f"add {name} 192.0.2.9 timeout 60 -exist"]
        # an nft batch (all or nothing in the kernel: sent again element by element)
        kernel.pending_nft += [("add", "peers4", "203.0.113.7", 60, ""), ("add", "peers4", "2001:db8::1", 60, ""),
                               ("add", "peers4", "203.0.113.8", 60, "x|y"), ("add", "peers4", "203.0.113.300", 60, ""),
                               ("add", "peers4", "203.0.113.9", 60, "")]
        kernel.flush()
        assert set(kernel.members("locks")) == {"192.0.2.7", "192.0.2.8", "192.0.2.9"}
        assert set(kernel.members("peers")) == {"203.0.113.7", "203.0.113.8", "203.0.113.9"}
        assert kernel.failures == 4 and engine.all_counters()["kernel_set_failures"] == 4
        # and the engine never sends such an element at all: a lock on 0.0.0.0 is refused
        assert not kernel.add("locks", bytes(4), 10) and kernel.refused == 1
    finally:
        kernel.destroy()


def test_the_ipset_peer_sets_of_an_older_version_are_removed_at_start(ns):
    """Earlier versions kept peers in ipset sets; their leftovers must not stay behind."""
    for name in ("p2pwall-peers0", "p2pwall-nolock0-6"):
        family = "inet6" if name.endswith("-6") else "inet"
        subprocess.run(["ip", "netns", "exec", ns, "ipset", "create", name, "hash:ip", "family", family], check=True)
    clock = Clock()
    _, kernel, _ = build(ns, CONFIG, clock)
    try:
        names = subprocess.run(["ip", "netns", "exec", ns, "ipset", "list", "-n"], capture_output=True,
                               text=True).stdout.split()
        assert sorted(names) == ["p2pwall-locks0", "p2pwall-locks0-6"]
    finally:
        kernel.destroy()


def test_a_big_batch_goes_in_whole_and_one_bad_element_in_it_costs_only_itself(ns):
    """A restore or a resync writes hundreds of elements at once: new ones in one line
    each; when some are there already the batch goes the long way (timeouts renewed);
    and one element the kernel refuses is found by halving, the rest still written."""
    clock = Clock()
    _, kernel, _ = build(ns, CONFIG, clock)
    try:
        scripts = []
        send = kernel._nft
        kernel._nft = lambda script: scripts.append(script) or send(script)
        addrs = [f"203.0.{113 if i < 250 else 114}.{i % 250 + 1}" for i in range(400)]
        kernel.pending_nft += [("add", "peers4", a, 60, "bittorrent|own|x") for a in addrs]
        kernel.flush()
        assert set(kernel.members("peers")) == set(addrs) and kernel.failures == 0
        assert len(scripts) == 1 and scripts[0].count("\n") == 400  # one line each
        kernel.pending_nft += [("add", "peers4", a, 3000, "") for a in addrs]  # all there: renewed
        kernel.flush()
        assert min(kernel.members("peers").values()) > 2000 and kernel.failures == 0
        assert len(scripts) == 3 and scripts[2].count("\n") == 1200  # the long way, at once
        more = [f"198.51.100.{i}" for i in range(1, 255)] + [f"198.51.101.{i}" for i in range(1, 100)]
        batch = [("add", "peers4", a, 60, "") for a in more]
        batch.insert(200, ("add", "peers4", "2001:db8::7", 60, ""))  # the wrong family: refused
        kernel.pending_nft += batch
        kernel.flush()
        assert set(more) <= set(kernel.members("peers")) and kernel.failures == 1
        assert len(scripts) < 3 + 2 + 2 * 10  # halving, not one nft per element
    finally:
        kernel.destroy()
