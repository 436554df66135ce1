"""The worker's drain core on a virtual clock: a call moves at its quiet moment when a peer is
alive, is kept otherwise, and moves anyway once WORKER_DRAIN_SECONDS have passed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.drain import Move, WorkerDrain, peers_alive

S = 1_000_000  # a second, in the core's microseconds
T0 = 1_700_000_000 * S


def test_nothing_moves_before_sigterm() -> None:
    drain = WorkerDrain(30 * S)
    assert not drain.draining
    assert drain.decide("CA1", T0, quiet=True, peers=True) is Move.KEEP
    assert drain.deadline_us() is None and not drain.bound_passed(T0 + 10**9 * S)


def test_a_quiet_call_moves_at_once_when_a_peer_is_alive() -> None:
    drain = WorkerDrain(30 * S)
    drain.begin(T0)
    assert drain.decide("CA1", T0 + 1, quiet=True, peers=True) is Move.QUIET


def test_a_busy_call_waits_for_its_quiet_moment() -> None:
    drain = WorkerDrain(30 * S)
    drain.begin(T0)
    for t in range(0, 29 * S, S // 50):  # a reply playing for 29 s, a frame boundary each 20 ms
        assert drain.decide("CA1", T0 + t, quiet=False, peers=True) is Move.KEEP
    assert drain.decide("CA1", T0 + 29 * S, quiet=True, peers=True) is Move.QUIET


def test_with_no_peer_alive_even_a_quiet_call_is_kept_until_the_bound() -> None:
    drain = WorkerDrain(30 * S)
    drain.begin(T0)
    assert drain.decide("CA1", T0 + 10 * S, quiet=True, peers=False) is Move.KEEP
    assert drain.decide("CA1", T0 + 30 * S - 1, quiet=True, peers=False) is Move.KEEP
    assert drain.decide("CA1", T0 + 30 * S, quiet=True, peers=False) is Move.BOUND


def test_past_the_bound_a_busy_call_moves_anyway() -> None:
    drain = WorkerDrain(30 * S)
    drain.begin(T0)
    assert drain.decide("CA1", T0 + 30 * S - 1, quiet=False, peers=True) is Move.KEEP
    assert drain.bound_passed(T0 + 30 * S)
    assert drain.decide("CA1", T0 + 30 * S, quiet=False, peers=True) is Move.BOUND


def test_a_zero_bound_moves_every_call_at_once() -> None:
    drain = WorkerDrain(0)
    drain.begin(T0)
    assert drain.decide("CA1", T0, quiet=False, peers=False) is Move.BOUND


def test_each_call_is_moved_once_and_calls_are_decided_apart() -> None:
    drain = WorkerDrain(30 * S)
    drain.begin(T0)
    assert drain.decide("CA1", T0 + S, quiet=True, peers=True) is Move.QUIET
    assert drain.decide("CA1", T0 + 2 * S, quiet=True, peers=True) is Move.KEEP
    assert drain.decide("CA2", T0 + 2 * S, quiet=False, peers=True) is Move.KEEP
    assert drain.decide("CA2", T0 + 3 * S, quiet=True, peers=True) is Move.QUIET
    assert drain.moved == {"CA1": Move.QUIET, "CA2": Move.QUIET}


def test_a_second_sigterm_does_not_restart_the_bound() -> None:
    drain = WorkerDrain(30 * S)
    drain.begin(T0)
    drain.begin(T0 + 20 * S)
    assert drain.deadline_us() == T0 + 30 * S


@given(
    bound_s=st.integers(0, 120),
    steps=st.lists(st.tuples(st.integers(0, 5 * S), st.booleans(), st.booleans()), max_size=80),
)
def test_any_sequence_moves_a_call_at_most_once_and_never_before_it_may(
    bound_s: int, steps: list[tuple[int, bool, bool]]
) -> None:
    drain = WorkerDrain(bound_s * S)
    drain.begin(T0)
    now, moves = T0, []
    for dt, quiet, peers in steps:
        now += dt
        move = drain.decide("CA1", now, quiet, peers)
        if move is Move.QUIET:
            assert quiet and peers and now < T0 + bound_s * S
        elif move is Move.BOUND:
            assert now >= T0 + bound_s * S
        if move is not Move.KEEP:
            moves.append(move)
    assert len(moves) <= 1


def test_peers_alive_reads_the_workers_heartbeats() -> None:
    me, now = "w0", 1_700_000_000_000
    assert not peers_alive([], me, now, 3000)
    assert not peers_alive([(b"w0", now)], me, now, 3000)  # only me
    assert not peers_alive([(b"w1", now - 3000)], me, now, 3000)  # dead: its lease passed
    assert peers_alive([(b"w1", now - 200.0), ("w0", now)], me, now, 3000)
