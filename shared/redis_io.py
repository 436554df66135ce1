"""Redis connections and the small write helpers every stage uses.

Connections are made from ``REDIS_URL`` alone (``redis://``, ``rediss://`` with TLS, ACL user and
password in the URL). Blocking stream reads hold a connection each, so the pool is unbounded;
health checks and keepalive notice a dead server instead of waiting on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.backoff import Backoff
from shared.observability import reject
from shared.settings import Settings

# Errors that mean "the server is away, try again", as opposed to a bad command.
RETRYABLE = (RedisConnectionError, RedisTimeoutError, RedisClusterException, ConnectionError, OSError)

log = logging.getLogger("gateway.redis")
# Every blocking read here blocks for at most a second; a reply that takes ten means the
# connection is dead without having said so, and the caller's retry loop should take over.
SOCKET_TIMEOUT_S = 10.0


def connect(settings: Settings) -> aioredis.Redis:
    """An asyncio Redis client for ``REDIS_URL`` (bytes in, bytes out); a cluster client with
    ``REDIS_CLUSTER=1`` (every command the pipeline issues stays within one slot)."""
    if settings.redis_cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(  # type: ignore[return-value]
            settings.redis_url,
            decode_responses=False,
            socket_keepalive=True,
            socket_connect_timeout=2.0,
            socket_timeout=SOCKET_TIMEOUT_S,
            max_connections=2**20,
        )
    return aioredis.from_url(
        settings.redis_url,
        decode_responses=False,
        health_check_interval=15,
        socket_keepalive=True,
        socket_connect_timeout=2.0,
        socket_timeout=SOCKET_TIMEOUT_S,
        max_connections=None,
    )


async def prepare(redis: aioredis.Redis) -> None:
    """Finish setting a client up before many tasks share it: a cluster client discovers its
    nodes lazily, and several tasks racing to do so at once broke its connections in tests."""
    initialize = getattr(redis, "initialize", None)
    if initialize is None:
        return
    backoff = Backoff()
    while True:
        try:
            await initialize()
            return
        except RETRYABLE as exc:
            log.warning("redis cluster not reachable yet (%s)", exc)
            await asyncio.sleep(backoff.next_delay())


def is_duplicate_id(error: BaseException) -> bool:
    """True for XADD's refusal of an explicit ID that is not above the stream's last one."""
    return isinstance(error, ResponseError) and "equal or smaller" in str(error)


def is_nogroup(error: BaseException) -> bool:
    """The consumer group (or its stream) is gone: Redis lost its data, or a blocked read's key
    was deleted under it (``UNBLOCKED``). Either way: recreate the group and read again."""
    return isinstance(error, ResponseError) and str(error).startswith(("NOGROUP", "UNBLOCKED"))


async def ensure_group(redis: aioredis.Redis, stream: bytes, group: bytes) -> None:
    """Create a consumer group reading ``stream`` from its start (idempotent)."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def last_entry_id(redis: aioredis.Redis, stream: bytes) -> bytes | None:
    """The ID of a stream's newest entry, or None when the stream is empty or missing."""
    newest = await redis.xrevrange(stream, count=1)
    return newest[0][0] if newest else None


async def expire_all(redis: aioredis.Redis, keys: Iterable[bytes], seconds: int) -> None:
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.expire(key, seconds)
    await pipe.execute()


class BatchedStreamWriter:
    """Appends entries to streams from many calls through one writer task.

    Under load, entries that arrive during a round trip go together in the next pipeline, so the
    cost per frame falls as calls rise; when idle, an entry leaves at once. Order is kept per
    stream. On a connection error the batch is retried with backoff, not dropped.
    """

    UNEXPECTED_RETRIES = 5

    def __init__(self, redis: aioredis.Redis, maxlen: int, max_batch: int = 512) -> None:
        self._redis = redis
        self._maxlen = maxlen
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[bytes, Mapping[bytes, Any], int | None, int | None]]
        self._queue = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self.batches = 0
        self.entries = 0
        self.failures = 0

    def add(
        self,
        stream: bytes,
        fields: Mapping[bytes, Any],
        *,
        maxlen: int | None = -1,
        expire_s: int | None = None,
    ) -> None:
        """Queue one XADD (``maxlen=None`` for no trim, -1 for the default); never blocks."""
        self._idle.clear()
        self._queue.put_nowait((stream, fields, self._maxlen if maxlen == -1 else maxlen, expire_s))

    async def flush(self) -> None:
        """Wait until everything queued so far is in Redis."""
        await self._idle.wait()

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            unexpected = 0
            while True:
                pipe = self._redis.pipeline(transaction=False)
                for stream, fields, maxlen, expire_s in batch:
                    pipe.xadd(stream, dict(fields), maxlen=maxlen, approximate=True)
                    if expire_s is not None:
                        pipe.expire(stream, expire_s)
                try:
                    results = await pipe.execute(raise_on_error=False)
                except RETRYABLE as exc:
                    delay = backoff.next_delay()
                    log.warning("redis write failed, retrying in %.2fs: %s", delay, exc)
                    await asyncio.sleep(delay)
                    continue
                except Exception as exc:
                    # Not "server away" but a client fault (a cluster client caught mid-failover
                    # has raised AttributeError): retry a few times, then give the batch up,
                    # counted, rather than let one batch stop every call's writes for good.
                    unexpected += 1
                    if unexpected > self.UNEXPECTED_RETRIES:
                        self.failures += len(batch)
                        reject("redis_write_dropped", len(batch))
                        log.error("gave up a batch of %d writes after %r", len(batch), exc)
                        break
                    delay = backoff.next_delay()
                    log.warning("redis write error (%r), retrying in %.2fs", exc, delay)
                    await asyncio.sleep(delay)
                    continue
                backoff.reset()
                for result in results:
                    if isinstance(result, Exception):
                        self.failures += 1
                        log.error("redis refused a write: %s", result)
                break
            self.batches += 1
            self.entries += len(batch)
            if self._queue.empty():
                self._idle.set()
