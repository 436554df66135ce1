"""What the edge lends the parts that serve a stream or a route: small interfaces, no service.

A leaf of this package's rooms, like the realtime worker's ``interfaces`` (httpcore's
``interfaces.py`` is the model): a stream's bridge (:mod:`services.twilio_edge.bridge`) depends
on :class:`BridgeHost`, the outbound-call callbacks (:mod:`services.twilio_edge.outbound`) on
:class:`CallbackHost`, and neither on :class:`~services.twilio_edge.service.Edge`, which imports
them: no import cycle.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from services.twilio_edge.http import Form
from services.twilio_edge.token import StreamTokens
from shared.runtime.redis_io import BatchedStreamWriter
from shared.runtime.settings import Settings
from shared.runtime.stream_reader import SharedReader


class CallbackHost(Protocol):
    """What a Twilio callback's handler may use: the edge's settings and Redis, its set of
    background tasks (REST requests under way, awaited when it stops), and its webhook guards."""

    @property
    def settings(self) -> Settings: ...

    @property
    def redis(self) -> aioredis.Redis: ...

    @property
    def background(self) -> set[asyncio.Task[None]]: ...

    def signed_callback(self, conn: ServerConnection, request: Request) -> Form | Response:
        """The callback's form (a signed POST), or the response that refuses it."""
        ...


class StreamBridge(Protocol):
    """What the edge holds of one stream's bridge: its socket."""

    @property
    def ws(self) -> ServerConnection: ...


class BridgeHost(Protocol):
    """What the edge lends each stream's bridge: settings and Redis, the batched writer of every
    call's frames, the reader of every call's replies, stream tokens, and its say on a start."""

    @property
    def settings(self) -> Settings: ...

    @property
    def redis(self) -> aioredis.Redis: ...

    @property
    def writer(self) -> BatchedStreamWriter: ...

    @property
    def replies(self) -> SharedReader: ...

    @property
    def tokens(self) -> StreamTokens: ...

    @property
    def stopping(self) -> bool:
        """The edge is stopping: its streams close for that, not because they broke."""
        ...

    async def admit_start(self, bridge: StreamBridge) -> bool:
        """Whether a socket's start may go on (still pending, a place free under MAX_CALLS)."""
        ...

    def call_started(self, bridge: StreamBridge) -> None:
        """The start was admitted: the stream is a call, counted against MAX_CALLS."""
        ...
