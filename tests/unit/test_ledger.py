"""The ledger: one record type in and out, one owner of the tables, every change told to
every mirror; the state file, kernel comments and the cluster's wire all speak records."""

import time

import pytest

from p2pwall import DetectorInfo, hookimpl, plugins
from p2pwall.clusterwire import Change, decode, encode
from p2pwall.config import from_dict, restart_only
from p2pwall.records import BLOCK, LOCK, NAMED, OPERATOR, OWN, REPLY, UNBLOCK, UNLOCK, Record, from_kernel
from p2pwall.packet import ip_bytes
from p2pwall.testing import DetectorHarness, RecordingMirror, tcp, udp

LAN, LAN2, PEER = "192.168.1.5", "192.168.1.6", "203.0.113.9"


class Teacher:
    """Blocks the destination of a datagram starting with BLOCK, locks its sender on LOCK."""

    @hookimpl
    def p2pwall_detector_info(self):
        return DetectorInfo(wants=["udp"], udp_screen=b"BLOCK|LOCK")

    @hookimpl
    def p2pwall_inspect(self, packet, context):
        from p2pwall import Block, Drop, Lock

        if packet.data.startswith(b"BLOCK"):
            return [Block(packet.dst, reason="taught"), Drop()]
        return [Lock(packet.src, reason="taught")]


def harness(**config):
    return DetectorHarness(Teacher(), config=config, names=["teacher"])


def test_every_change_reaches_every_mirror_and_the_mirror_holds_what_the_ledger_holds():
    h = harness()
    other = RecordingMirror()
    h.engine.ledger.mirrors.append(other)
    h.feed(udp(LAN, PEER, 1, 2, b"BLOCK"))
    assert set(h.mirror.holds["pair"]) == {(ip_bytes(LAN), ip_bytes(PEER))}
    h.feed(udp(LAN2, PEER, 1, 2, b"BLOCK"))  # a second client: LAN-wide, the pairs it grew from go
    assert set(h.mirror.holds["peers"]) == {ip_bytes(PEER)} and not h.mirror.holds["pair"]
    h.feed(udp(LAN, "198.51.100.7", 1, 2, b"LOCK"))
    assert set(h.mirror.holds["locks"]) == {ip_bytes(LAN)}
    assert h.engine.ledger.unblock(ip_bytes(PEER), "by hand")
    removed = [r for op, where, r in h.mirror.changes if op == "remove" and where == "peers"]
    assert removed[-1].op == UNBLOCK and removed[-1].local
    h.advance(200)  # the lock runs out: an expiry, told as one
    assert not h.mirror.holds["locks"] and not h.mirror.holds["peers"]
    assert [c[:2] for c in other.changes] == [c[:2] for c in h.mirror.changes]


def test_records_rebuild_the_ledger_exactly():
    h = harness()
    h.feed(udp(LAN, PEER, 1, 2, b"BLOCK"))
    h.feed(udp(LAN, "203.0.113.10", 1, 2, b"BLOCK"))
    h.feed(udp(LAN2, "203.0.113.10", 1, 2, b"BLOCK"))
    h.feed(udp(LAN, "198.51.100.7", 1, 2, b"LOCK"))
    records = list(h.engine.ledger.records())
    fresh = harness()
    assert fresh.engine.ledger.restore(records) == 3  # two peers, one lock
    for addr in (PEER, "203.0.113.10"):
        a, b = h.peer(addr), fresh.peer(addr)
        assert (a.lanwide, set(a.clients), a.kind, a.detector) == (b.lanwide, set(b.clients), b.kind, b.detector)
    assert fresh.locked(LAN)
    assert fresh.mirror.holds["peers"].keys() == h.mirror.holds["peers"].keys()


