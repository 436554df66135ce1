"""The shared reader (shared/runtime/stream_reader.py): many calls in one read, calls coming and
going mid-read, a failing or slow call that touches no other, lanes per cluster slot, the worker's
feed on top of it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from services.realtime_worker import feed as worker_feed
from shared.runtime import stream_reader
from shared.runtime.observability import REJECTED
from shared.runtime.stream_reader import CallReading, Read, SharedReader, Writes
from tests.conftest import wait_for

TIMEOUT_S = 5.0


class Recorder(CallReading):
    """Keeps what it was given; optionally writes each entry on to ``<stream>:out``."""

    def __init__(
        self,
        call_id: str,
        *,
        forward: bool = False,
        silent_limit_s: float = 60.0,
        tag: str | None = None,
    ):
        prefix = f"call:{{{tag or call_id}}}:{call_id}"
        self.streams = {f"{prefix}:ctl".encode(), f"{prefix}:in".encode()}
        super().__init__(call_id, dict.fromkeys(sorted(self.streams), b"0-0"), silent_limit_s)
        self.forward = forward
        self.got: list[tuple[bytes, bytes]] = []  # (stream, entry id), in the order taken
        self.results: list[Any] = []
        self.changed = asyncio.Event()

    def take(self, read: Read, writes: Writes) -> None:
        for stream, entries in read:
            for entry_id, fields in entries:
                self.got.append((stream, entry_id))
                if self.forward:
                    writes.xadd(stream + b":out", fields, entry_id)
            self.cursors[stream] = entries[-1][0]
        self.changed.set()

    def written(self, results: list[Any]) -> None:
        self.results.extend(results)

    async def until(self, count: int) -> None:
        async def wait() -> None:
            while len(self.got) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), TIMEOUT_S)


class Failing(Recorder):
    def take(self, read: Read, writes: Writes) -> None:
        writes.xadd(b"call:{poison}:out", {b"x": b"1"})
        raise RuntimeError("a bug in this call's handling")


def ctl(call: Recorder) -> bytes:
    return sorted(call.streams)[0]


def inbound(call: Recorder) -> bytes:
    return sorted(call.streams)[1]


async def test_many_calls_are_read_in_one_read(any_redis: aioredis.Redis) -> None:
    calls = [Recorder(f"CA{i:032d}") for i in range(20)]
    for call in calls:
        for stream in sorted(call.streams):
            for _ in range(3):
                await any_redis.xadd(stream, {b"a": b"1"})
    reader = SharedReader(any_redis, "test")
    for call in calls:
        reader.add(call)
    for call in calls:
        await call.until(6)
    assert reader.reads == 1  # twenty calls, forty streams, one XREAD
    for call in calls:
        # In order per stream, and ctl before the other stream of the same read.
        assert [s for s, _ in call.got] == [ctl(call)] * 3 + [inbound(call)] * 3
        reader.remove(call)
    await reader.stop()


async def test_calls_added_and_removed_while_a_read_is_in_flight(
    real_redis: aioredis.Redis,
) -> None:
    reader = SharedReader(real_redis, "test")
    first, second, third = Recorder("CA1"), Recorder("CA2"), Recorder("CA3")
    reader.add(first)
    reader.add(third)
    await real_redis.xadd(inbound(first), {b"a": b"1"})
    await first.until(1)  # the lane is running; its next read now blocks on nothing new
    reader.add(second)  # joins the next read
    reader.remove(third)  # left out of it; what arrives for it is not taken
    await real_redis.xadd(inbound(third), {b"a": b"1"})
    await real_redis.xadd(inbound(second), {b"a": b"1"})
    await real_redis.xadd(inbound(first), {b"a": b"2"})
    await second.until(1)
    await first.until(2)
    assert third.got == [] and third.outcome.result() == "removed"
    reader.remove(first)
    reader.remove(second)
    await reader.stop()


async def test_a_failing_call_ends_alone(real_redis: aioredis.Redis) -> None:
    reader = SharedReader(real_redis, "test")
    bad, good = Failing("CAbad"), Recorder("CAgood", forward=True)
    reader.add(bad)
    reader.add(good)
    await real_redis.xadd(inbound(bad), {b"a": b"1"})
    await real_redis.xadd(inbound(good), {b"a": b"1"})
    with pytest.raises(RuntimeError, match="a bug"):
        await asyncio.wait_for(bad.outcome, TIMEOUT_S)
    await good.until(1)
    await real_redis.xadd(inbound(good), {b"a": b"2"})
    await good.until(2)
    assert await real_redis.xlen(inbound(good) + b":out") == 2  # its writes went on
    assert await real_redis.exists(b"call:{poison}:out") == 0  # the failed call's did not
    reader.remove(bad)
    reader.remove(good)
    await reader.stop()


async def test_a_call_whose_key_is_not_a_stream_ends_alone(real_redis: aioredis.Redis) -> None:
    # Real Redis only: fakeredis answers this XREAD with an AttributeError of its own.
    any_redis = real_redis
    reader = SharedReader(any_redis, "test")
    bad, good = Recorder("CAbad"), Recorder("CAgood")
    await any_redis.set(inbound(bad), b"not a stream")  # XREAD naming it is refused whole
    await any_redis.xadd(inbound(good), {b"a": b"1"})
    reader.add(bad)
    reader.add(good)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await asyncio.wait_for(bad.outcome, TIMEOUT_S)
    await good.until(1)
    await any_redis.xadd(inbound(good), {b"a": b"2"})
    await good.until(2)
    reader.remove(bad)
    reader.remove(good)
    await reader.stop()


async def test_writes_keep_their_ids_and_ride_with_the_next_read(
    real_redis: aioredis.Redis,
) -> None:
    reader = SharedReader(real_redis, "test")
    calls = [Recorder(f"CA{i}", forward=True) for i in range(5)]
    for call in calls:
        reader.add(call)
    for round_ in range(3):
        ids = [await real_redis.xadd(inbound(call), {b"n": round_}) for call in calls]
        for call in calls:
            await call.until(round_ + 1)
        for call, entry_id in zip(calls, ids, strict=True):
            out = await real_redis.xrange(inbound(call) + b":out")
            assert out[-1][0] == entry_id  # the output reuses the input's ID
    assert all(not isinstance(r, Exception) for call in calls for r in call.results)
    for call in calls:
        reader.remove(call)
    await reader.stop()


async def test_a_silent_call_is_abandoned_only_after_reads(real_redis: aioredis.Redis) -> None:
    reader = SharedReader(real_redis, "test")
    quiet, busy = Recorder("CAquiet", silent_limit_s=0.0), Recorder("CAbusy")
    reader.add(quiet)
    reader.add(busy)
    await real_redis.xadd(inbound(busy), {b"a": b"1"})
    assert await asyncio.wait_for(quiet.outcome, TIMEOUT_S) == "abandoned"
    await busy.until(1)
    assert busy.active
    reader.remove(quiet)
    reader.remove(busy)
    await reader.stop()


async def test_no_reads_without_calls(real_redis: aioredis.Redis) -> None:
    reader = SharedReader(real_redis, "test")
    call = Recorder("CA1")
    reader.add(call)
    (lane,) = reader._lanes.values()
    task = lane.task
    assert task is not None
    reader.remove(call)
    await asyncio.wait_for(task, TIMEOUT_S)  # the lane stops: at rest nothing is read
    assert reader._lanes == {} and reader.calls == 0


class SlottedFake(fakeredis.FakeAsyncRedis):
    """A fakeredis that says which slot a key is in, as a cluster client does."""

    def keyslot(self, key: bytes) -> int:
        return int(key_slot(key))


async def test_a_cluster_is_read_in_lanes_per_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    client = SlottedFake(server=fakeredis.FakeServer())
    named_by_reads: list[set[bytes]] = []
    xread_command = stream_reader.xread_command

    def recording(streams: dict[bytes, bytes], block_ms: int, count: int) -> Any:
        named_by_reads.append(set(streams))
        return xread_command(streams, block_ms, count)

    monkeypatch.setattr(stream_reader, "xread_command", recording)
    reader = SharedReader(client, "test")
    a1, b = Recorder("CAa"), Recorder("CAb")
    a2 = Recorder("CAa2", tag="CAa")  # the same hash tag: the same slot as a1
    for call in (a1, a2, b):
        reader.add(call)
    assert len(reader._lanes) == 2
    for call in (a1, a2, b):
        await client.xadd(inbound(call), {b"a": b"1"})
    await a1.until(1)
    await a2.until(1)
    await b.until(1)
    assert named_by_reads
    for named in named_by_reads:  # never a read across slots
        assert len({key_slot(s) for s in named}) == 1
    assert any({inbound(a1), inbound(a2)} <= named for named in named_by_reads)  # one lane
    for call in (a1, a2, b):
        reader.remove(call)
    await reader.stop()
    await client.aclose()


class FakeWorkerCall:
    """What the worker's feed needs of a RealtimeCall."""

    def __init__(self, call_sid: str, block: asyncio.Event | None = None) -> None:
        self.call = type("Started", (), {"call_sid": call_sid})()
        self.ctl = f"call:{{{call_sid}}}:ctl".encode()
        self.in_pcm = f"call:{{{call_sid}}}:in.pcm".encode()
        self.block = block
        self.acted: list[bytes] = []
        self.changed = asyncio.Event()

    def streams(self) -> dict[bytes, bytes]:
        return {self.ctl: b"0-0", self.in_pcm: b"0-0"}

    async def on_entries(self, stream: bytes, entries: Any) -> str | None:
        for entry_id, fields in entries:
            if self.block is not None:
                await self.block.wait()
            self.acted.append(entry_id)
            self.changed.set()
            if fields.get(b"end"):
                return "caller_hung_up"
        return None

    def cursors_to_save(self, now: float) -> None:
        return None  # the worker's own tests cover its saves


