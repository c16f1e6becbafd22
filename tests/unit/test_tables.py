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


def test_heap_stays_bounded_under_refreshes():
    t = PeerTable(10)
    for i in range(10000):
        t.put(A, float(i), 100, "d", "")
    assert len(t._heap) < 200
    assert t.next_expiry() == 9999 + 100
