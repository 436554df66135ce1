"""The pure limiters for untrusted peers (shared.limits)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.limits import PendingSockets


def test_the_oldest_pending_socket_makes_room_and_a_started_one_never_does() -> None:
    pending: PendingSockets[str] = PendingSockets(limit=2, timeout_s=5.0)
    assert pending.open("a", 0.0) == []
    assert pending.open("b", 1.0) == []
    assert pending.started("a")  # a call now: it no longer counts, nor can it be evicted
    assert pending.open("c", 2.0) == []
    assert pending.open("d", 3.0) == ["b"]  # the oldest that has not started
    assert not pending.started("b")  # closing: its late start is not taken
    assert len(pending) == 2 and "c" in pending and "d" in pending


def test_a_socket_without_a_start_is_overdue_after_the_timeout() -> None:
    pending: PendingSockets[str] = PendingSockets(limit=10, timeout_s=5.0)
    pending.open("a", 0.0)
    pending.open("b", 3.0)
    assert pending.overdue(4.9) == []
    assert pending.overdue(5.0) == ["a"]
    assert pending.overdue(7.9) == []
    assert pending.overdue(8.0) == ["b"]
    assert len(pending) == 0
    pending.closed("a")  # closing what is gone already is harmless


@given(st.lists(st.tuples(st.sampled_from("osco"), st.integers(0, 9)), max_size=60))
def test_pending_sockets_never_exceed_their_limit(steps: list[tuple[str, int]]) -> None:
    pending: PendingSockets[int] = PendingSockets(limit=3, timeout_s=2.0)
    now = 0.0
    for op, key in steps:
        now += 0.5
        if op == "o" and key not in pending:
            evicted = pending.open(key, now)
            assert key not in evicted
        elif op == "s":
            pending.started(key)
        elif op == "c":
            pending.closed(key)
        else:
            pending.overdue(now)
        assert len(pending) <= 3