def test_restored_and_remote_records_are_checked_like_live_ones():
    h = harness()
    ledger = h.engine.ledger
    assert not ledger.apply(Record(BLOCK, ip_bytes(LAN2), None, 60, "x", kind=OWN, lanwide=True))  # a LAN host
    assert not ledger.apply(Record(BLOCK, ip_bytes("0.0.0.0"), None, 60, "x", lanwide=True))
    assert not ledger.apply(Record(BLOCK, ip_bytes(PEER), None, 1e12, "x", lanwide=True))  # beyond a year
    assert not ledger.apply(Record(BLOCK, ip_bytes(PEER), ip_bytes("198.51.100.1"), 60, "x"))  # client outside
    assert not ledger.apply(Record(LOCK, ip_bytes(PEER), None, 60, "x"))  # not a LAN host
    assert h.counter("block_refused") == 4 and h.counter("lock_refused") == 1
    assert ledger.apply(Record(BLOCK, ip_bytes(PEER), ip_bytes(LAN), 60, "x", origin="gw:other"))
    assert not h.peer(PEER).lanwide


@pytest.mark.parametrize("record", [
    Record(BLOCK, ip_bytes(PEER), ip_bytes(LAN), 60.0, "bt", "handshake", REPLY, True, b"\x01\x02"),
    Record(BLOCK, ip_bytes("2001:db8::9"), None, 5.5, "ft", "", NAMED, False),
    Record(LOCK, ip_bytes(LAN), None, 120.0, "ft", "SYN to blocked peer", note=b"n"),
    Record(UNBLOCK, ip_bytes(PEER), None, 0.0, "operator", "unblocked by an operator"),
])
def test_one_document_shape_for_the_state_file_and_the_cluster(record):
    wall = 1_700_000_000.0
    back = Record.from_doc(record.to_doc(wall), wall)
    assert back == record
    change = decode(encode(Change(record, "gw1", wall, 7), b"key", wall), b"key", wall)
    assert change.record == record.but(origin="gw:gw1") and (change.gw, change.seq) == ("gw1", 7)


def test_kernel_comments_bring_entries_back_with_their_evidence():
    rec = Record(BLOCK, ip_bytes(PEER), None, 30, "bt", "handshake", REPLY, True)
    back = from_kernel("peers", PEER, 30.0, rec.comment())
    assert (back.detector, back.kind, back.reason, back.lanwide) == ("bt", REPLY, "handshake", True)
    pair = from_kernel("pair", PEER, 30.0, "ft|named|x", client=LAN)
    assert pair.client == ip_bytes(LAN) and pair.kind == NAMED and not pair.lanwide
    lock = from_kernel("locks", LAN, 30.0, Record(LOCK, ip_bytes(LAN), None, 30, "ft", "r").comment())
    assert lock.op == LOCK and lock.detector == "ft" and lock.reason == "r"


def test_hostile_cluster_documents_are_refused_not_raised():
    for text in ("[" * 4000, '{"op": "block"}', '{"op": "block", "addr": "203.0.113.9", "until": 1e300}',
                 '{"op": "lock", "addr": "x", "until": 1}', "not json", 7):
        with pytest.raises(ValueError):
            decode(text, None, time.time())


def test_monitor_is_a_dry_run_in_the_counters():
    h = harness()
    h.engine.monitor = True
    assert not h.feed(udp(LAN, PEER, 1, 2, b"BLOCK")).drop
    counters = h.engine.all_counters()
    assert counters["would_drop"] == 1 and counters["dropped"] == 0 and counters["accepted"] == 1


def test_restart_only_is_a_column_of_the_schema_and_the_readme_lists_exactly_those():
    import re
    from pathlib import Path

    keys = set(restart_only().values())
    assert "[queue] number" in keys and "[network] lan_interfaces" not in keys and "[queue] first_mark" not in keys
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    listed = set(re.findall(r"`(\[[a-z]+\] [a-z_]+)`", readme[readme.index("<!-- restart-only -->"):
                                                           readme.index("<!-- /restart-only -->")]))
    assert listed == keys


def test_events_wait_for_the_verdict():
    seen = []

    class Slow:
        @hookimpl
        def p2pwall_event(self, event):
            seen.append(event.kind)

    h = DetectorHarness(Teacher(), Slow(), names=["teacher", "slow"])
    packet = udp(LAN, PEER, 1, 2, b"BLOCK")
    from p2pwall.packet import FROM_LAN, parse

    p = parse(packet)
    p.direction = FROM_LAN
    assert h.engine.handle(p).drop and seen == []  # the verdict is given with no observer called
    h.engine.flush()
    assert seen == ["peer_blocked"]


