"""SIGTERM on a stage that holds calls: a peer takes them at once, not after OWNER_IDLE_MS.

OWNER_IDLE_MS is set to a minute here, so a peer that only took calls on its periodic
``XAUTOCLAIM`` pass (every 15 s) would leave a gap of seconds; the hand-over note
(:func:`shared.runtime.claims.hand_over`) must wake it at once.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from shared.runtime.claims import (
    HANDED_OVER,
    CallClaims,
    Claim,
    OwnedCalls,
    claim_handed_over,
)
from shared.runtime.redis_io import ensure_group
from shared.streams import (
    LIFECYCLE_STREAM,
    TRANSCODER_GROUP,
    CallKeys,
    CallStarted,
    InboundFrame,
    StreamEnd,
    call_meta,
    encode_handover,
    handover_stream,
)
from tests.conftest import ROOT, RedisServer, free_port, wait_for
from tests.stack import process_env

HANDOVER_BOUND_S = 1.0  # a peer's periodic pass would come only every 15 s here
IDLE_MS = 60_000


def _started(n: int) -> CallStarted:
    return CallStarted(f"CA{n:032d}", f"MZ{n}", "AC", {}, n)


async def test_a_stopping_instance_hands_its_calls_to_a_blocked_peer_at_once(
    real_redis: aioredis.Redis,
) -> None:
    started: dict[str, asyncio.Queue[tuple[str, Claim]]] = {"a": asyncio.Queue()}
    started["b"] = started["a"]

    def runner(name: str):  # type: ignore[no-untyped-def]
        async def run_call(claim: Claim) -> None:
            await started[name].put((name, claim))
            await asyncio.Event().wait()  # a call in progress

        return run_call

    a = OwnedCalls(CallClaims(real_redis, b"g", "a", IDLE_MS), runner("a"))
    b = OwnedCalls(CallClaims(real_redis, b"g", "b", IDLE_MS), runner("b"))
    loops = [asyncio.create_task(a.run())]
    try:
        await asyncio.wait_for(a.ready.wait(), 5)
        await real_redis.xadd(LIFECYCLE_STREAM, _started(1).encode())  # type: ignore[arg-type]
        who, first = await asyncio.wait_for(started["a"].get(), 5)
        assert who == "a"
        loops.append(asyncio.create_task(b.run()))
        await asyncio.wait_for(b.ready.wait(), 5)
        t0 = time.monotonic()
        await a.stop()
        who, taken = await asyncio.wait_for(started["b"].get(), HANDOVER_BOUND_S)
        assert who == "b" and taken.entry_id == first.entry_id and taken.recovered
        assert time.monotonic() - t0 < HANDOVER_BOUND_S
        assert list(b.tasks) == [first.call.call_sid] and not a.tasks
        pending = await real_redis.xpending(LIFECYCLE_STREAM, b"g")
        assert pending["pending"] == 1 and pending["consumers"] == [{"name": b"b", "pending": 1}]
    finally:
        for loop in loops:
            loop.cancel()
        await a.stop(hand_over=False)
        await b.stop(hand_over=False)


async def test_a_draining_instance_keeps_its_calls_until_each_is_handed_over(
    real_redis: aioredis.Redis,
) -> None:
    """The worker's drain: after stop_taking the instance takes no new call but keeps its
    claims refreshed (a peer's XAUTOCLAIM does not take them, however long the drain); a call
    whose run returns HANDED_OVER is taken by the peer at once."""
    idle_ms = 800  # the peer's periodic pass comes every 200 ms: it would take a stale claim
    started: asyncio.Queue[tuple[str, Claim]] = asyncio.Queue()
    quiet = asyncio.Event()

    def runner(name: str):  # type: ignore[no-untyped-def]
        async def run_call(claim: Claim) -> str | None:
            await started.put((name, claim))
            if name == "a":
                await quiet.wait()  # a reply playing, until the quiet moment
                return HANDED_OVER
            await asyncio.Event().wait()
            return None

        return run_call

    a = OwnedCalls(CallClaims(real_redis, b"g", "a", idle_ms), runner("a"))
    b = OwnedCalls(CallClaims(real_redis, b"g", "b", idle_ms), runner("b"))
    loops = [asyncio.create_task(a.run())]
    try:
        await asyncio.wait_for(a.ready.wait(), 5)
        await real_redis.xadd(LIFECYCLE_STREAM, _started(1).encode())  # type: ignore[arg-type]
        who, first = await asyncio.wait_for(started.get(), 5)
        assert who == "a"
        loops.append(asyncio.create_task(b.run()))
        await asyncio.wait_for(b.ready.wait(), 5)
        await a.stop_taking()
        await real_redis.xadd(LIFECYCLE_STREAM, _started(2).encode())  # type: ignore[arg-type]
        who, second = await asyncio.wait_for(started.get(), 5)
        assert who == "b" and second.call.call_sid == _started(2).call_sid  # not a's
        with pytest.raises(TimeoutError):  # four lease periods: still a's, refreshed
            await asyncio.wait_for(started.get(), 4 * idle_ms / 1000)
        assert list(a.tasks) == [first.call.call_sid]
        t0 = time.monotonic()
        quiet.set()
        who, taken = await asyncio.wait_for(started.get(), HANDOVER_BOUND_S)
        assert who == "b" and taken.entry_id == first.entry_id and taken.recovered
        assert time.monotonic() - t0 < HANDOVER_BOUND_S
        await wait_for(lambda: not a.tasks, timeout=2)
    finally:
        for loop in loops:
            loop.cancel()
        await a.stop(hand_over=False)
        await b.stop(hand_over=False)


async def test_a_handed_over_call_already_taken_by_a_peer_is_not_taken_twice(
    real_redis: aioredis.Redis,
) -> None:
    a = CallClaims(real_redis, b"g", "a", IDLE_MS)
    b = CallClaims(real_redis, b"g", "b", IDLE_MS)
    c = CallClaims(real_redis, b"g", "c", IDLE_MS)
    await a.ensure_group()
    await real_redis.xadd(LIFECYCLE_STREAM, _started(1).encode())  # type: ignore[arg-type]
    [claim] = await a.take_unassigned(block_ms=100)
    await a.hand_over([claim.entry_id])
    assert [t.entry_id for t in await b.take_over()] == [claim.entry_id]  # b's periodic pass
    assert await c.take_unassigned(block_ms=100) == []  # c reads the note: b has it already
    assert await real_redis.xpending(handover_stream(LIFECYCLE_STREAM, b"g"), b"g") == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


async def test_a_garbled_hand_over_note_is_counted_and_dropped(
    real_redis: aioredis.Redis,
) -> None:
    notes = handover_stream(LIFECYCLE_STREAM, b"g")
    await ensure_group(real_redis, LIFECYCLE_STREAM, b"g")
    await ensure_group(real_redis, notes, b"g")
    await real_redis.xadd(notes, {b"k": b"handover", b"e": b"not-an-id"})
    await real_redis.xadd(notes, encode_handover(b"1-0"))  # type: ignore[arg-type]
    reply = await real_redis.xreadgroup(b"g", "a", {notes: b">"})  # type: ignore[arg-type]
    got = await claim_handed_over(real_redis, LIFECYCLE_STREAM, b"g", "a", IDLE_MS, reply[0][1])
    assert got == []  # the valid note names an entry nobody holds
    assert (await real_redis.xpending(notes, b"g"))["pending"] == 0


def test_hand_over_notes_share_their_streams_cluster_slot() -> None:
    from redis.crc import key_slot

    for stream in (LIFECYCLE_STREAM, b"gw:calls:{3}", b"gw:tools"):
        assert key_slot(handover_stream(stream, b"worker")) == key_slot(stream)


# --- two transcoder processes -------------------------------------------------------------------


def _transcoder(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.transcoder"],
        cwd=ROOT,
        env=env,
        stdout=open(log, "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[2].decode()


async def _ready(port: int) -> bool:
    try:
        return (await _get(port, "/readyz"))[0] == 200
    except OSError:
        return False


@pytest.mark.slow
async def test_sigterm_on_a_transcoder_mid_call_hands_the_call_to_its_peer_at_once(
    redis_server: RedisServer, real_redis: aioredis.Redis, tmp_path: Path
) -> None:
    call = _started(7)
    keys = CallKeys.for_call(call.call_sid)
    await ensure_group(real_redis, LIFECYCLE_STREAM, TRANSCODER_GROUP)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    tasks: list[asyncio.Task[None]] = []
    try:
        for name in ("t-a", "t-b"):
            ports[name] = free_port()
            env = process_env(
                redis_server.url,
                free_port(),
                free_port(),
                CONSUMER_NAME=name,
                METRICS_PORT=str(ports[name]),
            )
            env["OWNER_IDLE_MS"] = str(IDLE_MS)
            procs[name] = _transcoder(env, tmp_path / f"{name}.log")
        for port in ports.values():
            await wait_for(lambda p=port: _ready(p), timeout=30)  # type: ignore[misc]

        await real_redis.hset(keys.meta, mapping=call_meta(call))  # type: ignore[arg-type]
        await real_redis.xadd(LIFECYCLE_STREAM, call.encode())  # type: ignore[arg-type]
        sent: list[bytes] = []
        arrived: list[tuple[bytes, float]] = []
        stop_feeding = asyncio.Event()

        async def feed() -> None:
            # The caller's frames at Twilio's pace (this loop is the frame clock, not a wait).
            sequence = 0
            while not stop_feeding.is_set():
                frame = InboundFrame(b"\xff" * 160, sequence, sequence * 20, sequence)
                sent.append(await real_redis.xadd(keys.in_pcmu, frame.encode()))  # type: ignore[arg-type]
                sequence += 1
                await asyncio.sleep(0.02)
            sent.append(await real_redis.xadd(keys.in_pcmu, StreamEnd("stop").encode()))  # type: ignore[arg-type]

        async def collect() -> None:
            last = b"0-0"
            reader = aioredis.from_url(redis_server.url, decode_responses=False)
            try:
                while True:
                    reply = await reader.xread({keys.in_pcm: last}, block=1000)
                    for _, entries in reply:
                        for entry_id, _ in entries:
                            arrived.append((entry_id, time.monotonic()))
                            last = entry_id
            finally:
                await reader.aclose()

        feeder, collector = asyncio.create_task(feed()), asyncio.create_task(collect())
        tasks.extend((feeder, collector))
        # Past the peer's first XAUTOCLAIM pass (a second after its start): the next is 15 s away.
        await wait_for(lambda: _count(arrived, 100), timeout=10)
        [owner] = (await real_redis.xpending(LIFECYCLE_STREAM, TRANSCODER_GROUP))["consumers"]
        holder = owner["name"].decode()
        peer = "t-b" if holder == "t-a" else "t-a"
        procs[holder].send_signal(signal.SIGTERM)

        async def unready() -> bool:  # 503 from the signal on, then the port closes
            return procs[holder].poll() is not None or not await _ready(ports[holder])

        await wait_for(unready, timeout=1)
        assert await asyncio.to_thread(procs[holder].wait, 5) == 0  # the loop records on
        at_stop = len(arrived)
        await wait_for(lambda: _count(arrived, at_stop + 50), timeout=10)
        stop_feeding.set()
        await feeder
        await wait_for(lambda: _count(arrived, len(sent)), timeout=10)
        collector.cancel()

        ids = [entry_id for entry_id, _ in arrived]
        assert ids == sent  # every frame once, in order: none lost, none doubled
        times = [t for _, t in arrived]
        gap = max(b - a for a, b in zip(times, times[1:], strict=False))
        print(f"\nlongest gap in the caller's audio across the hand-over: {gap * 1000:.0f} ms")
        assert gap < HANDOVER_BOUND_S
        pending = await real_redis.xpending(LIFECYCLE_STREAM, TRANSCODER_GROUP)
        assert [c["name"].decode() for c in pending["consumers"]] in ([peer], [])
        status, metrics = await _get(ports[peer], "/metrics")
        assert status == 200 and "gateway_calls_recovered_total 1.0" in metrics
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


async def _count(items: list[tuple[bytes, float]], n: int) -> bool:
    return len(items) >= n


# --- the tool runner ------------------------------------------------------------------------------


async def test_a_stopping_tool_runner_finishes_short_calls_and_hands_long_ones_over_at_once(
    real_redis: aioredis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    from services.tool_runner.service import FINISH_S, ToolRunner
    from shared.runtime.settings import load_settings
    from shared.streams import TOOL_CALLS_STREAM, ToolCall, decode_control
    from sim.tool_server import ToolServer

    tools = await ToolServer().start()
    agent = tmp_path / "agent.toml"
    agent.write_text(
        f"""
instructions = "A test agent."
[[tools]]
name = "quick"
description = "Done well within the stop's bound."
url = "{tools.url}/slow?ms=300"
[[tools]]
name = "long"
description = "Still running when the stop's bound is over."
url = "{tools.url}/slow?ms={int(FINISH_S * 1000) + 1500}"
timeout_ms = 20000
"""
    )

    def runner(name: str) -> ToolRunner:
        settings = load_settings(
            redis_url=redis_server.url,
            agent_file=str(agent),
            owner_idle_ms=IDLE_MS,
            consumer_name=name,
        )
        return ToolRunner(settings, aioredis.from_url(redis_server.url, decode_responses=False))

    keys = CallKeys.for_call(_started(3).call_sid)
    await real_redis.hset(keys.meta, mapping=call_meta(_started(3)))  # type: ignore[arg-type]
    a, b = runner("a"), runner("b")
    loops = [asyncio.create_task(loop) for loop in a.loops()]
    try:
        for call_id, name in (("call-quick", "quick"), ("call-long", "long")):
            call = ToolCall(keys.call_sid, "MZ3", call_id, name, "{}")
            await real_redis.xadd(TOOL_CALLS_STREAM, call.encode())  # type: ignore[arg-type]
        first = await tools.wait_for(2)
        assert sorted(r.headers["idempotency-key"] for r in first) == ["call-long", "call-quick"]
        loops += [asyncio.create_task(loop) for loop in b.loops()]
        await a.stop()
        t_handed = time.monotonic()
        assert not a.running
        seen = await tools.wait_for(3, timeout=HANDOVER_BOUND_S)
        assert time.monotonic() - t_handed < HANDOVER_BOUND_S
        assert seen[2].headers["idempotency-key"] == "call-long"  # run again, same key
        assert list(b.running) and len(b.running) == 1

        async def answered() -> bool:
            return await real_redis.xlen(keys.ctl) >= 2

        await wait_for(answered, timeout=10)
        results = [decode_control(f) for _, f in await real_redis.xrange(keys.ctl)]
        assert sorted(r.call_id for r in results) == ["call-long", "call-quick"]  # type: ignore[union-attr]
        assert (await real_redis.xpending(TOOL_CALLS_STREAM, b"tool_runner"))["pending"] == 0
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await b.stop()
        await tools.stop()
        await a.redis.aclose()
        await b.redis.aclose()


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize("partitions", [1, 4])
async def test_hand_over_notes_work_on_a_redis_cluster(tmp_path: Path, partitions: int) -> None:
    """One group read covers a lifecycle partition and its notes: same slot, on a cluster."""
    from shared.runtime.claims import stage_claims
    from shared.runtime.redis_io import connect
    from shared.runtime.settings import load_settings
    from tests.test_cluster import ClusterNodes, cluster_ok

    nodes = ClusterNodes(tmp_path, masters=3, replicas=0)
    nodes.create()
    try:
        await wait_for(lambda: cluster_ok(nodes.ports), timeout=20)
        settings = load_settings(
            redis_url=f"redis://127.0.0.1:{nodes.ports[0]}/0", redis_cluster=True
        )
        client = connect(settings)
        try:
            a = stage_claims(client, b"g", "a", IDLE_MS, partitions)
            b = stage_claims(client, b"g", "b", IDLE_MS, partitions)
            for claims in a:
                await claims.ensure_group()
                await client.xadd(claims.stream, _started(1).encode())  # type: ignore[arg-type]
            for mine, peer in zip(a, b, strict=True):
                [claim] = await mine.take_unassigned(block_ms=100)
                await mine.hand_over([claim.entry_id])
                [taken] = await peer.take_unassigned(block_ms=100)
                assert taken.entry_id == claim.entry_id and taken.recovered
        finally:
            await client.aclose()
    finally:
        nodes.stop()
