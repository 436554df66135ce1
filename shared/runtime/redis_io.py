"""Redis connections and the small write helpers every stage uses.

Connections are made from ``REDIS_URL`` alone (``redis://``, ``rediss://`` with TLS, ACL user and
password in the URL). Blocking stream reads hold a connection each, so the pool is unbounded;
health checks and keepalive notice a dead server instead of waiting on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    DataError,
    MovedError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT, KeyT, StreamIdT

from shared.backoff import Backoff
from shared.runtime.observability import reject
from shared.runtime.resp import Command, RoundTrips, round_trips, xadd_command
from shared.runtime.settings import Settings

T = TypeVar("T")
C = TypeVar("C")

# Errors that mean "not now", as opposed to a bad command: the server is away, or a cluster is
# failing over (CLUSTERDOWN from every node until a replica takes the failed master's slots).
RETRYABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    RedisClusterException,
    ClusterDownError,
    TryAgainError,
    MovedError,
    AskError,
    BusyLoadingError,
    ConnectionError,
    OSError,
)

log = logging.getLogger("gateway.redis")
# Every blocking read here blocks for at most a second; a reply that takes ten means the
# connection is dead without having said so, and the caller's retry loop should take over.
SOCKET_TIMEOUT_S = 10.0


# Connections a process may hold. Every call holds one in a blocking read per stage, so redis-py's
# default (max_connections=None means 100 in redis-py 8) would refuse the 100th concurrent call.
MAX_CONNECTIONS = 2**16


async def outlasting_cancel(command: Awaitable[T]) -> T:
    """Await a Redis command whose caller may be cancelled, without cancelling the command.

    A call's blocking read is cancelled at every call's end, and redis-py (through Python
    3.11's ``asyncio.wait_for``) can swallow a cancel that lands as the read completes: the
    reader then went on reading for a call that was over, holding its connection, and within a
    few hundred calls an edge held 91 of redis-py's default 100 (tests/test_redis_pool.py).
    Here the command runs to its end in a task of its own (a blocking read: at most its BLOCK)
    and gives its connection back, while the caller's cancellation is certain and immediate.
    For the reads every call cancels (the edge's replies, the worker's input); the
    transcoder's call tasks, cancelled only when a claim moves, check ``task.cancelling()``.
    """
    task = asyncio.ensure_future(command)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_forget)
        raise


def _forget(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so an error after the caller left is not reported


_PACKED_CLASSES: dict[type[Any], type[Any]] = {}


def _pack(*args: Any) -> list[bytes]:
    """A command packed as redis-py's connections pack it, by hiredis's ``pack_command``: a
    first argument with spaces (``"CLIENT SETNAME"``) is several words; an argument hiredis
    cannot pack (None, a bool) is redis-py's DataError."""
    first = args[0]
    if isinstance(first, str):
        args = (*first.encode().split(), *args[1:])
    elif b" " in first:
        args = (*first.split(), *args[1:])
    # hiredis's stub types the tuple as of one element; it takes any number.
    words: Any = tuple(bytes(a) if isinstance(a, (bytearray, memoryview)) else a for a in args)
    try:
        return [hiredis.pack_command(words)]
    except TypeError as exc:
        raise DataError(str(exc)) from exc


def _hiredis_packed(cls: type[Any]) -> type[Any]:
    """``cls`` (a redis-py asyncio connection class) packing commands with hiredis's C packer.

    redis-py's asyncio connections pack every command in Python (about 11 µs for a frame's
    XADD, the largest single cost in the edge's profile); hiredis's packer gives the same bytes
    on the wire in about 2 µs."""
    packed = _PACKED_CLASSES.get(cls)
    if packed is None:

        def pack_command(self: Any, *args: Any) -> list[bytes]:
            return _pack(*args)

        packed = type(f"HiredisPacked{cls.__name__}", (cls,), {"pack_command": pack_command})
        _PACKED_CLASSES[cls] = packed
    return packed


def _pack_with_hiredis(client: C) -> C:
    """Make ``client``'s connections (a cluster's: every node's) pack with hiredis."""
    any_client: Any = client  # a Redis or a RedisCluster: they keep their pools apart
    nodes = getattr(any_client, "nodes_manager", None)
    if nodes is None:
        pool = any_client.connection_pool
        pool.connection_class = _hiredis_packed(pool.connection_class)
        return client
    kwargs = nodes.connection_kwargs
    kwargs["connection_class"] = _hiredis_packed(
        kwargs.get("connection_class", aioredis.Connection)
    )
    for node in nodes.startup_nodes.values():
        node.connection_class = _hiredis_packed(node.connection_class)
    return client


def connect(settings: Settings) -> aioredis.Redis:
    """An asyncio Redis client for ``REDIS_URL`` (bytes in, bytes out); a cluster client with
    ``REDIS_CLUSTER=1`` (every command the pipeline issues stays within one slot)."""
    if settings.redis_cluster:
        from redis.asyncio.cluster import RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # A RedisCluster is no Redis subclass, but answers the same commands the stages send
        # (every one within one slot): the stages take it as their client.
        return cast(
            aioredis.Redis,
            _pack_with_hiredis(
                RedisCluster.from_url(
                    settings.redis_url,
                    # Every caller here retries with its own backoff. The client's own retry of a
                    # failed pipeline closes every connection of the client, cutting the blocking
                    # reads of calls on healthy nodes too; failing fast keeps a node's fault to its
                    # own calls.
                    retry=Retry(NoBackoff(), 0),
                    decode_responses=False,
                    socket_keepalive=True,
                    socket_connect_timeout=2.0,
                    socket_timeout=SOCKET_TIMEOUT_S,
                    max_connections=MAX_CONNECTIONS,
                )
            ),
        )
    return _pack_with_hiredis(
        aioredis.from_url(
            settings.redis_url,
            decode_responses=False,
            health_check_interval=15,
            socket_keepalive=True,
            socket_connect_timeout=2.0,
            socket_timeout=SOCKET_TIMEOUT_S,
            max_connections=MAX_CONNECTIONS,
        )
    )


def is_transient(error: object) -> bool:
    """A reply or error that means "not now" (retry), not "never": what a pipeline's per-command
    results are checked with.

    A connection lost under redis-py is its ConnectionError, from its cluster client too
    (redis-py 8.2 and later, the floor in pyproject: before, a node's connection closed
    mid-failover leaked AttributeError or RuntimeError out of its write path). Any other error,
    such as a bug of ours in code redis-py calls, is not transient and stays what it is.
    """
    return isinstance(error, RETRYABLE)


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


async def answers(redis: aioredis.Redis, timeout_s: float = 1.0) -> bool:
    """Whether Redis answers a PING within ``timeout_s``: every stage's ``/healthz``."""
    try:
        return bool(await asyncio.wait_for(redis.ping(), timeout_s))
    except (*RETRYABLE, TimeoutError):
        return False


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
    newest: Any = await redis.xrevrange(stream, count=1)
    return newest[0][0] if newest else None


# --- typed verbs ---------------------------------------------------------------------------------
# redis-py types its replies for either kind of client (``bytes | str``) and its field arguments
# as an invariant ``dict`` of every encodable type, which a ``dict[bytes, bytes]`` is not. Every
# client here is a bytes client (``connect`` never sets ``decode_responses``), so these few
# helpers narrow the replies once, checked, and widen the arguments once, instead of an ignore
# at each call.


def _b(value: bytes | str) -> bytes:
    if isinstance(value, bytes):
        return value
    raise TypeError(f"a str reply from Redis ({value[:32]!r}): use a bytes client")


def fields_arg(fields: Mapping[bytes, bytes | int]) -> dict[FieldT, EncodableT]:
    """An entry's or a hash's fields as redis-py's ``xadd`` and ``hset(mapping=)`` take them."""
    return {key: value for key, value in fields.items()}


def streams_arg(cursors: Mapping[bytes, bytes]) -> dict[KeyT, StreamIdT]:
    """Streams and their cursors as redis-py's ``xread`` and ``xreadgroup`` take them."""
    return {stream: cursor for stream, cursor in cursors.items()}


async def read_group(
    redis: aioredis.Redis,
    group: bytes,
    consumer: str,
    cursors: Mapping[bytes, bytes],
    *,
    count: int,
    block: int | None,
) -> Any:
    """``XREADGROUP``: the reply as redis-py gives it (``[[stream, [(id, fields), ...]], ...]``
    or None). The group's name is bytes here, as every stream name; redis-py's types want a str
    and send either as the same bytes."""
    reply: Any = await redis.xreadgroup(
        group.decode(), consumer, streams_arg(cursors), count=count, block=block
    )
    return reply


async def hash_fields(redis: aioredis.Redis, key: bytes) -> dict[bytes, bytes]:
    """``HGETALL``: a hash's fields (empty when the key is missing)."""
    reply = await redis.hgetall(key)
    return {_b(name): _b(value) for name, value in reply.items()}


async def hash_field(redis: aioredis.Redis, key: bytes, name: bytes) -> bytes | None:
    """``HGET``: one field of a hash, or None."""
    value = await redis.hget(key, name)
    return None if value is None else _b(value)


async def expire_all(redis: aioredis.Redis, keys: Iterable[bytes], seconds: int) -> None:
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.expire(key, seconds)
    await pipe.execute()


@dataclass(slots=True)
class _Write:
    stream: bytes
    fields: Mapping[Any, Any]
    maxlen: int | None
    expire_s: int | None
    entry_id: bytes | None  # explicit, from the stream's only writer: a repeat is refused
    faults: int = 0  # client faults (not "server away") met by this write


class BatchedStreamWriter:
    """Appends entries to streams from many calls through one writer task.

    Under load, entries that arrive during a round trip go together in the next pipeline, so the
    cost per frame falls as calls rise; when idle, an entry leaves at once. Order is kept per
    stream. A batch goes out as one pipeline per Redis node, so a node that fails holds back
    only the writes for its own slots: they wait, in order, and are retried with backoff, while
    every other node's writes go on at once and are never sent twice. On a single Redis a lost
    connection can leave it unknown which writes of the pipeline landed; they are sent again (at
    least once), except on streams whose only writer numbers its entries (``entry_id``), which
    get each entry once.
    """

    UNEXPECTED_RETRIES = 5

    def __init__(
        self, redis: aioredis.Redis, maxlen: int, max_batch: int = 512, batch_s: float = 0.0
    ) -> None:
        self._redis = redis
        self._maxlen = maxlen
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Write] = asyncio.Queue()
        self._held: dict[bytes, list[_Write]] = {}  # per stream, behind a failed write
        self._retry_at = 0.0
        self._backoff = Backoff()
        self._idle = asyncio.Event()
        self._idle.set()
        self._unfinished: dict[bytes, int] = {}  # per stream: writes queued, held or in flight
        self._dropping: set[bytes] = set()  # streams refusing audio until their backlog clears
        self._progress: asyncio.Event | None = None  # set after a round, for stream flushes
        self._node_of = getattr(redis, "get_node_from_key", None)  # a cluster client's
        self._trips: RoundTrips = round_trips(redis, "write")  # connects at its first batch
        self._batch_s = batch_s  # REDIS_BATCH_MS: at most one round trip this often
        self._sent_at = 0.0
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
        entry_id: bytes | None = None,
        droppable: bool = False,
    ) -> bool:
        """Queue one XADD (``maxlen=None`` for no trim, -1 for the default); never blocks.

        ``entry_id``: for a stream this writer alone appends to, increasing IDs of its own make
        a write sent again (after a connection lost mid-pipeline) land once: Redis refuses the
        repeat, which counts as written.

        ``droppable`` (a call's live audio): while Redis is away, a trimmed stream's writes wait
        here, and a caller keeps sending 50 frames a second, so without a bound a long outage
        ends in an out-of-memory kill that takes every call down. A stream holding as many
        unwritten entries as its ``maxlen`` (what Redis would keep of them anyway) refuses more
        droppable writes, counted as ``redis_backlog_full``; returns whether it was queued.
        Ends, marks and other control entries are never dropped.
        """
        limit = self._maxlen if maxlen == -1 else maxlen
        waiting = self._unfinished.get(stream, 0)
        if droppable and limit is not None and waiting >= limit:
            reject("redis_backlog_full")
            if stream not in self._dropping:
                self._dropping.add(stream)
                log.warning(
                    "redis writes backed up: %d entries of %r waiting; dropping its new audio",
                    waiting,
                    stream,
                )
            return False
        self._idle.clear()
        self._unfinished[stream] = waiting + 1
        self._queue.put_nowait(_Write(stream, fields, limit, expire_s, entry_id))
        return True

    async def flush(self, *streams: bytes) -> None:
        """Wait until everything queued so far for ``streams`` is in Redis (or given up); with
        no streams, until the writer is idle. A call's end flushes only its own streams: under
        load the writer as a whole may not be idle for a long while."""
        if not streams:
            await self._idle.wait()
            return
        while any(stream in self._unfinished for stream in streams):
            if self._progress is None:
                self._progress = asyncio.Event()
            await self._progress.wait()

    def _finished(self, write: _Write) -> None:
        left = self._unfinished.get(write.stream, 1) - 1
        if left > 0:
            self._unfinished[write.stream] = left
        else:
            self._unfinished.pop(write.stream, None)
            self._dropping.discard(write.stream)

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self._trips.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            arrived: list[_Write] = []  # taken from the queue while waiting, first in line
            if self._queue.empty():
                if not self._held:
                    self._idle.set()
                    arrived.append(await self._queue.get())
                else:
                    try:  # held writes are due at _retry_at, new ones go at once
                        wait = max(0.0, self._retry_at - loop.time())
                        arrived.append(await asyncio.wait_for(self._queue.get(), wait))
                    except TimeoutError:
                        pass
            send: list[_Write] = []
            retrying = bool(self._held) and loop.time() >= self._retry_at
            if retrying:
                for writes in self._held.values():
                    send.extend(writes)
                self._held.clear()
            wait = self._sent_at + self._batch_s - loop.time()
            if wait > 0 and (arrived or not self._queue.empty()):
                await asyncio.sleep(wait)  # what arrives meanwhile goes in the same round trip
            while arrived or (len(send) < self._max_batch and not self._queue.empty()):
                write = arrived.pop() if arrived else self._queue.get_nowait()
                held = self._held.get(write.stream)
                if held is not None:
                    held.append(write)  # behind its stream's failed writes
                else:
                    send.append(write)
            if not send:
                continue
            self._sent_at = loop.time()
            failed = [w for group in await self._send_per_node(send) for w in group]
            if self._progress is not None:  # wake stream flushes to look again
                self._progress.set()
                self._progress = None
            for write in failed:  # in sending order, so each stream keeps its order
                self._held.setdefault(write.stream, []).append(write)
            if failed:
                self._retry_at = loop.time() + self._backoff.next_delay()
            elif retrying:
                self._backoff.reset()

    async def _send_per_node(self, writes: list[_Write]) -> list[list[_Write]]:
        if self._node_of is None:
            return [await self._send(writes)]
        groups: dict[str, list[_Write]] = {}
        for write in writes:
            try:
                node = self._node_of(write.stream).name
            except Exception:  # slot not covered mid-failover: the pipeline will say so
                node = ""
            groups.setdefault(node, []).append(write)
        if len(groups) == 1:
            return [await self._send(writes)]
        return list(await asyncio.gather(*(self._send(g) for g in groups.values())))

    async def _send(self, writes: list[_Write]) -> list[_Write]:
        """One pipeline; returns the writes to try again."""
        commands: list[Command] = []
        for w in writes:
            commands.append(xadd_command(w.stream, w.fields, w.entry_id, w.maxlen))
            if w.expire_s is not None:
                commands.append(("EXPIRE", w.stream, w.expire_s))
        self.batches += 1
        try:
            results = iter(await self._trips.execute(commands, SOCKET_TIMEOUT_S))
        except RETRYABLE as exc:
            log.warning("redis write failed, will retry: %s", exc)
            return writes
        except Exception as exc:
            # Not "server away" but a client fault (a cluster client caught mid-failover has
            # raised AttributeError): retry a few times, then give the writes up, counted,
            # rather than let them hold their streams back for good.
            log.warning("redis write error, will retry: %r", exc)
            for w in writes:
                w.faults += 1
            lost = [w for w in writes if w.faults > self.UNEXPECTED_RETRIES]
            for w in lost:
                self._finished(w)
            if lost:
                self.failures += len(lost)
                reject("redis_write_dropped", len(lost))
                log.error("gave up %d writes after %r", len(lost), exc)
            return [w for w in writes if w.faults <= self.UNEXPECTED_RETRIES]
        retry: list[_Write] = []
        for w in writes:
            result = next(results)
            if w.expire_s is not None:
                expired = next(results)
                if isinstance(expired, Exception) and not isinstance(result, Exception):
                    log.warning("could not set a stream's expiry: %s", expired)
            if is_transient(result):
                retry.append(w)
                continue
            self._finished(w)
            if w.entry_id is not None and is_duplicate_id(result):
                self.entries += 1  # it had landed before the connection was lost
            elif isinstance(result, Exception):
                self.failures += 1
                reject("redis_write_refused")
                log.error("redis refused a write: %s", result)
            else:
                self.entries += 1
        return retry