def test_an_observer_is_a_plain_plugin_and_unhonoured_hookimpl_options_are_refused():
    class Observer:
        @hookimpl
        def p2pwall_event(self, event):
            pass

    found = plugins.register([("obs", Observer(), "test")])
    found.configure(from_dict({}))
    assert found.by_name["obs"].info.observer and found.wants() == set()

    class Ordered(Teacher):
        @hookimpl(tryfirst=True)
        def p2pwall_inspect(self, packet, context):
            return None

    with pytest.raises(plugins.PluginError, match="tryfirst"):
        plugins.register([("ordered", Ordered(), "test")])


def test_first_payload_sizes_alone_narrow_the_kernel_and_the_dispatch():
    calls = []

    class Shape:
        @hookimpl
        def p2pwall_detector_info(self):
            return DetectorInfo(wants=["tcp_payload"], tcp_first_sizes=(96, 608))

        @hookimpl
        def p2pwall_inspect(self, packet, context):
            calls.append(len(packet.data))

    class Words:
        @hookimpl
        def p2pwall_detector_info(self):
            return DetectorInfo(wants=["tcp_payload"], tcp_strings=[b"HELLO"])

        @hookimpl
        def p2pwall_inspect(self, packet, context):
            calls.append(packet.data[:5])

    h = DetectorHarness(Shape(), names=["shape"])
    assert h.detectors.tcp_strings() == []  # not None: the kernel queues only the sizes
    h.feed(tcp(LAN, PEER, 4000, 6881, b"x" * 200))
    h.feed(tcp(LAN, PEER, 4000, 6881, b"x" * 50))
    h.feed(tcp(LAN, PEER, 4000, 6881, b"x" * 200, seq=5000), first=False)  # later, not continuing the 50
    assert calls == [200]
    calls.clear()
    h = DetectorHarness(Shape(), Words(), names=["shape", "words"])
    h.feed(tcp(LAN, PEER, 4000, 6881, b"HELLO" + b"x" * 20))  # the words' packet is not the shape's
    assert calls == [b"HELLO"]


def test_the_harness_replays_a_capture_through_its_detectors():
    from pathlib import Path

    from p2pwall_plugins.bittorrent import BitTorrentDetector

    h = DetectorHarness(BitTorrentDetector(), names=["bittorrent"])
    report = h.replay(str(Path(__file__).parents[1] / "captures" / "bittorrent.pcap"))
    assert report["packets"] > 0 and any(f["detector"] == "bittorrent" for f in report["flows"])


def test_readme_tables_name_what_the_code_has():
    import re
    from pathlib import Path

    from p2pwall.cli import cli

    root = Path(__file__).parents[2]
    readme = (root / "README.md").read_text()
    detectors = readme[readme.index("## Detectors"):readme.index("## Command line")]
    rows = set(re.findall(r"^\| `([a-z]+)` \(built in\)", detectors, re.M))
    pyproject = (root / "pyproject.toml").read_text()
    section = pyproject[pyproject.index('"p2pwall.detectors"]'):]
    built_in = set(re.findall(r'^(\w+) = "p2pwall_plugins\.', section[:section.index("\n\n")], re.M))
    assert rows == built_in
    commands = readme[readme.index("## Command line"):readme.index("Exit codes:")]
    named = set(re.findall(r"`p2pwall ([a-z-]+)", commands)) | set(re.findall(r"`(unblock|unlock) ADDR`", commands))
    assert named == set(cli.commands)