async def test_a_slow_worker_call_holds_up_only_itself(real_redis: aioredis.Redis) -> None:
    reader = SharedReader(real_redis, "worker")
    unblock = asyncio.Event()
    slow, fast = FakeWorkerCall("CAslow", unblock), FakeWorkerCall("CAfast")
    feeds = [
        asyncio.create_task(worker_feed.feed(reader, slow)),  # type: ignore[arg-type]
        asyncio.create_task(worker_feed.feed(reader, fast)),  # type: ignore[arg-type]
    ]
    frames = 3 * worker_feed.MAX_PENDING_READS
    for i in range(frames):
        # One entry per read, so that the slow call's inbox fills up.
        await real_redis.xadd(slow.in_pcm, {b"n": i})
        await real_redis.xadd(fast.in_pcm, {b"n": i})

        async def fast_has(n: int = i + 1) -> None:
            while len(fast.acted) < n:
                fast.changed.clear()
                await fast.changed.wait()

        await asyncio.wait_for(fast_has(), TIMEOUT_S)
    assert slow.acted == []
    await real_redis.xadd(slow.in_pcm, {b"end": b"1"})
    await real_redis.xadd(fast.in_pcm, {b"end": b"1"})
    unblock.set()
    assert await asyncio.wait_for(feeds[0], TIMEOUT_S) == "caller_hung_up"
    assert await asyncio.wait_for(feeds[1], TIMEOUT_S) == "caller_hung_up"
    assert len(slow.acted) == frames + 1  # every entry, in order, none twice
    assert slow.acted == sorted(slow.acted)
    assert reader.calls == 0
    await reader.stop()


