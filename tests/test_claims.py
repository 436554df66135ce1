"""Call ownership through the lifecycle stream's consumer groups, on fakeredis and redis-server."""

from __future__ import annotations

import asyncio

from shared.runtime.claims import CallClaims, Claim, OwnedCalls
from shared.streams import LIFECYCLE_STREAM, CallStarted


def _started(n: int) -> dict[bytes, bytes | int]:
    return CallStarted(f"CA{n:032d}", f"MZ{n}", "AC", {}, n).encode()


async def test_each_call_goes_to_exactly_one_instance(any_redis) -> None:  # type: ignore[no-untyped-def]
    a = CallClaims(any_redis, b"g", "a", idle_ms=1000)
    b = CallClaims(any_redis, b"g", "b", idle_ms=1000)
    await a.ensure_group()
    await b.ensure_group()  # idempotent (BUSYGROUP)
    for n in range(6):
        await any_redis.xadd(LIFECYCLE_STREAM, _started(n))
    got_a = await a.take_unassigned(block_ms=100)
    got_b = await b.take_unassigned(block_ms=100)
    sids = [c.call.call_sid for c in got_a + got_b]
    assert sorted(sids) == [f"CA{n:032d}" for n in range(6)]


async def test_a_restarted_instance_rereads_its_own_calls(any_redis) -> None:  # type: ignore[no-untyped-def]
    a = CallClaims(any_redis, b"g", "a", idle_ms=1000)
    await a.ensure_group()
    await any_redis.xadd(LIFECYCLE_STREAM, _started(1))
    [first] = await a.take_unassigned(block_ms=100)
    again = CallClaims(any_redis, b"g", "a", idle_ms=1000)  # same consumer name after restart
    [mine] = await again.pending_mine()
    assert mine.entry_id == first.entry_id and mine.recovered


async def test_a_silent_owner_loses_its_call_to_another_instance(any_redis) -> None:  # type: ignore[no-untyped-def]
    a = CallClaims(any_redis, b"g", "a", idle_ms=50)
    b = CallClaims(any_redis, b"g", "b", idle_ms=50)
    await a.ensure_group()
    await any_redis.xadd(LIFECYCLE_STREAM, _started(1))
    [claim] = await a.take_unassigned(block_ms=100)
    # Make the claim look idle without sleeping: hand it over.
    await a.hand_over([claim.entry_id])
    taken = await b.take_over()
    assert [c.entry_id for c in taken] == [claim.entry_id]
    assert await a.refresh([claim.entry_id]) == {claim.entry_id}  # a learns it lost it


async def test_refresh_keeps_a_live_owner(any_redis) -> None:  # type: ignore[no-untyped-def]
    a = CallClaims(any_redis, b"g", "a", idle_ms=60_000)
    b = CallClaims(any_redis, b"g", "b", idle_ms=60_000)
    await a.ensure_group()
    await any_redis.xadd(LIFECYCLE_STREAM, _started(1))
    [claim] = await a.take_unassigned(block_ms=100)
    assert await a.refresh([claim.entry_id]) == set()
    assert await b.take_over() == []


async def test_undecodable_lifecycle_entries_are_acknowledged_and_skipped(any_redis) -> None:  # type: ignore[no-untyped-def]
    a = CallClaims(any_redis, b"g", "a", idle_ms=1000)
    await a.ensure_group()
    await any_redis.xadd(LIFECYCLE_STREAM, {b"k": b"nonsense"})
    await any_redis.xadd(LIFECYCLE_STREAM, _started(2))
    got = await a.take_unassigned(block_ms=100)
    assert [c.call.call_sid for c in got] == [f"CA{2:032d}"]
    assert (await any_redis.xpending(LIFECYCLE_STREAM, b"g"))["pending"] == 1


async def test_owned_calls_runs_releases_and_survives_a_lost_group(real_redis) -> None:  # type: ignore[no-untyped-def]
    """On a real server: blocking reads, release on completion, NOGROUP after data loss."""
    done: asyncio.Queue[str] = asyncio.Queue()

    async def run_call(claim: Claim) -> None:
        await done.put(claim.call.call_sid)

    owned = OwnedCalls(CallClaims(real_redis, b"g", "a", idle_ms=500), run_call)
    runner = asyncio.create_task(owned.run())
    await asyncio.wait_for(owned.ready.wait(), 5)
    await real_redis.xadd(LIFECYCLE_STREAM, _started(1))
    assert await asyncio.wait_for(done.get(), 5) == f"CA{1:032d}"
    await asyncio.sleep(0)  # let the release run

    async def released() -> bool:
        return (await real_redis.xpending(LIFECYCLE_STREAM, b"g"))["pending"] == 0

    from tests.conftest import wait_for

    await wait_for(released)
    await real_redis.flushall()  # Redis restarted empty: the group is gone
    await real_redis.xadd(LIFECYCLE_STREAM, _started(2))
    assert await asyncio.wait_for(done.get(), 10) == f"CA{2:032d}"
    runner.cancel()
    await owned.stop(hand_over=False)