class FakeRedis:
    """What Cluster's writer needs of a redis client: a pipeline of set/delete/xadd."""

    def __init__(self):
        self.keys, self.stream = {}, []

    def pipeline(self, transaction=False):
        return self

    def set(self, key, value, px=None):
        self.keys[key] = value

    def delete(self, key):
        self.keys.pop(key, None)

    def xadd(self, stream, fields, maxlen=None, approximate=True):
        self.stream.append(fields["m"])

    def scan_iter(self, match="", count=1000):
        prefix = match.rstrip("*")
        return [k for k in list(self.keys) if k.startswith(prefix)]

    def execute(self):
        pass

    # what a resync reads (stream ids are "<n>-0", n from 1)
    def xrevrange(self, stream, count=1):
        return [(f"{len(self.stream)}-0", {"m": self.stream[-1]})] if self.stream else []

    def xrange(self, stream, min="-", max="+", count=1000):
        low = 1 if min == "-" else int(min.lstrip("(").split("-")[0]) + (1 if min.startswith("(") else 0)
        high = len(self.stream) if max == "+" else int(max.split("-")[0])
        return [(f"{n}-0", {"m": self.stream[n - 1]}) for n in range(low, high + 1)][:count]

    def mget(self, keys):
        return [self.keys.get(k) for k in keys]


def cluster_pair():
    from p2pwall.cluster import Cluster

    settings = from_dict({"cluster": {"url": "redis://127.0.0.1:1/0", "name": "gw1"}})
    return Cluster(settings, client=FakeRedis())


def test_the_cluster_link_publishes_this_gateways_live_changes_only():
    link = cluster_pair()
    link.key = b"k"
    h = harness()
    h.engine.ledger.mirrors.append(link)
    h.feed(udp(LAN, PEER, 1, 2, b"BLOCK"))  # a live, client-scoped block
    h.engine.ledger.restore([Record(BLOCK, ip_bytes("203.0.113.20"), None, 60, "x", lanwide=True, origin="restored")])
    h.engine.ledger.apply(Record(BLOCK, ip_bytes("203.0.113.21"), None, 60, "x", lanwide=True, origin="gw:gw2"))
    h.feed(udp(LAN, "198.51.100.7", 1, 2, b"LOCK"))
    assert h.engine.ledger.unblock(ip_bytes(PEER), "operator")
    link._flush_once()
    sent = [c for c in (decode(m, b"k") for m in link.client.stream) if isinstance(c, Change)]
    assert [(c.record.op, c.record.address, c.record.client, c.gw) for c in sent] == [
        ("block", ip_bytes(PEER), ip_bytes(LAN), "gw1"), ("lock", ip_bytes(LAN), None, "gw1"),
        ("unblock", ip_bytes(PEER), None, "gw1")]
    assert not any(c.record.address in (ip_bytes("203.0.113.20"), ip_bytes("203.0.113.21")) for c in sent)


def test_changes_from_another_gateway_go_through_the_ledgers_checks():
    link = cluster_pair()
    link.key = b"k"
    h = harness()
    wall = time.time()
    for seq, record in enumerate((Record(BLOCK, ip_bytes(PEER), ip_bytes(LAN), 60, "ft", kind=OWN),
                                  Record(BLOCK, ip_bytes(LAN2), None, 60, "ft", lanwide=True),  # a LAN host: refused
                                  Record(LOCK, ip_bytes(LAN2), None, 60, "ft")), 1):
        link._take(encode(Change(record, "gw2", wall, seq), b"k", wall), live=True)
    link._take(encode(Change(Record(LOCK, ip_bytes("192.168.1.9"), None, 60, "ft"), "gw1", wall, 9), b"k", wall),
               live=True)  # ours
    assert link.apply_pending(h.engine.ledger) == 3
    assert h.blocked(PEER) and not h.peer(PEER).lanwide and h.locked(LAN2) and not h.blocked(LAN2)
    assert link.tally["applied"] == 2 and link.tally["refused"] == 1


