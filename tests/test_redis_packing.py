"""Commands packed by hiredis's C packer (shared/runtime/redis_io.py) are the bytes redis-py's
own packer makes, refusals included, and a client from connect() round-trips through them."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from shared.runtime.redis_io import _connection_class, connect
from shared.runtime.settings import Settings

COMMANDS: list[tuple[Any, ...]] = [
    ("XADD", b"call:{CA1}:in.pcm", "MAXLEN", "~", 1000, b"1-1", b"a", b"\x00" * 960, b"s", 12),
    ("XREAD", "COUNT", 64, "BLOCK", 250, "STREAMS", b"a", b"b", b"0-0", b"5-1"),
    ("HSET", b"meta", "greeted", "é", "n", -3, "f", 0.1),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT LIST",),
    ("SET", "k", b"x" * 100_000),
]


@pytest.mark.parametrize("args", COMMANDS)
def test_the_same_bytes_as_redis_py(args: tuple[Any, ...]) -> None:
    packing = _connection_class("redis://127.0.0.1:1/0")
    assert packing is not None
    assert b"".join(packing().pack_command(*args)) == b"".join(Connection().pack_command(*args))


@pytest.mark.parametrize("bad", [True, None, object()])
def test_what_redis_py_refuses_is_refused(bad: object) -> None:
    packing = _connection_class("redis://127.0.0.1:1/0")
    assert packing is not None
    with pytest.raises(DataError):
        packing().pack_command("SET", "k", bad)


def test_tls_and_other_schemes_keep_their_connection() -> None:
    from redis.asyncio.connection import SSLConnection

    tls = _connection_class("rediss://u:p@host:6380/0")
    assert tls is not None and issubclass(tls, SSLConnection)
    assert _connection_class("unix:///tmp/redis.sock") is None


async def test_a_client_from_connect_works(redis_server: Any) -> None:
    client = connect(Settings(redis_url=redis_server.url))
    try:
        entry = await client.xadd(b"packing:test", {b"a": b"\x00\x01" * 480, b"n": 7})
        (got,) = await client.xrange(b"packing:test")
        assert got == (entry, {b"a": b"\x00\x01" * 480, b"n": b"7"})
    finally:
        await client.delete(b"packing:test")
        await client.aclose()
