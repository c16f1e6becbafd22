"""The probe schedule on its own: due times, moves, cancellations, one entry per lock."""

from p2pwall.probes import ProbeSchedule

A, B = b"\xc0\x00\x02\x0a", b"\xc0\x00\x02\x0b"


def test_due_in_time_order_and_taken_off():
    s = ProbeSchedule()
    s.schedule(B, 20.0, 1)
    s.schedule(A, 10.0, 0)
    assert s.next_due() == 10.0 and len(s) == 2
    assert list(s.due(15.0)) == [(A, 0)]
    assert list(s.due(15.0)) == [] and s.next_due() == 20.0
    assert list(s.due(25.0)) == [(B, 1)] and s.next_due() is None and len(s) == 0


def test_a_restarted_lock_moves_its_probe_and_a_cancelled_one_never_fires():
    s = ProbeSchedule()
    s.schedule(A, 10.0, 0)
    for t in range(11, 1011):  # a lock restarted a thousand times: one live entry
        s.schedule(A, float(t), 0)
    assert len(s) == 1 and len(s._heap) == 1
    assert list(s.due(500.0)) == []  # moved: nothing due at the old times
    assert list(s.due(1010.0)) == [(A, 0)]
    s.schedule(B, 5.0, 0)
    s.cancel(B)
    assert list(s.due(100.0)) == [] and s.next_due() is None


def test_rescheduled_while_due_runs_is_found_only_when_due():
    s = ProbeSchedule()
    s.schedule(A, 10.0, 0)
    seen = []
    for key, sent in s.due(12.0):
        seen.append((key, sent))
        s.schedule(key, 16.0, sent + 1)  # the engine's second probe, at half of what is left
    assert seen == [(A, 0)] and s.next_due() == 16.0
    assert list(s.due(16.0)) == [(A, 1)]
