"""Connections to Redis are not lost across many calls, and the pool is not redis-py's 100.

Every call holds a blocking read per stage, cancelled when the call ends. A cancel that redis-py
(through Python 3.11's ``asyncio.wait_for``) swallows left that read looping for a call that was
over, holding its connection: an in-process edge with 25-call waves on a real redis-server held
91 connections after about 250 calls and then refused calls at redis-py 8's default cap of 100.
``outlasting_cancel`` makes the caller's cancellation certain; the tests pin both fixes.
"""

from __future__ import annotations

import asyncio

import fakeredis
import pytest

from shared.runtime.redis_io import MAX_CONNECTIONS, connect, outlasting_cancel
from shared.runtime.settings import load_settings
from sim.speech import speech
from sim.twilio_call import place_call
from tests.conftest import RedisServer, wait_for
from tests.stack import running_edge


@pytest.mark.redis_server
async def test_an_edge_keeps_no_connection_of_calls_that_ended(redis_server: RedisServer) -> None:
    settings = load_settings(redis_url=redis_server.url, edge_host="127.0.0.1", edge_port=0)
    client = connect(settings)
    await client.flushall()
    assert client.connection_pool.max_connections == MAX_CONNECTIONS
    audio = speech("Hi there.")
    async with running_edge(settings, client) as port:
        url = f"ws://127.0.0.1:{port}/media"
        for _ in range(4):  # waves of short calls that end together, no reply ever coming
            results = await asyncio.gather(
                *(
                    place_call(url, audio, hold_after_s=0.1, max_duration_s=5, wait_for_reply=False)
                    for _ in range(25)
                ),
                return_exceptions=True,
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            assert not failed, failed[:3]

        def held() -> int:
            return len(client.connection_pool._in_use_connections)  # type: ignore[attr-defined]

        # The reads of ended calls finish within their BLOCK (1 s) and give their connection back.
        await wait_for(lambda: held() <= 2, timeout=5)
    await client.aclose()


async def test_a_cancelled_caller_does_not_cancel_its_command() -> None:
    finished = asyncio.Event()

    async def command() -> str:
        await asyncio.sleep(0.05)
        finished.set()  # the connection would be given back here
        return "reply"

    caller = asyncio.create_task(outlasting_cancel(command()))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(finished.wait(), 1)


class CancelSwallowingRedis(fakeredis.FakeAsyncRedis):
    """A client whose blocking read swallows the first cancellation of a task, as Python 3.11's
    ``asyncio.wait_for`` inside redis-py can when the cancel lands as the read completes: the
    read just returns nothing."""

    swallowed: set[asyncio.Task[object]] = set()

    async def xread(self, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        try:
            return await super().xread(*args, **kwargs)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task in self.swallowed:
                raise
            self.swallowed.add(task)
            return []


async def test_a_call_reader_ends_with_its_call_even_if_the_client_swallows_the_cancel() -> None:
    """Before, a reader whose cancel was swallowed went on reading for a call that was over,
    holding a connection and a round trip a second, for the life of the process."""
    settings = load_settings(edge_host="127.0.0.1", edge_port=0)
    client = CancelSwallowingRedis(server=fakeredis.FakeServer())
    async with running_edge(settings, client) as port:
        url = f"ws://127.0.0.1:{port}/media"
        await asyncio.gather(
            *(
                place_call(url, speech("Hi."), hold_after_s=0.1, wait_for_reply=False)
                for _ in range(5)
            )
        )

        def readers() -> list[asyncio.Task[object]]:  # the calls' senders, the shared read
            return [
                t
                for t in asyncio.all_tasks()
                if "_send_replies" in t.get_coro().__qualname__ or t.get_name() == "edge-replies"
            ]

        await wait_for(lambda: not readers(), timeout=5)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0", "unix:///tmp/none.sock"]
)
def test_connections_pack_commands_with_hiredis_to_the_same_bytes(url: str) -> None:
    """The C packer (redis-py's asyncio client packs in Python, the edge's largest own cost per
    frame) on every kind of connection, and the same bytes on the wire as redis-py's."""
    from redis.asyncio.connection import Connection

    pool = connect(load_settings(redis_url=url)).connection_pool
    assert pool.connection_class.__name__.startswith("HiredisPacked")
    assert issubclass(pool.connection_class, pool.connection_class.__mro__[1])
    command = ("XADD", b"call:{CA1}:in.pcmu", "MAXLEN", "~", 3000, b"17-0", b"a", b"\0\xff")
    more = ("CONFIG GET", "maxmemory", 1.5, memoryview(b"mv"), "é")
    for args in (command, more):
        ours = b"".join(pool.connection_class().pack_command(*args))
        assert ours == b"".join(Connection().pack_command(*args))
