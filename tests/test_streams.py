"""The stream contract: keys, entry codecs, and the Redis behaviour the pipeline leans on."""

from __future__ import annotations

from pathlib import Path

import fakeredis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import ResponseError

from shared import streams as s
from shared.runtime.redis_io import BatchedStreamWriter, is_duplicate_id, last_entry_id


def test_every_call_key_shares_the_call_sid_hash_tag() -> None:
    keys = s.CallKeys.for_call("CA" + "0" * 32)
    for key in keys.all():
        assert key.startswith(b"call:{CA" + b"0" * 32 + b"}:")
    assert len(set(keys.all())) == len(keys.all())


@pytest.mark.parametrize("bad", ["", "C", "CA{x}", "CA x", "CA\n", "a" * 65, "CA}"])
def test_call_sids_that_could_escape_their_slot_are_refused(bad: str) -> None:
    with pytest.raises(s.StreamEntryError):
        s.CallKeys.for_call(bad)


def _bytes_fields(fields: dict[bytes, bytes | int]) -> dict[bytes, bytes]:
    """What Redis gives back: every value as bytes."""
    return {k: v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


def test_inbound_frame_round_trip_keeps_raw_audio() -> None:
    frame = s.InboundFrame(bytes(range(160)), 7, 120, 1_700_000_000_000_000)
    assert s.decode_inbound(_bytes_fields(frame.encode())) == frame
    assert s.decode_inbound(_bytes_fields(s.StreamEnd("stop").encode())) == s.StreamEnd("stop")


def test_outbound_chunk_round_trip() -> None:
    chunk = s.OutboundChunk(b"\x01\x02" * 100, "resp_1", "item_9", 40_000, 123)
    assert s.decode_outbound(_bytes_fields(chunk.encode())) == chunk


def test_control_command_event_lifecycle_round_trips() -> None:
    for control in (s.MarkPlayed("item_1:100"), s.DtmfPressed("7")):
        assert s.decode_control(_bytes_fields(control.encode())) == control
    for command in (s.ClearPlayback("resp_1"), s.HangUp("bye")):
        assert s.decode_command(_bytes_fields(command.encode())) == command
    event = s.CallEvent("transcript", {"role": "caller", "text": "héllo", "item_id": "i"})
    assert s.decode_event(_bytes_fields(event.encode())) == event
    started = s.CallStarted("CA1", "MZ1", "AC1", {"caller": "+1555"}, 99)
    assert s.decode_lifecycle(_bytes_fields(started.encode())) == started


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {b"k": b"zz"},
        {b"k": b"a"},
        {b"k": b"a", b"a": b"x", b"s": b"one", b"t": b"0", b"u": b"0"},
        {b"k": b"a", b"a": b"x", b"s": b"1", b"t": b"0"},
    ],
)
def test_undecodable_inbound_entries_raise_the_contract_error(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(s.StreamEntryError):
        s.decode_inbound(fields)


@given(st.dictionaries(st.binary(max_size=4), st.binary(max_size=8), max_size=6))
def test_garbage_never_raises_anything_but_the_contract_error(fields: dict[bytes, bytes]) -> None:
    for decode in (
        s.decode_inbound,
        s.decode_outbound,
        s.decode_control,
        s.decode_command,
        s.decode_event,
        s.decode_lifecycle,
    ):
        try:
            decode(fields)
        except s.StreamEntryError:
            pass


def test_lifecycle_with_bad_parameters_is_refused() -> None:
    fields = {b"k": b"started", b"c": b"CA1", b"p": b"[1,2]", b"u": b"1"}
    with pytest.raises(s.StreamEntryError):
        s.decode_lifecycle(fields)
    with pytest.raises(s.StreamEntryError):
        s.decode_lifecycle({b"k": b"started", b"c": b"CA{x}", b"u": b"1"})


def test_stream_id_after() -> None:
    assert s.stream_id_after(b"5-9") == b"5-10"


async def test_mirrored_ids_make_rewrites_idempotent(any_redis) -> None:  # type: ignore[no-untyped-def]
    """The transcoder's exactly-once rests on Redis refusing an ID that is not above the last."""
    entry_id = await any_redis.xadd(b"src", {b"k": b"a"})
    await any_redis.xadd(b"dst", {b"k": b"a"}, id=entry_id)
    with pytest.raises(ResponseError) as err:
        await any_redis.xadd(b"dst", {b"k": b"a"}, id=entry_id)
    assert is_duplicate_id(err.value)
    assert await last_entry_id(any_redis, b"dst") == entry_id
    assert await last_entry_id(any_redis, b"missing") is None


async def test_batched_writer_keeps_order_and_sets_expiry(any_redis) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    writer = BatchedStreamWriter(any_redis, maxlen=1000)
    task = asyncio.create_task(writer.run())
    for i in range(300):
        writer.add(b"s1" if i % 2 else b"s2", {b"n": i}, expire_s=60 if i < 2 else None)
    await asyncio.wait_for(writer.flush(), 5)
    task.cancel()
    s1 = [int(f[b"n"]) for _, f in await any_redis.xrange(b"s1")]
    assert s1 == list(range(1, 300, 2))
    assert 0 < await any_redis.ttl(b"s1") <= 60
    assert writer.batches < 300  # entries queued together went together


async def test_batched_writer_outlives_a_client_fault_and_keeps_the_batch() -> None:
    # A cluster client caught mid-failover has raised AttributeError from inside execute().
    import asyncio

    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    real_pipeline = client.pipeline
    faults = iter([True, True, False])

    def flaky_pipeline(transaction: bool = True):  # type: ignore[no-untyped-def]
        pipe = real_pipeline(transaction=transaction)
        if next(faults, False):

            async def broken(raise_on_error: bool = True):  # type: ignore[no-untyped-def]
                raise AttributeError("'NoneType' object has no attribute 'writelines'")

            pipe.execute = broken  # type: ignore[method-assign]
        return pipe

    client.pipeline = flaky_pipeline  # type: ignore[method-assign]
    writer = BatchedStreamWriter(client, maxlen=1000)
    task = asyncio.create_task(writer.run())
    writer.add(b"s", {b"n": 1})
    await asyncio.wait_for(writer.flush(), 5)
    assert [f[b"n"] for _, f in await client.xrange(b"s")] == [b"1"]
    assert not task.done() and writer.failures == 0

    # A batch that fails every time is given up after a few tries, counted, and the writer goes on.
    faults = iter([True] * (BatchedStreamWriter.UNEXPECTED_RETRIES + 1))
    writer.add(b"s", {b"n": 2})
    writer.add(b"s", {b"n": 3})
    await asyncio.wait_for(writer.flush(), 30)
    assert writer.failures == 2 and not task.done()
    writer.add(b"s", {b"n": 4})
    await asyncio.wait_for(writer.flush(), 5)
    assert [f[b"n"] for _, f in await client.xrange(b"s")] == [b"1", b"4"]
    task.cancel()
    await client.aclose()


class TwoNodeRedis(fakeredis.FakeAsyncRedis):
    """Streams named b:* live on node "b", whose pipelines fail while ``b_down`` > 0."""

    b_down = 0
    b_reply_errors = 0

    def get_node_from_key(self, key: bytes):  # type: ignore[no-untyped-def]
        from types import SimpleNamespace

        return SimpleNamespace(name="b" if key.startswith(b"b:") else "a")

    def pipeline(self, transaction: bool = True, shard_hint: object = None):  # type: ignore[no-untyped-def,override]
        from redis.exceptions import ConnectionError as RedisConnectionError

        pipe = super().pipeline(transaction=transaction)
        real_execute = pipe.execute
        owner = self
        keys: list[bytes] = []
        real_command = pipe.execute_command

        def execute_command(*args, **kwargs):  # type: ignore[no-untyped-def]
            if args[0] == "XADD":
                keys.append(args[1])
            return real_command(*args, **kwargs)

        async def execute(raise_on_error: bool = True):  # type: ignore[no-untyped-def]
            on_b = any(k.startswith(b"b:") for k in keys)
            if on_b and owner.b_down > 0:
                owner.b_down -= 1
                raise RedisConnectionError("Error 111 connecting to node b")
            results = await real_execute(raise_on_error=raise_on_error)
            if on_b and owner.b_reply_errors > 0:  # the node died after the writes were sent
                owner.b_reply_errors -= 1
                return [RedisConnectionError("Connection closed by server.") for _ in results]
            return results

        pipe.execute_command = execute_command  # type: ignore[method-assign]
        pipe.execute = execute  # type: ignore[method-assign]
        return pipe


async def test_batched_writer_a_failing_node_holds_back_only_its_own_streams() -> None:
    import asyncio

    client = TwoNodeRedis(server=fakeredis.FakeServer())
    client.b_down = 3
    writer = BatchedStreamWriter(client, maxlen=1000)
    task = asyncio.create_task(writer.run())
    for i in range(20):
        writer.add(b"a:s", {b"n": i})
        writer.add(b"b:s", {b"n": i})
    # Node a's writes land at once, exactly once, while node b is still failing: a flush of
    # a's stream returns without waiting for b.
    await asyncio.wait_for(writer.flush(b"a:s"), 5)
    assert [int(f[b"n"]) for _, f in await client.xrange(b"a:s")] == list(range(20))
    assert client.b_down > 0 and await client.xlen(b"b:s") == 0
    # Writes queued for b while it is down keep their order behind the failed ones.
    for i in range(20, 25):
        writer.add(b"b:s", {b"n": i})
        writer.add(b"a:s", {b"n": i})
    await asyncio.wait_for(writer.flush(), 10)
    assert [int(f[b"n"]) for _, f in await client.xrange(b"b:s")] == list(range(25))
    assert [int(f[b"n"]) for _, f in await client.xrange(b"a:s")] == list(range(25))
    assert writer.failures == 0

    # A node that dies after taking the writes answers with errors in place: they are retried
    # (at least once: here they had landed, so they appear twice) and never counted as lost.
    client.b_reply_errors = 1
    writer.add(b"b:t", {b"n": 1})
    await asyncio.wait_for(writer.flush(), 10)
    assert [f[b"n"] for _, f in await client.xrange(b"b:t")] == [b"1", b"1"]
    assert writer.failures == 0
    # With IDs of its own (the stream's only writer), the repeat is refused: it lands once.
    client.b_reply_errors = 1
    writer.add(b"b:u", {b"n": 1}, entry_id=b"1000-1")
    writer.add(b"b:u", {b"n": 2}, entry_id=b"1000-2")
    await asyncio.wait_for(writer.flush(), 10)
    assert [(i, f[b"n"]) for i, f in await client.xrange(b"b:u")] == [
        (b"1000-1", b"1"),
        (b"1000-2", b"2"),
    ]
    assert writer.failures == 0
    task.cancel()
    await client.aclose()


async def test_a_long_outage_bounds_each_streams_waiting_audio_and_keeps_its_control() -> None:
    import asyncio

    from shared.runtime.observability import REJECTED

    def dropped() -> float:
        return REJECTED.labels("redis_backlog_full")._value.get()  # type: ignore[attr-defined]

    client = TwoNodeRedis(server=fakeredis.FakeServer())
    client.b_down = 10**9  # node b is away for as long as the test wants
    writer = BatchedStreamWriter(client, maxlen=100)
    task = asyncio.create_task(writer.run())
    before = dropped()
    queued = [writer.add(b"b:audio", {b"n": i}, droppable=True) for i in range(250)]
    # Only as many as the stream keeps wait; the rest are refused and counted, not kept.
    assert queued == [True] * 100 + [False] * 150
    assert dropped() - before == 150
    # The stream's end still gets in line, and another call's stream has its own allowance.
    assert writer.add(b"b:audio", {b"n": b"end"}, droppable=True) is False
    assert writer.add(b"b:audio", {b"n": b"end"}) is True
    assert all(writer.add(b"b:other", {b"n": i}, droppable=True) for i in range(100))
    # Streams on a node that is up are not held back at all.
    assert writer.add(b"a:audio", {b"n": 1}, droppable=True)
    await asyncio.wait_for(writer.flush(b"a:audio"), 5)
    assert await client.xlen(b"a:audio") == 1

    client.b_down = 0  # Redis is back: what waited lands, in order, and audio flows again
    await asyncio.wait_for(writer.flush(), 10)
    kept = [f[b"n"] for _, f in await client.xrange(b"b:audio")]
    assert kept == [str(i).encode() for i in range(100)] + [b"end"]
    assert await client.xlen(b"b:other") == 100
    assert writer.add(b"b:audio", {b"n": 1}, droppable=True)
    await asyncio.wait_for(writer.flush(), 5)
    assert dropped() - before == 151 and writer.failures == 0
    task.cancel()
    await client.aclose()


@pytest.mark.redis_server
async def test_a_cluster_connection_lost_is_retried_and_our_own_bug_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the gateway's loops see through the public API of its cluster client, not which
    file in redis-py raised: a connection the server closed is an error they retry, and an
    error of ours in code redis-py calls (our command packer) is not."""
    import asyncio
    import shutil
    import subprocess

    import redis.asyncio as aioredis

    from shared.runtime import redis_io
    from shared.runtime.redis_io import RETRYABLE, connect, is_transient, prepare
    from shared.runtime.settings import Settings
    from tests.conftest import cluster_port, wait_for, wait_for_line
    from tools.local_redis import redis_server_argv

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    port = cluster_port()
    proc = subprocess.Popen(
        redis_server_argv(port, tmp_path, binary=binary, cluster=True),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    admin = aioredis.Redis(port=port)
    try:
        wait_for_line(proc, b"Ready to accept connections", timeout=10)
        await admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)  # a one-node cluster

        async def cluster_ok() -> bool:
            return b"cluster_state:ok" in await admin.execute_command("CLUSTER", "INFO")

        await wait_for(cluster_ok, timeout=10)
        client = connect(Settings(redis_url=f"redis://127.0.0.1:{port}/0", redis_cluster=True))
        await prepare(client)
        writer = BatchedStreamWriter(client, maxlen=1000)
        task = asyncio.create_task(writer.run())
        for round_ in range(3):
            for i in range(20):
                writer.add(b"{call}:audio", {b"n": f"{round_}.{i}"})
            await asyncio.wait_for(writer.flush(), 10)
            # The server closes every connection the gateway's client holds.
            assert await admin.client_kill_filter(_type="normal", skipme=True) >= 1
            try:
                await client.xlen(b"{call}:audio")
            except Exception as lost:  # the command that finds its connection gone
                assert isinstance(lost, RETRYABLE) and is_transient(lost), repr(lost)
        assert await client.xlen(b"{call}:audio") == 60  # nothing lost, nothing doubled
        assert writer.failures == 0
        task.cancel()

        def bug(*args: object) -> list[bytes]:
            raise AttributeError("a bug of ours")

        monkeypatch.setattr(redis_io, "_pack", bug)
        with pytest.raises(AttributeError) as ours:
            await client.xlen(b"{call}:audio")
        assert not isinstance(ours.value, RETRYABLE) and not is_transient(ours.value)
        monkeypatch.undo()
        await client.aclose()
    finally:
        await admin.aclose()
        proc.terminate()
        proc.wait(5)


def test_inbound_ids_increase_from_the_call_start() -> None:
    ids = s.InboundIds(1_700_000_000_123)
    assert [ids.next() for _ in range(3)] == [
        b"1700000000123-1",
        b"1700000000123-2",
        b"1700000000123-3",
    ]


def test_a_calls_registration_names_its_start_and_whether_it_was_lost() -> None:
    from shared.streams import (
        META_REANNOUNCED,
        META_STARTED_US,
        META_STREAM_SID,
        CallStarted,
        call_meta,
        call_ttl_s,
    )

    started = CallStarted("CA" + "1" * 32, "MZ1", "AC1", {}, 5_000_000)
    first = call_meta(started)
    assert first[META_STARTED_US] == 5_000_000 and first[META_STREAM_SID] == b"MZ1"
    assert META_REANNOUNCED not in first
    assert call_meta(started, reannounced=True)[META_REANNOUNCED] == b"1"
    # Keys live for what is left of the call's time; once spent, it is not registered again.
    assert call_ttl_s(5_000_000, 5_000_000, 3600) == 3600
    assert call_ttl_s(5_000_000, 5_000_000 + 3_599_500_000, 3600) == 1
    assert call_ttl_s(5_000_000, 5_000_000 + 3_600_000_000, 3600) is None
    assert call_ttl_s(5_000_000, 0, 3600) == 3600  # a clock that stepped back