def test_refused_changes_are_counted_by_the_gateway_they_claim():
    from p2pwall.cluster import MAX_REJECTED_NAMES

    link = cluster_pair()
    wall = time.time()
    good = encode(Change(Record(BLOCK, ip_bytes(PEER), ip_bytes(LAN), 60, "ft"), "gw2", wall, 1), None, wall)
    link.key = b"k"  # from now on only signed changes are taken
    link._take(good, live=True)  # unsigned, claiming gw2
    link._take("[" * 4000, live=True)  # garbage naming nobody
    link._take('{"gw": "gw3", "op": "block", "addr": "not an address"}', live=True)
    for i in range(MAX_REJECTED_NAMES + 5):  # a flood of invented names stays bounded
        link._take('{"gw": "fake%d", "op": "lock"}' % i, live=True)
    by = link.status()["rejected_by_gateway"]
    assert by["gw2"] == 1 and by["(none)"] == 1 and by["gw3"] == 1
    assert len(by) <= MAX_REJECTED_NAMES + 1 and by["(other)"] >= 5
    assert link.tally["rejected"] == 3 + MAX_REJECTED_NAMES + 5 and not link.inbox
    from p2pwall.metrics import _cluster_lines

    assert 'p2pwall_cluster_rejected_total{gateway="gw2"} 1' in _cluster_lines(link.status())


def _signed(record, seq, wall, gw="gw2"):
    return encode(Change(record, gw, wall, seq), b"k", wall)


def test_a_replayed_or_older_change_is_refused_and_counted():
    link = cluster_pair()
    link.key = b"k"
    wall = time.time()
    block = _signed(Record(BLOCK, ip_bytes(PEER), None, 60, "ft", lanwide=True), 5, wall)
    assert link._take(block, live=True)
    assert not link._take(block, live=True)  # the same change again
    assert not link._take(_signed(Record(LOCK, ip_bytes(LAN), None, 60, "ft"), 4, wall), live=True)  # older
    assert link._take(_signed(Record(LOCK, ip_bytes(LAN), None, 60, "ft"), 6, wall), live=True)
    assert link._take(_signed(Record(LOCK, ip_bytes(LAN), None, 60, "ft"), 1, wall, gw="gw3"), live=True)  # its own
    assert link.tally["replayed"] == 2 and link.status()["rejected_by_gateway"]["gw2"] == 2
    assert len(link.inbox) == 3


def test_unsigned_changes_never_widen_scope():
    """insecure = true: only client-scoped blocks on own or named evidence are taken."""
    wall = time.time()
    ok = Record(BLOCK, ip_bytes(PEER), ip_bytes(LAN), 60, "ft")
    assert decode(encode(Change(ok, "gw2", wall, 1), None, wall), None, wall).record.client == ip_bytes(LAN)
    for bad in (ok.but(lanwide=True, client=None), ok.but(kind=REPLY), ok.but(kind=OPERATOR),
                Record(LOCK, ip_bytes(LAN), None, 60, "ft"), Record(UNBLOCK, ip_bytes(PEER)),
                Record(UNLOCK, ip_bytes(LAN))):
        with pytest.raises(ValueError, match="unsigned"):
            decode(encode(Change(bad, "gw2", wall, 1), None, wall), None, wall)


def test_a_resync_reads_back_what_was_undone_and_refuses_keys_set_again():
    """Redis holds a key set again with a captured block after an unblock: a gateway that
    starts (knowing nothing) reads the stream back first and refuses it."""
    link = cluster_pair()
    link.key = b"k"
    wall = time.time()
    block = _signed(Record(BLOCK, ip_bytes(PEER), None, 600, "ft", lanwide=True), 10, wall - 5)
    from p2pwall.clusterwire import Served, encode_served

    link.client.stream += [encode_served(Served("gw2", ("10.2.0.0/16",), 9, wall - 6), b"k"), block,
                           _signed(Record(UNBLOCK, ip_bytes(PEER), None, 0, "operator"), 11, wall - 2)]
    link.client.keys[f"p2pwall:peers:{PEER}"] = block  # set again by whoever can write to Redis
    link.client.keys[f"p2pwall:locks:{LAN}"] = _signed(Record(LOCK, ip_bytes(LAN), None, 60, "ft"), 12, wall)
    link._sync()
    assert [c.record.op for c in link.inbox] == ["lock"]
    assert link.tally["cancelled"] == 1 and link.last_seq["gw2"] == 12
    assert link.served == {"gw2": ("10.2.0.0/16",)}  # what it serves, read back too
    assert not link._take(block, live=True)  # and the captured block replayed into the stream: refused
    # a change from a gateway the stream no longer mentions, learned before the stream's oldest: refused
    assert link.horizon == 0.001  # FakeRedis's first id, "1-0": 1 ms after the epoch
    link.horizon = wall - 100
    ancient = _signed(Record(BLOCK, ip_bytes("203.0.113.77"), None, 600, "ft", lanwide=True), 1, wall - 3600, gw="gw9")
    assert not link._take(ancient, live=True) and link.tally["replayed"] == 2


