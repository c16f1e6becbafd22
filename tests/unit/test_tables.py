from p2pwall.tables import PeerTable

A, B, C = b"\x01\x02\x03\x04", b"\x01\x02\x03\x05", b"\x01\x02\x03\x06"


def test_entries_expire_without_traffic():
    t = PeerTable(10)
    t.put(A, 0.0, 5, "d", "r")
    assert t.get(A, 4.9) is not None
    assert t.get(A, 5.0) is None  # lookup ignores stale entries even before a sweep
    assert [k for k, _ in t.expire(5.0)] == [A]
    assert len(t) == 0


def test_restart_extends():
    t = PeerTable(10)
    t.put(A, 0.0, 5, "d", "r")
    entry, new = t.put(A, 4.0, 5, "d", "r")
    assert not new and entry.until == 9.0
    assert t.expire(5.0) == [] and t.get(A, 8.9)


def test_bounded_oldest_out_first():
    t = PeerTable(2)
    t.put(A, 0, 100, "d", "")
    t.put(B, 1, 100, "d", "")
    t.put(A, 2, 100, "d", "")  # refreshed: now B is the oldest
    t.put(C, 3, 100, "d", "")
    assert len(t) == 2 and B not in t and A in t and C in t and t.evicted == 1


def test_refreshes_leave_bounded_bookkeeping_and_expire_exactly():
    t = PeerTable(10)
    for i in range(10000):
        t.put(A, i / 100, 100, "d", "")  # many refreshes inside the same buckets
    assert sum(len(m) for m in t._buckets.values()) <= 10000 / 25 + 2
    assert 100.0 <= t.next_expiry() <= 200.0  # the earliest bucket, perhaps one only stale members hold
    assert t.expire(199.98) == [] and t.get(A, 199.98)
    assert [k for k, _ in t.expire(200.0)] == [A]
    assert not t._buckets


def test_detector_and_reason_are_kept_compactly():
    t = PeerTable(10)
    t.put(A, 0, 10, "fasttrack", "FastTrack UDP ping")
    t.put(B, 0, 10, "fasttrack", "FastTrack UDP ping")
    e = t.get(B, 1)
    assert (e.detector, e.reason, e.until) == ("fasttrack", "FastTrack UDP ping", 10.0)
    assert len(t._metas) == 2
    snap = t.snapshot(4)
    assert [(e["address"], e["remaining"], e["detector"], e["reason"]) for e in snap] == [
        ("1.2.3.4", 6.0, "fasttrack", "FastTrack UDP ping"), ("1.2.3.5", 6.0, "fasttrack", "FastTrack UDP ping")]


def test_evidence_scope_and_corroboration_are_packed_with_the_entry():
    from p2pwall.records import NAMED, OWN, REPLY

    t = PeerTable(10)
    c1, c2, c3 = b"\xc0\x00\x02\x0a", b"\xc0\x00\x02\x0b", b"\xc0\x00\x02\x0c"
    e, new, wide = t.learn(A, 100.0, 60, "bt", "named", None, NAMED, c3, False, 2)
    assert new and not wide and not e.lanwide and e.blocks(c3) and not e.blocks(c1)
    e, new, wide = t.learn(A, 101.0, 60, "bt", "handshake", None, OWN, c1, False, 2)
    assert not new and not wide and e.kind == OWN and e.blocks(c1) and not e.blocks(c2)
    e, _, wide = t.learn(A, 102.0, 60, "bt", "handshake", None, OWN, c1, False, 2)  # the same client again
    assert not wide and e.own_clients() == [c1]
    e, _, wide = t.learn(A, 103.0, 60, "bt", "handshake", None, OWN, c2, False, 2)  # a second one: LAN-wide
    assert wide and e.lanwide and e.blocks(b"\xc0\x00\x02\x63")
    assert e.first_seen == 100.0 and e.last_seen == 103.0 and set(e.clients) == {c1, c2, c3}
    e, _, wide = t.learn(B, 104.0, 60, "bt", "answered", None, REPLY, c1, True, 2)
    assert wide and e.lanwide and e.kind == REPLY
    v6 = bytes(15) + b"\x09"
    e, _, _ = t.learn(v6, 0.0, 60, "bt", "x", None, OWN, bytes(15) + b"\x01", False, 2)
    assert e.clients == (bytes(15) + b"\x01",)