class LosesOneReply:
    """Round trips whose next batch is sent but whose reply is lost (a connection cut after
    Redis took the writes): the case the transcoder's mirrored IDs are for."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lose_next = False

    async def execute(self, commands: Any, timeout_s: float) -> list[Any]:
        replies: list[Any] = await self.inner.execute(commands, timeout_s)
        if self.lose_next and any(command[0] == "XADD" for command in commands):
            self.lose_next = False
            raise RedisConnectionError("connection lost after sending")
        return replies

    def close(self) -> None:
        self.inner.close()


async def test_the_transcoder_stays_exactly_once_when_a_reply_is_lost(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.transcoder.service import _CallPump, _resume
    from shared.runtime.resp import RespConnection
    from shared.streams import CallKeys, InboundFrame, StreamEnd

    client = aioredis.Redis.from_url(redis_server.url, decode_responses=False)
    await client.flushall()
    lossy: list[LosesOneReply] = []
    lean = stream_reader.round_trips

    def round_trips(redis: Any, loop: str) -> LosesOneReply:
        trips = LosesOneReply(lean(redis, loop))
        assert isinstance(trips.inner, RespConnection)  # a real Redis: the lean connection
        trips.lose_next = not lossy  # the first lane's first batch of writes
        lossy.append(trips)
        return trips

    monkeypatch.setattr(stream_reader, "round_trips", round_trips)
    settings = SimpleNamespace(pcm_rate=24000, stream_maxlen=1000, call_max_seconds=60)
    keys = CallKeys.for_call("CA" + "7" * 32)
    other = Recorder("CAother", forward=True)
    ids = [
        await client.xadd(keys.in_pcmu, InboundFrame(b"\xff" * 160, i, 20 * i, 0).encode())
        for i in range(5)
    ]
    duplicates = REJECTED.labels("transcoder_duplicate")
    before = duplicates._value.get()
    reader = SharedReader(client, "transcoder")  # its first batch's writes land, not its reply
    pump = _CallPump(keys, settings, await _resume(client, keys))  # type: ignore[arg-type]
    reader.add(pump)
    reader.add(other)
    await client.xadd(inbound(other), {b"a": b"1"})
    for i in range(5, 8):
        ids.append(
            await client.xadd(keys.in_pcmu, InboundFrame(b"\xff" * 160, i, 20 * i, 0).encode())
        )
    ids.append(await client.xadd(keys.in_pcmu, StreamEnd("caller_hung_up").encode()))
    await client.xadd(keys.out_pcm, StreamEnd("done").encode())
    assert await asyncio.wait_for(pump.outcome, TIMEOUT_S) == "completed"
    out = await client.xrange(keys.in_pcm)
    assert [entry_id for entry_id, _ in out] == ids  # each frame once, under its input's ID
    assert duplicates._value.get() > before  # the batch was sent again, and refused
    await other.until(1)
    assert await client.xlen(inbound(other) + b":out") == 1  # the other call: once too
    reader.remove(pump)
    reader.remove(other)
    await reader.stop()
    await client.aclose()


class SavingWorkerCall(FakeWorkerCall):
    """A worker call whose cursors are due for a save at every batch."""

    def __init__(self, call_sid: str) -> None:
        super().__init__(call_sid)
        self.meta = f"call:{{{call_sid}}}:meta".encode()
        self.cursors = SimpleNamespace(in_flight=None, saved=(b"", b""))

    def cursors_to_save(self, now: float) -> tuple[bytes, dict[bytes, bytes]] | None:
        acted = self.acted[-1] if self.acted else b"0-0"
        return self.meta, {b"worker_cursor": acted}


async def test_the_worker_saves_its_cursors_with_the_readers_batches(
    real_redis: aioredis.Redis,
) -> None:
    reader = SharedReader(real_redis, "worker")
    call = SavingWorkerCall("CAsave")
    feeding = asyncio.create_task(worker_feed.feed(reader, call))  # type: ignore[arg-type]
    first = await real_redis.xadd(call.in_pcm, {b"n": 1})
    await wait_for(lambda: call.acted == [first])
    second = await real_redis.xadd(call.in_pcm, {b"n": 2})  # its batch carries first's save
    await wait_for(lambda: len(call.acted) == 2)
    saving = call.cursors.in_flight
    assert saving is not None
    await asyncio.wait_for(saving, TIMEOUT_S)  # answered with the batch's round trip
    saved = await real_redis.hget(call.meta, b"worker_cursor")
    assert saved in (first, second)  # what the call had acted on when the batch was read
    await real_redis.xadd(call.in_pcm, {b"end": b"1"})
    assert await asyncio.wait_for(feeding, TIMEOUT_S) == "caller_hung_up"
    await reader.stop()
