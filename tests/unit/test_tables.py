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
    assert t.snapshot(4) == [{"address": "1.2.3.4", "remaining": 6.0, "detector": "fasttrack",
                              "reason": "FastTrack UDP ping"},
                             {"address": "1.2.3.5", "remaining": 6.0, "detector": "fasttrack",
                              "reason": "FastTrack UDP ping"}]
