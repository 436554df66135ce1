"""The edge's server: a websockets server for Twilio on one port, its lifecycle, and what every
stream of the process shares (the batched writer, the reply reader, MAX_CALLS).

Each Media Stream is a :class:`~services.twilio_edge.bridge.CallBridge`; every other request
goes to the webhook router (:class:`~services.twilio_edge.webhooks.Webhooks`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.protocol import CONNECTING

from services.twilio_edge.bridge import CallBridge
from services.twilio_edge.http import EdgeConnection
from services.twilio_edge.interfaces import StreamBridge
from services.twilio_edge.token import StreamTokens
from services.twilio_edge.webhooks import Webhooks
from shared.backoff import Backoff
from shared.limits import PendingSockets
from shared.runtime.lifecycle import run_service, serve_stage
from shared.runtime.observability import (
    reject,
)
from shared.runtime.redis_io import (
    RETRYABLE,
    BatchedStreamWriter,
    ensure_group,
)
from shared.runtime.settings import Settings, settings_or_exit
from shared.runtime.stream_reader import SharedReader
from shared.streams import (
    TRANSCODER_GROUP,
    WORKER_GROUP,
    lifecycle_streams,
)

log = logging.getLogger("gateway.edge")

# How long the reply read of silent calls blocks: how late a call added meanwhile joins the
# reads (its greeting waits at most this), and how often an edge whose calls are all silent
# reads (with no call it does not read at all).
REPLY_BLOCK_MS = 100


class Edge:
    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        batch_s = settings.redis_batch_ms / 1000
        self.writer = BatchedStreamWriter(redis, settings.stream_maxlen, batch_s=batch_s)
        # Every call's cmd and out.pcmu, one read for all.
        self.replies = SharedReader(redis, "edge", block_ms=REPLY_BLOCK_MS, batch_s=batch_s)
        self.tokens = StreamTokens(settings.stream_token_key(), settings.verifies_signatures)
        # The streams whose start was taken: what MAX_CALLS counts. A socket closed for want of
        # a start is in neither set while its close handshake runs (a peer may never answer it).
        self.started: set[StreamBridge] = set()
        # Sockets that have not started yet: apart from MAX_CALLS, with a limit of their own.
        self.pending: PendingSockets[StreamBridge] = PendingSockets(
            settings.max_pending_streams, settings.stream_start_timeout_seconds
        )
        self.server: Server | None = None
        self.background: set[asyncio.Task[None]] = set()  # REST requests under way
        self.stopping = False  # its streams close because the edge stops, not because they broke
        self.webhooks = Webhooks(settings, redis, self.tokens, self.background, self.calls_held)

    def call_started(self, bridge: StreamBridge) -> None:
        """A stream's start was admitted: it is a call now, and counts against ``MAX_CALLS``."""
        self.started.add(bridge)

    async def admit_start(self, bridge: StreamBridge) -> bool:
        """Whether a socket's start may go on: it was still pending (not closed for waiting too
        long or to make room) and a call's place is free under ``MAX_CALLS`` (taken once the
        start is admitted as a call)."""
        if not self.pending.started(bridge):
            return False  # closing already
        if len(self.started) >= self.settings.max_calls:
            reject("edge_max_calls")
            await bridge.ws.close(1013, "too many calls")
            return False
        return True

    def _close_pending(self, bridges: list[StreamBridge], reason: str, text: str) -> None:
        for bridge in bridges:
            reject(reason)
            log.warning("closing a socket that sent no start: %s", text)
            task = asyncio.create_task(bridge.ws.close(1008, text))
            self.background.add(task)
            task.add_done_callback(self.background.discard)

    def _start_overdue(self) -> None:
        # The loop may run a timer a hair before its time (its clock's resolution).
        late = self.pending.overdue(asyncio.get_running_loop().time() + 0.01)
        self._close_pending(late, "edge_start_timeout", "no start in time")

    async def handle(self, ws: ServerConnection) -> None:
        bridge = CallBridge(self, ws)
        loop = asyncio.get_running_loop()
        evicted = self.pending.open(bridge, loop.time())
        self._close_pending(evicted, "edge_pending_evicted", "too many sockets without a start")
        timer = loop.call_later(self.pending.timeout_s, self._start_overdue)
        try:
            await bridge.run()
        finally:
            timer.cancel()
            self.pending.closed(bridge)
            self.started.discard(bridge)

    async def listen(self) -> int:
        """Open the public port (``EDGE_PORT``); returns the port bound."""
        self.server = await serve(
            self.handle,
            self.settings.edge_host,
            self.settings.edge_port,
            process_request=self.webhooks.process_request,
            create_connection=EdgeConnection,
            max_size=self.settings.max_message_bytes,
            compression=None,  # Twilio does not negotiate it; mu-law barely compresses anyway
            ping_interval=20,
            ping_timeout=20,
        )
        return int(next(iter(self.server.sockets)).getsockname()[1])

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        # Without the writer no call's audio reaches Redis: it never ends by design.
        return [self.writer.run()]

    def calls_held(self) -> int:
        return len(self.started)

    def unready(self) -> str | None:
        """At ``MAX_CALLS`` a new stream would be refused (503): send it to another edge."""
        return "max_calls" if len(self.started) >= self.settings.max_calls else None

    async def stop(self) -> None:
        """Close every stream (1001) and the port, then flush the audio still unwritten.

        A connection that has not finished its handshake (a load balancer's spare, a slow
        client, a port scan) is dropped after a moment rather than waited for: websockets would
        give it its whole opening timeout, which is longer than a clean stop may take.
        """
        self.stopping = True
        if self.server is not None:
            log.info("stopping: closing streams")
            self.server.close(close_connections=True)
            try:
                await asyncio.wait_for(asyncio.shield(self.server.wait_closed()), 0.5)
            except TimeoutError:
                for conn in list(self.server.all_connections):
                    if conn.protocol.state is CONNECTING:
                        conn.transport.abort()
                await self.server.wait_closed()
        await self.replies.stop()
        await asyncio.wait_for(self.writer.flush(), 3.0)

    async def prepare(self) -> None:
        """Create both stages' groups so a call accepted before they start is not missed."""
        backoff = Backoff(cap_s=2.0)
        while True:
            try:
                for stream in lifecycle_streams(self.settings.lifecycle_partitions):
                    for group in (TRANSCODER_GROUP, WORKER_GROUP):
                        await ensure_group(self.redis, stream, group)
                return
            except RETRYABLE as exc:
                log.warning("redis unavailable at start (%s); retrying", exc)
                await asyncio.sleep(backoff.next_delay())


async def run_edge(
    settings: Settings,
    stop: asyncio.Event,
    on_listening: Callable[[int], None] | None = None,
    redis: aioredis.Redis | None = None,
) -> None:
    """Serve until ``stop`` is set; ``on_listening`` gets the bound port (tests bind port 0)."""

    async def build(client: aioredis.Redis) -> Edge:
        edge = Edge(settings, client)
        if not edge.webhooks.signatures.enabled:
            log.warning(
                "accepting unsigned requests on /twiml and /media (%s)",
                "TWILIO_SIGNATURES=off"
                if settings.twilio_signatures == "off"
                else "no TWILIO_AUTH_TOKEN or TWILIO_SHARED_KEY_SECRET; the model is a local "
                "emulator",
            )
        await edge.prepare()
        port = await edge.listen()
        log.info("edge listening", extra={"port": port, "twiml_url": settings.public_twiml_url()})
        if on_listening:
            on_listening(port)
        return edge

    await serve_stage("twilio_edge", settings, stop, build, redis)


def main(settings: Settings | None = None) -> None:
    settings = settings or settings_or_exit("twilio_edge", checks=(Settings.unsigned_edge,))
    run_service("twilio_edge", settings, lambda stop: run_edge(settings, stop))