async def test_a_call_announced_again_replaces_its_running_task(real_redis) -> None:  # type: ignore[no-untyped-def]
    """The edge registers a call again when Redis lost it: the new entry's task takes over as
    soon as the old one stops, not after the new claim has gone idle."""
    runs: asyncio.Queue[bytes] = asyncio.Queue()
    cancelled: list[bytes] = []

    async def run_call(claim: Claim) -> None:
        await runs.put(claim.entry_id)
        try:
            await asyncio.Event().wait()  # a call in progress
        except asyncio.CancelledError:
            cancelled.append(claim.entry_id)
            raise

    owned = OwnedCalls(CallClaims(real_redis, b"g", "a", idle_ms=60_000), run_call)
    runner = asyncio.create_task(owned.run())
    await asyncio.wait_for(owned.ready.wait(), 5)
    first_id = await real_redis.xadd(LIFECYCLE_STREAM, _started(1))
    assert await asyncio.wait_for(runs.get(), 5) == first_id
    again_id = await real_redis.xadd(LIFECYCLE_STREAM, _started(1))  # same CallSid
    assert await asyncio.wait_for(runs.get(), 5) == again_id
    assert cancelled == [first_id] and len(owned.tasks) == 1
    assert owned.owned[f"CA{1:032d}"][1] == again_id
    runner.cancel()
    await owned.stop(hand_over=False)


async def test_a_call_announced_right_after_another_is_taken_up_without_a_nap(
    real_redis, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Real Redis answers a blocking read early only with entries: the loop must go straight
    back to reading, not nap for its block (which made every call of a busy minute wait up to
    0.8 s for its stages)."""
    import shared.runtime.claims as claims_module

    naps: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float, *args: object) -> None:
        if delay > 0:
            naps.append(delay)
        await real_sleep(delay, *args)

    monkeypatch.setattr(claims_module.asyncio, "sleep", recording_sleep)
    runs: asyncio.Queue[str] = asyncio.Queue()

    async def run_call(claim: Claim) -> None:
        await runs.put(claim.call.call_sid)
        await asyncio.Event().wait()

    owned = OwnedCalls(CallClaims(real_redis, b"g", "a", idle_ms=60_000), run_call)
    runner = asyncio.create_task(owned.run())
    await asyncio.wait_for(owned.ready.wait(), 5)
    await real_redis.xadd(LIFECYCLE_STREAM, _started(1))
    assert await asyncio.wait_for(runs.get(), 5) == f"CA{1:032d}"
    await real_redis.xadd(LIFECYCLE_STREAM, _started(2))
    assert await asyncio.wait_for(runs.get(), 5) == f"CA{2:032d}"
    assert naps == []
    runner.cancel()
    await owned.stop(hand_over=False)


async def test_a_stopping_instance_takes_no_call_even_its_own_handed_over_ones(
    real_redis,
) -> None:  # type: ignore[no-untyped-def]
    """The control loop still runs while the service stops (its writer must flush): a
    take-over pass then finds the calls just handed over, idle, and must leave them to another
    instance rather than start them again and delay the hand-over by a claim's idle time."""
    started: list[str] = []

    async def run_call(claim: Claim) -> None:
        started.append(claim.call.call_sid)
        await asyncio.Event().wait()

    claims = CallClaims(real_redis, b"g", "a", idle_ms=50)
    owned = OwnedCalls(claims, run_call)
    await claims.ensure_group()
    await real_redis.xadd(LIFECYCLE_STREAM, _started(1))
    [claim] = await claims.take_unassigned(block_ms=100)
    owned._start(claims, claim)
    await asyncio.sleep(0)
    assert started == [f"CA{1:032d}"]
    await owned.stop(hand_over=True)
    [again] = await claims.take_over()  # what the still running loop's next pass finds
    owned._start(claims, again)
    assert owned.tasks == {} and started == [f"CA{1:032d}"]
