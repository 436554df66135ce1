"""The lean round trips of the per-frame loops (``shared/runtime/resp.py``), against a real Redis:
the same replies as redis-py's pipeline, and the same errors when the connection fails."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.runtime.redis_io import connect, is_duplicate_id, is_transient
from shared.runtime.resp import (
    PipelineRoundTrips,
    RespConnection,
    _error,
    round_trips,
    xadd_command,
    xread_command,
)
from shared.runtime.settings import load_settings

TIMEOUT_S = 5.0


def _commands() -> list[Any]:
    return [
        xadd_command(b"s", {b"a": b"\x00\xff" * 80, b"s": 7}, None, 100),
        ("EXPIRE", b"s", 60),
        xadd_command(b"s", {b"a": b"x"}, b"1-1"),  # below the last ID: refused
        ("XADD", b"not-a-stream-command"),  # wrong arity: refused
        xread_command({b"s": b"0-0", b"empty": b"0-0"}, 0, 10),  # BLOCK 0 with data: at once
        ("XREAD", "COUNT", 5, "STREAMS", b"empty", b"0-0"),  # nothing: nil
    ]


async def test_replies_match_redis_pys_pipeline(real_redis: aioredis.Redis) -> None:
    lean = round_trips(connect(load_settings(redis_url=_url(real_redis))), "read")
    assert isinstance(lean, RespConnection)
    piped = PipelineRoundTrips(real_redis)
    try:
        got = await lean.execute(_commands(), TIMEOUT_S)
        await real_redis.delete(b"s")
        want = await piped.execute(_commands(), TIMEOUT_S)
    finally:
        lean.close()
    assert len(got) == len(want) == 6
    assert isinstance(got[0], bytes) and bool(got[1]) == bool(want[1]) is True
    for refused in (2, 3):
        assert type(got[refused]) is type(want[refused])
        assert str(got[refused]) == str(want[refused])
    assert is_duplicate_id(got[2]) and not is_transient(got[2])
    [(stream, [(entry_id, fields)])] = got[4]
    assert stream == b"s" and entry_id == got[0]
    assert fields == {b"a": b"\x00\xff" * 80, b"s": b"7"}  # values as bytes, as redis-py has them
    [(w_stream, [(_, w_fields)])] = want[4]
    assert (w_stream, w_fields) == (stream, fields)
    assert got[5] == want[5] == []


def _url(client: aioredis.Redis, user: str = "", password: str = "", db: int = 0) -> str:
    kw = client.connection_pool.connection_kwargs
    auth = f"{user}:{password}@" if password else ""
    return f"redis://{auth}{kw['host']}:{kw['port']}/{db}"


async def test_user_password_and_db_from_the_url(real_redis: aioredis.Redis) -> None:
    await real_redis.execute_command("ACL", "SETUSER", "gw", "on", ">s3cret", "~*", "+@all")
    try:
        lean = round_trips(
            connect(load_settings(redis_url=_url(real_redis, "gw", "s3cret", 3))), "read"
        )
        [entry_id] = await lean.execute([xadd_command(b"in", {b"a": b"1"})], TIMEOUT_S)
        lean.close()
        db3 = aioredis.from_url(_url(real_redis, db=3))
        assert await db3.xrange(b"in") == [(entry_id, {b"a": b"1"})]
        assert await real_redis.exists(b"in") == 0  # not db 0
        await db3.flushdb()
        await db3.aclose()
        wrong = round_trips(
            connect(load_settings(redis_url=_url(real_redis, "gw", "nope"))), "read"
        )
        with pytest.raises(AuthenticationError):  # what redis-py raises for it
            await wrong.execute([("PING",)], TIMEOUT_S)
    finally:
        await real_redis.execute_command("ACL", "DELUSER", "gw")


async def test_a_killed_connection_fails_the_batch_and_the_next_connects(
    real_redis: aioredis.Redis,
) -> None:
    lean = round_trips(connect(load_settings(redis_url=_url(real_redis))), "read")
    await lean.execute([("CLIENT", "SETNAME", "lean")], TIMEOUT_S)
    reading = asyncio.ensure_future(lean.execute([xread_command({b"s": b"$"}, 5000, 1)], 10.0))
    await asyncio.sleep(0)  # the read is sent
    for _ in range(100):
        if "name=lean" in str(await real_redis.execute_command("CLIENT", "LIST")):
            break
    await real_redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    with pytest.raises(RedisConnectionError) as lost:
        await asyncio.wait_for(reading, TIMEOUT_S)
    assert is_transient(lost.value)
    assert await lean.execute([("PING",)], TIMEOUT_S) == [b"PONG"]  # connected again
    lean.close()


async def test_a_silent_server_times_out_and_a_cancel_leaves_no_reply_behind(
    real_redis: aioredis.Redis,
) -> None:
    lean = round_trips(connect(load_settings(redis_url=_url(real_redis))), "read")
    with pytest.raises(RedisTimeoutError):
        await lean.execute([xread_command({b"s": b"$"}, 2000, 1)], 0.05)
    read = asyncio.ensure_future(lean.execute([xread_command({b"s": b"$"}, 2000, 1)], 10.0))
    await asyncio.sleep(0.01)
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    await real_redis.xadd(b"s", {b"a": b"late"})  # would answer the cancelled read
    assert await lean.execute([("PING",)], TIMEOUT_S) == [b"PONG"]  # not the stale reply
    lean.close()


async def test_an_unreachable_server_is_a_retry() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    lean = round_trips(connect(load_settings(redis_url=f"redis://127.0.0.1:{port}/0")), "read")
    with pytest.raises(RedisConnectionError) as refused:
        await lean.execute([("PING",)], TIMEOUT_S)
    assert is_transient(refused.value)


def test_other_servers_go_through_redis_pys_pipeline() -> None:
    assert isinstance(round_trips(fakeredis.FakeAsyncRedis(), "read"), PipelineRoundTrips)
    tls = connect(load_settings(redis_url="rediss://127.0.0.1:6380/0"))
    assert isinstance(round_trips(tls, "read"), PipelineRoundTrips)
    unix = aioredis.from_url("unix:///tmp/redis.sock")
    assert isinstance(round_trips(unix, "read"), PipelineRoundTrips)


def test_error_replies_get_redis_pys_classes() -> None:
    assert isinstance(_error(ResponseError("LOADING Redis is loading")), BusyLoadingError)
    assert is_transient(_error(ResponseError("LOADING Redis is loading")))
    assert is_transient(_error(ResponseError("ERR max number of clients reached")))
    assert is_transient(_error(ResponseError("MASTERDOWN Link with MASTER is down")))
    assert str(_error(ResponseError("ERR unknown command"))) == "unknown command"
    refused = _error(ResponseError("WRONGTYPE Operation against a key"))
    assert type(refused) is ResponseError and not is_transient(refused)