def test_an_unblock_never_removes_what_was_learned_after_it():
    h = harness()
    ledger = h.engine.ledger
    h.feed(udp(LAN, PEER, 1, 2, b"BLOCK"))
    issued = h.clock.now - 5  # an unblock issued before this evidence, arriving now
    assert not ledger.apply(Record(UNBLOCK, ip_bytes(PEER), None, 0, "operator", origin="gw:gw2"), before=issued)
    assert h.blocked(PEER) and ledger.counters["unblock_superseded"] == 1
    assert ledger.apply(Record(UNBLOCK, ip_bytes(PEER), None, 0, "operator", origin="gw:gw2"), before=h.clock.now + 2)
    assert not h.blocked(PEER)
    h.feed(udp(LAN, "198.51.100.7", 1, 2, b"LOCK"))
    assert not ledger.apply(Record(UNLOCK, ip_bytes(LAN), None, 0, "operator"), before=h.clock.now - 5)
    assert h.locked(LAN)
    assert ledger.apply(Record(UNLOCK, ip_bytes(LAN), None, 0, "operator"), before=h.clock.now + 1)


def test_published_sequence_numbers_only_grow():
    link = cluster_pair()
    link.key = b"k"
    for i in range(50):
        link.publish(Record(BLOCK, ip_bytes(f"203.0.113.{i + 1}"), ip_bytes(LAN), 60, "ft"))
    link._flush_once()
    seqs = [decode(m, b"k").seq for m in link.client.stream]  # the networks first, then the blocks
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) >= 50


def test_clients_behind_two_gateways_corroborate_through_the_networks_each_serves():
    """Gateway 2 serves 10.2.0.0/16 (it says so, signed); its client's own evidence is
    kept here with gateway 2's name and, with this LAN's client's, makes the peer LAN-wide.
    Evidence for a client of a network nobody serves, or unsigned networks, counts for nothing."""
    from p2pwall.clusterwire import Served, encode_served
    from p2pwall.control import Control

    link = cluster_pair()
    link.key = b"k"
    h = harness()
    wall = time.time()
    remote_client = "10.2.0.7"
    assert not link._take(encode(Change(Record(BLOCK, ip_bytes(PEER), None, 60, "t"), "gw2", wall, 1), None, wall),
                          live=True)  # unsigned: refused
    assert link._take(encode_served(Served("gw2", ("10.2.0.0/16",), 2, wall), b"k"), live=True)
    for seq, client in ((3, remote_client), (4, "10.9.0.1")):  # the second: nobody serves it
        link._take(_signed(Record(BLOCK, ip_bytes("203.0.113.50"), ip_bytes(client), 60, "teacher"), seq, wall),
                   live=True)
    link.apply_pending(h.engine.ledger)
    entry = h.peer("203.0.113.50")
    assert entry is not None and not entry.lanwide and entry.clients == (ip_bytes(remote_client),)
    assert not h.mirror.holds.get("pair")  # nothing to enforce here for a client that never passes here
    h.feed(udp(LAN, "203.0.113.50", 1, 2, b"BLOCK"))  # this LAN's own client: two stations, LAN-wide
    assert h.peer("203.0.113.50").lanwide
    report = Control(h.engine, h.settings, lambda: {}).address_report("203.0.113.50")
    assert report["peer"]["gateways"] == {remote_client: "gw2"}
    assert link.status()["served"] == {"gw2": ["10.2.0.0/16"]}
