"""The per-frame round trips to Redis: a batch of commands out, their replies back, in one send.

The stages' hot loops (the shared readers, the batched writers) do one thing with Redis: send a
batch of commands (``XADD``s, ``EXPIRE``s, at most one ``XREAD``) and wait for the replies.
Through redis-py's asyncio pipeline that costs about 105 µs of CPU per round trip and 12 µs per
command on a machine of this kind (its connection pool, retry wrapper, per-reply timeout,
observability hooks and response callbacks, some 250 Python calls for one ``XREAD``), which is
more than the frame's own work. :class:`RespConnection` is that round trip and nothing else: a
connection of its own, commands packed by hiredis, replies parsed by hiredis, one future per
batch.

It speaks to one plain Redis over TCP (``redis://`` with any user, password and db). For anything
else (a cluster, TLS, a Unix socket, fakeredis in the tests) :func:`round_trips` gives
:class:`PipelineRoundTrips`, the same interface over redis-py's pipeline, so callers are written
once. Both return the replies in order, an error reply as the exception redis-py would raise
for it (not raised), and an ``XREAD``'s reply in redis-py's shape:
``[(stream, [(entry_id, {field: value})])]``, ``[]`` when it timed out. A lost or silent
connection raises ``redis.exceptions.ConnectionError``/``TimeoutError`` (the callers' "retry"
path) and the next batch connects again. One batch at a time per object: each loop that sends
has its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterCrossSlotError,
    ClusterDownError,
    ExecAbortError,
    MasterDownError,
    MaxClientsReachedError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.runtime.observability import REDIS_ROUND_TRIPS

Command = tuple[Any, ...]  # e.g. ("XADD", stream, "*", field, value): redis-py keys its
# reply parsers by the command's name as a str
XREAD = "XREAD"


def xadd_command(
    stream: bytes, fields: Any, entry_id: bytes | None = None, maxlen: int | None = None
) -> Command:
    """``XADD stream [MAXLEN ~ maxlen] entry_id|* field value ...`` as one command."""
    trim: tuple[Any, ...] = ("MAXLEN", "~", maxlen) if maxlen is not None else ()
    return ("XADD", stream, *trim, entry_id or "*", *[x for pair in fields.items() for x in pair])


def xread_command(streams: dict[bytes, bytes], block_ms: int, count: int) -> Command:
    return (XREAD, "COUNT", count, "BLOCK", block_ms, "STREAMS", *streams, *streams.values())


class RoundTrips(Protocol):
    async def execute(self, commands: Sequence[Command], timeout_s: float) -> list[Any]:
        """Send ``commands`` in one batch; their replies in order (errors as values).
        ``timeout_s``: how long the replies may take (a blocking read's BLOCK plus a margin)."""
        ...

    def close(self) -> None: ...


def round_trips(client: aioredis.Redis, loop: str) -> RoundTrips:
    """The leanest round trips ``client``'s server allows: a :class:`RespConnection` to the same
    plain TCP Redis, else redis-py's pipeline on ``client`` itself. ``loop`` names the loop
    sending them in ``gateway_redis_round_trips_total`` ("read" or "write")."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    cls = getattr(pool, "connection_class", None)
    plain = cls is not None and any(
        base is aioredis.Connection for base in cls.__mro__[:2]
    )  # redis-py's TCP connection, or our hiredis-packed subclass of it; not SSL, not a fake
    if not plain or kwargs is None or "host" not in kwargs:
        return PipelineRoundTrips(client, loop)
    return RespConnection(
        kwargs["host"],
        int(kwargs.get("port", 6379)),
        db=int(kwargs.get("db", 0) or 0),
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        connect_timeout_s=float(kwargs.get("socket_connect_timeout") or 2.0),
        loop=loop,
    )


# An error reply's code (its first word) and redis-py's public class for it, as redis-py's own
# parser maps them: the class is given the message after the code. Replies with other codes are
# ResponseError with their whole text ("WRONGTYPE ...").
_ERROR_CLASSES: dict[str, type[Exception]] = {
    "ERR": ResponseError,
    "OOM": OutOfMemoryError,
    "WRONGPASS": AuthenticationError,
    "NOAUTH": AuthenticationError,
    "EXECABORT": ExecAbortError,
    "LOADING": BusyLoadingError,
    "NOSCRIPT": NoScriptError,
    "READONLY": ReadOnlyError,
    "NOPERM": NoPermissionError,
    "ASK": AskError,
    "TRYAGAIN": TryAgainError,
    "MOVED": MovedError,
    "CLUSTERDOWN": ClusterDownError,
    "CROSSSLOT": ClusterCrossSlotError,
    "MASTERDOWN": MasterDownError,
}
# ERR replies redis-py gives a class of their own: a full server is a connection error (retry).
_ERR_CLASSES: dict[str, type[Exception]] = {
    "max number of clients reached": MaxClientsReachedError,
    "invalid password": AuthenticationError,
}


def _error(reply: ResponseError) -> Exception:
    """hiredis gives every error reply as a ResponseError; redis-py's own class for it (a server
    still loading its data is BusyLoadingError, a "retry", not a refusal)."""
    text = str(reply)
    code, _, message = text.partition(" ")
    cls = _ERROR_CLASSES.get(code)
    if cls is None:
        return ResponseError(text)
    return _ERR_CLASSES.get(message, cls)(message) if code == "ERR" else cls(message)


def _as_redis_py(command: Command, reply: Any) -> Any:
    """A raw reply as redis-py gives it: an error as its exception class, an XREAD as pairs."""
    if isinstance(reply, ResponseError):
        return _error(reply)
    return _entries(reply) if command[0] == XREAD else reply


def _entries(reply: Any) -> list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]:
    if reply is None:
        return []
    return [
        (stream, [(entry_id, dict(zip(fv[::2], fv[1::2], strict=True))) for entry_id, fv in batch])
        for stream, batch in reply
    ]


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.transport: asyncio.Transport | None = None
        self.replies: list[Any] = []
        self.expected = 0
        self.waiter: asyncio.Future[list[Any]] | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            self.replies.append(reply)
            if len(self.replies) >= self.expected and self.waiter is not None:
                if not self.waiter.done():
                    self.waiter.set_result(self.replies)
                self.waiter = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"redis closed the connection ({exc or 'EOF'})")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)
        self.waiter = None


def _time_out(waiter: asyncio.Future[list[Any]], timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(RedisTimeoutError(f"redis did not answer within {timeout_s:.1f}s"))


class RespConnection:
    """One connection to a plain Redis for a loop's batches; see the module's docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connect_timeout_s: float = 2.0,
        loop: str = "read",
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self._counted = REDIS_ROUND_TRIPS.labels(loop)
        self.username, self.password = username, password
        self.connect_timeout_s = connect_timeout_s
        self._protocol: _Protocol | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(_Protocol, self.host, self.port), self.connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(
                f"cannot reach redis at {self.host}:{self.port}: {exc}"
            ) from exc
        self._protocol = protocol
        hello: list[Command] = []
        if self.password:
            auth = (self.username, self.password) if self.username else (self.password,)
            hello.append(("AUTH", *auth))
        if self.db:
            hello.append(("SELECT", self.db))
        if hello:
            for reply in await self._send(protocol, hello, self.connect_timeout_s):
                if isinstance(reply, ResponseError):
                    self.close()
                    raise _error(reply)  # a wrong password: AuthenticationError, as redis-py
        return protocol

    async def execute(self, commands: Sequence[Command], timeout_s: float) -> list[Any]:
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            protocol = await self._connect()
        self._counted.inc()
        replies = await self._send(protocol, commands, timeout_s)
        return [_as_redis_py(c, r) for c, r in zip(commands, replies, strict=True)]

    async def _send(
        self, protocol: _Protocol, commands: Sequence[Command], timeout_s: float
    ) -> list[Any]:
        assert protocol.transport is not None and protocol.waiter is None, "one batch at a time"
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        protocol.replies, protocol.expected, protocol.waiter = [], len(commands), waiter
        protocol.transport.write(b"".join([hiredis.pack_command(c) for c in commands]))
        timer = loop.call_later(timeout_s, _time_out, waiter, timeout_s)
        try:
            replies: list[Any] = await waiter
            return replies
        except BaseException:
            # Cancelled, or the connection lost: the replies still due would answer the next
            # batch, so this connection is done with.
            self.close()
            raise
        finally:
            timer.cancel()

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.waiter = None
            protocol.transport.close()


class PipelineRoundTrips:
    """The same round trips through redis-py's pipeline: for a cluster (whose client routes each
    batch's keys, all of one slot, to their node), TLS, a Unix socket, and fakeredis."""

    def __init__(self, client: aioredis.Redis, loop: str = "read") -> None:
        self.client = client
        self._counted = REDIS_ROUND_TRIPS.labels(loop)

    async def execute(self, commands: Sequence[Command], timeout_s: float) -> list[Any]:
        self._counted.inc()
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return [
            (result or []) if command[0] == XREAD else result
            for command, result in zip(commands, results, strict=True)
        ]

    def close(self) -> None:
        pass
