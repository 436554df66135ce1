"""The edge's asyncio shell: a websockets server for Twilio, writing to and reading from Redis.

Per Media Stream (:class:`CallBridge`): Twilio's messages go through the pure
:class:`~shared.twilio_media.TwilioMediaSession`; caller frames are queued on the shared
:class:`~shared.runtime.redis_io.BatchedStreamWriter` (one pipeline for all calls' frames per
round trip); the edge's one :class:`~shared.runtime.stream_reader.SharedReader` reads every
call's reply (``out.pcmu``) and the worker's commands (``cmd``), and each call's sender task
moves them to Twilio through :class:`~shared.playback.OutboundPlayback`.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis.asyncio as aioredis
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import CONNECTING

from services.twilio_edge.http import EdgeConnection, Form, respond
from services.twilio_edge.outbound import amd_callback, call_status_callback
from services.twilio_edge.resume import answer_action, resume_point
from services.twilio_edge.token import StreamTokens
from shared import twilio_media as tw
from shared.backoff import Backoff
from shared.limits import PendingSockets, TokenBucket
from shared.outbound import AMD_PATH, CALL_STATUS_PATH, STREAM_STATUS_PATH
from shared.playback import OutboundPlayback
from shared.resumption import (
    RESUME_PARAMETER,
    Admission,
    admit_stream,
    break_marking,
    check_holding,
    heard_field,
)
from shared.runtime.lifecycle import run_service, serve_stage, wall_clock_us
from shared.runtime.observability import (
    ACTIVE_CALLS,
    CALLS,
    CONNECT_ACTIONS,
    FRAMES,
    HOP_LATENCY,
    REANNOUNCED,
    STREAM_EVENTS,
    STREAM_RESUMES,
    bind_call,
    call_context,
    reject,
)
from shared.runtime.redis_io import (
    RETRYABLE,
    BatchedStreamWriter,
    answers,
    ensure_group,
    expire_all,
    fields_arg,
    hash_field,
    hash_fields,
    outlasting_cancel,
)
from shared.runtime.settings import Settings, settings_or_exit
from shared.runtime.stream_reader import CallReading, Read, SharedReader, Writes
from shared.stream_token import TOKEN_PARAMETER
from shared.streams import (
    LIFECYCLE_MAXLEN,
    META_ENDED,
    META_PARAMS,
    META_RESUME_GRANT,
    META_RESUME_GRANT_EXPIRES_US,
    META_RESUMES,
    META_STARTED_US,
    META_STREAM_SID,
    META_TRANSFER_TO,
    TRANSCODER_GROUP,
    WORKER_GROUP,
    CallEvent,
    CallKeys,
    CallStarted,
    ClearPlayback,
    DtmfPressed,
    HangUp,
    InboundFrame,
    InboundIds,
    KeyExpiry,
    MarkPlayed,
    OutboundChunk,
    StreamEnd,
    StreamEntryError,
    call_meta,
    call_ttl_s,
    decode_command,
    decode_outbound,
    lifecycle_stream_for,
    lifecycle_streams,
    valid_call_sid,
)

log = logging.getLogger("gateway.edge")

_TWIML_TYPE = "text/xml; charset=utf-8"


LOSS_CHECK_S = 1.0  # how often a call checks that Redis still knows it (and that it is its)
# How long the reply read of silent calls blocks: how late a call added meanwhile joins the
# reads (its greeting waits at most this), and how often an edge whose calls are all silent
# reads (with no call it does not read at all).
REPLY_BLOCK_MS = 100
BACKLOG_LIMIT = 256  # messages a call's sender may be behind before its reads pause
RESUME_POLL_S = 0.25  # how often a broken stream's edge looks for the call's new stream


class CallBridge:
    """One Twilio Media Stream, from ``connected`` to ``stop`` or a closed socket."""

    def __init__(self, edge: Edge, ws: ServerConnection) -> None:
        self.edge = edge
        self.ws = ws
        self.session = tw.TwilioMediaSession()
        self.keys: CallKeys | None = None
        self.stream_sid = ""
        self.reader: asyncio.Task[None] | None = None  # sends the reply (_send_replies)
        self.replies: _Replies | None = None  # this call's part in the edge's reply reader
        self.ended = False
        # Another stream took the call over (a resumption): this one leaves it without ending it.
        self.handed_over = False
        self.hung_up = False  # the worker had the stream closed (the model's hang-up, a fault)
        self.in_frames = FRAMES.labels("edge_in")
        self.out_frames = FRAMES.labels("edge_out")
        self.expiry = KeyExpiry()
        self.in_ids = InboundIds(0)  # replaced at start
        self.heard_us = 0  # when Twilio last sent a frame on this stream (wall clock)
        settings = edge.settings
        self.bucket = TokenBucket(
            settings.max_messages_per_second, settings.max_messages_per_second * 2.0
        )

    async def run(self) -> None:
        try:
            async for message in self.ws:
                try:
                    events = self.session.receive(message)
                except tw.TwilioProtocolError as exc:
                    reject(f"twilio_{exc.reason}")
                    log.warning("rejected a Twilio message: %s", exc)
                    if self.session.start_refused:
                        # The call cannot be carried: say so to Twilio rather than leave it
                        # connected to silence.
                        await self.ws.close(1008, f"start refused: {exc.reason}"[:100])
                        break
                    continue
                for event in events:
                    # Only audio is rate-limited: a stop, mark or key press is never dropped.
                    if isinstance(event, tw.InboundMedia) and not self.bucket.allow(
                        time.monotonic()
                    ):
                        reject("edge_rate_limited")
                        continue
                    await self._on_event(event)
        except ConnectionClosed:
            pass
        finally:
            if self.replies is not None:
                self.edge.replies.remove(self.replies)
            if self.reader:
                self.reader.cancel()
            if self.keys is not None and not self.ended and not self.handed_over:
                if self._broke():
                    await outlasting_cancel(self._await_resumption())
                else:
                    await self._end("socket_closed")

    def _broke(self) -> bool:
        """The stream ended with no ``stop`` from Twilio and no close asked for by us (the
        edge's stop, the worker's hang-up): a network cut (seen as a reset, or as the keepalive
        ping going unanswered), or Twilio's side dropping it. Twilio then asks the ``<Connect
        action>`` what next, and the call may go on on a new stream."""
        return not self.hung_up and not self.edge.stopping

    async def _await_resumption(self) -> None:
        """Keep the call for ``EDGE_RESUME_GRACE_SECONDS``: if a new stream takes it over in
        that time, leave it to that one; if not (no action request came, or it reached no
        edge), end it as a closed socket."""
        assert self.keys is not None
        try:
            # The evidence the <Connect action> request needs to grant a resumption.
            marking = fields_arg(break_marking(self.stream_sid))
            await self.edge.redis.hset(self.keys.meta, mapping=marking)
        except RETRYABLE as exc:
            log.warning("cannot mark the stream broken (%s); its heartbeat will say so", exc)
        grace = self.edge.settings.edge_resume_grace_seconds
        deadline = time.monotonic() + grace
        log.warning("the stream broke; waiting %.1f s for it to be resumed", grace)
        while time.monotonic() < deadline and not self.edge.stopping:
            await asyncio.sleep(min(RESUME_POLL_S, max(0.0, deadline - time.monotonic())))
            try:
                holder = await hash_field(self.edge.redis, self.keys.meta, META_STREAM_SID)
            except RETRYABLE:
                continue
            if holder is not None and holder.decode("ascii", "replace") != self.stream_sid:
                self._leave_to_other_stream(holder)
                return
        STREAM_RESUMES.labels("not_resumed").inc()
        await self._end("socket_closed")

    def _leave_to_other_stream(self, holder: bytes) -> None:
        self.handed_over = True
        ACTIVE_CALLS.dec()
        STREAM_RESUMES.labels("handed_over").inc()
        log.info(
            "the call goes on on another stream; leaving it",
            extra={"new_stream_sid": holder.decode("ascii", "replace")},
        )

    async def _on_event(self, event: tw.Event) -> None:
        if isinstance(event, tw.InboundMedia):
            if self.keys is None:
                return
            frame = InboundFrame(event.payload, event.sequence, event.timestamp_ms, wall_clock_us())
            self.heard_us = frame.stamp_us
            first = self.expiry.first_write(self.keys.in_pcmu)
            expire = self.edge.settings.call_max_seconds if first else None
            self.edge.writer.add(
                self.keys.in_pcmu,
                frame.encode(),
                expire_s=expire,
                entry_id=self.in_ids.next(),
                droppable=True,
            )
            self.in_frames.inc()
        elif isinstance(event, tw.MarkReturned):
            if self.keys is not None:
                self.edge.writer.add(self.keys.ctl, MarkPlayed(event.name).encode())
        elif isinstance(event, tw.DtmfReceived):
            if self.keys is not None:
                self.edge.writer.add(self.keys.ctl, DtmfPressed(event.digit).encode())
        elif isinstance(event, tw.StreamStarted):
            if await self.edge.admit_start(self):
                await self._start(event)
        elif isinstance(event, tw.StreamStopped):
            await self._end("stop")

    async def _start(self, event: tw.StreamStarted) -> None:
        if not valid_call_sid(event.call_sid):
            reject("twilio_bad_call_sid")
            await self.ws.close(1008, "bad callSid")
            return
        refusal = await self.edge.tokens.refusal(self.edge.redis, event)
        if refusal is not None:
            # Not a stream of TwiML the gateway wrote for this call with these parameters.
            reject(f"edge_token_{refusal}")
            await self.ws.close(1008, f"stream token refused: {refusal}")
            return
        keys = CallKeys.for_call(event.call_sid)
        meta = await self._meta(keys)
        grant = event.custom_parameters.get(RESUME_PARAMETER)
        admission = admit_stream(meta, grant, wall_clock_us())
        if admission not in ("new", "resume"):
            await self._refuse(event, admission, meta)
            return
        self.keys = keys
        self.stream_sid = event.stream_sid
        self.heard_us = wall_clock_us()
        # A call now: it counts against MAX_CALLS (a refused start never does, however long
        # its peer takes to answer the close).
        self.edge.started.add(self)
        bind_call(event.call_sid, event.stream_sid)  # this task serves this call alone
        parameters = {
            k: v
            for k, v in event.custom_parameters.items()
            if k not in (RESUME_PARAMETER, TOKEN_PARAMETER)
        }
        if admission == "resume":
            await self._resume(keys, event, meta)
            return
        started = CallStarted(
            event.call_sid, event.stream_sid, event.account_sid, parameters, wall_clock_us()
        )
        self.in_ids = InboundIds(started.started_us // 1000)
        try:
            await self._register(keys, started)
        except RETRYABLE as exc:
            await self._storage_failed("register", exc)
            return
        ACTIVE_CALLS.inc()
        log.info("call started", extra={"params": sorted(parameters)})
        playback = OutboundPlayback(event.stream_sid)
        cursors = {keys.cmd: b"0-0", keys.out_pcmu: b"0-0"}
        self._play_replies(keys, started, playback, cursors)

    async def _refuse(
        self, event: tw.StreamStarted, admission: Admission, meta: dict[bytes, bytes]
    ) -> None:
        """A second stream on a call that is still connected, or a resumption that does not
        hold: the pipeline keys a call's audio by CallSid, so taking it would replay the first
        stream's replies and hang-up to it."""
        reject(f"edge_{admission}")
        if admission != "second_stream":
            STREAM_RESUMES.labels("refused").inc()
        log.warning(
            "refused a Media Stream on call %s (%s; the call's stream is %s)",
            event.call_sid,
            admission,
            meta.get(META_STREAM_SID, b"").decode("ascii", "replace"),
        )
        await self.ws.close(1008, "this call already had a media stream")

    async def _resume(
        self, keys: CallKeys, event: tw.StreamStarted, meta: dict[bytes, bytes]
    ) -> None:
        """Take the new stream as the call it resumes: no new registration (the stages carry
        on, the worker's session too), the reply from the last returned mark, the caller's
        frames after the first stream's in ``in.pcmu``."""
        redis = self.edge.redis
        started = CallStarted(
            event.call_sid,
            event.stream_sid,
            event.account_sid,
            _stored_parameters(meta),
            int(meta[META_STARTED_US]),
        )
        try:
            point = await resume_point(redis, keys, wall_clock_us() // 1000)
            pipe = redis.pipeline(transaction=False)
            pipe.hset(keys.meta, META_STREAM_SID, event.stream_sid)
            pipe.hset(keys.meta, heard_field(event.stream_sid), self.heard_us)
            pipe.hdel(keys.meta, META_RESUME_GRANT, META_RESUME_GRANT_EXPIRES_US)
            pipe.hincrby(keys.meta, META_RESUMES, 1)
            event_data = {"stream_sid": event.stream_sid, "mark": _mark_text(point.mark)}
            pipe.xadd(keys.events, fields_arg(CallEvent("stream_resumed", event_data).encode()))
            await pipe.execute()
        except RETRYABLE as exc:
            await self._storage_failed("resume", exc)
            return
        self.in_ids = InboundIds(point.inbound_ms)
        self.expiry.first_write(keys.in_pcmu)  # its expiry came with the first stream's frames
        ACTIVE_CALLS.inc()
        STREAM_RESUMES.labels("resumed").inc()
        log.warning(
            "call resumed on a new stream",
            extra={
                "previous_stream_sid": meta.get(META_STREAM_SID, b"").decode("ascii", "replace"),
                "mark": _mark_text(point.mark),
            },
        )
        playback = OutboundPlayback(event.stream_sid, cleared=point.cleared)
        self._play_replies(keys, started, playback, point.cursors, point.first)

    async def _storage_failed(self, what: str, exc: BaseException) -> None:
        """Redis cannot take the call as it starts: no stage would carry it, so tell Twilio now
        (1011) rather than take audio nobody will carry."""
        reject("edge_redis_unavailable")
        log.error("cannot %s the call in redis (%s); hanging up", what, exc)
        self.keys = None
        await self.ws.close(1011, "gateway storage unavailable")

    async def _meta(self, keys: CallKeys) -> dict[bytes, bytes]:
        """The call's hash as a stream starts (empty when Redis cannot say now, in which case
        the stream goes ahead as a new call, the common case)."""
        try:
            meta = await hash_fields(self.edge.redis, keys.meta)
        except RETRYABLE:
            return {}
        return meta

    async def _register(self, keys: CallKeys, started: CallStarted, again: bool = False) -> None:
        """Write the call's keys, then its lifecycle entry, in two round trips: on a cluster the
        two live on different nodes and one pipeline would run them concurrently, so a stage
        could claim the call before its keys exist and dismiss it as expired."""
        settings = self.edge.settings
        ttl = call_ttl_s(started.started_us, wall_clock_us(), settings.call_max_seconds) or 1
        pipe = self.edge.redis.pipeline(transaction=False)
        if again:  # what a stage wrote after the loss (a cursor into streams that are gone) goes
            pipe.delete(keys.meta)
        pipe.hset(keys.meta, mapping=fields_arg(call_meta(started, reannounced=again)))
        pipe.hset(keys.meta, heard_field(started.stream_sid), self.heard_us or wall_clock_us())
        pipe.expire(keys.meta, ttl)
        await pipe.execute()
        lifecycle = lifecycle_stream_for(started.call_sid, settings.lifecycle_partitions)
        await self.edge.redis.xadd(
            lifecycle,
            fields_arg(started.encode()),
            maxlen=LIFECYCLE_MAXLEN,
            approximate=True,
        )

    async def _still_known(self, keys: CallKeys, started: CallStarted) -> None:
        """Register the call again if Redis has lost it (restarted empty, a failover to a replica
        that had not got the call, an eviction). The edge holds the one thing Redis cannot
        give back, Twilio's socket: announced again, the call is taken up by the stages afresh,
        with a new OpenAI session, instead of leaving the caller talking to silence.

        A call that went on on another stream (this one broke for Twilio, not for us: a
        resumption) is left to it, and this socket closed."""
        if self.ended:
            return
        pipe = self.edge.redis.pipeline(transaction=False)
        pipe.hmget(keys.meta, [META_STARTED_US, META_STREAM_SID])
        # The heartbeat a <Connect action> reads: stale once this edge or the stream is gone.
        pipe.hset(keys.meta, heard_field(self.stream_sid), self.heard_us)
        # A hash Redis had lost is written anew by it: never without an expiry.
        pipe.expire(keys.meta, self.edge.settings.call_max_seconds, nx=True)
        found: list[bytes | None] = (await pipe.execute())[0]
        known, holder = found
        holding = check_holding(known, holder, self.stream_sid)
        if holding == "taken_over":
            assert holder is not None
            self._leave_to_other_stream(holder)
            await self.ws.close(1001, "the call went on on another stream")
        if holding != "lost":
            return
        if (
            call_ttl_s(started.started_us, wall_clock_us(), self.edge.settings.call_max_seconds)
            is None
        ):
            return  # its keys expired with its time: the stages end it
        self.expiry.forget(keys.in_pcmu)  # the new in.pcmu needs its expiry
        await self._register(keys, started, again=True)
        REANNOUNCED.inc()
        log.warning("redis had lost this call; registered it again")

    async def _end(self, reason: str) -> None:
        if self.ended or self.keys is None:
            return
        self.ended = True
        keys = self.keys
        self.edge.writer.add(keys.in_pcmu, StreamEnd(reason).encode(), entry_id=self.in_ids.next())
        try:
            await self.edge.writer.flush(keys.in_pcmu, keys.ctl)
            await self.edge.redis.hset(keys.meta, META_ENDED, reason)
            await expire_all(self.edge.redis, keys.all(), self.edge.settings.call_retention_seconds)
        except RETRYABLE as exc:
            log.warning("could not mark the call ended in redis: %s", exc)
        ACTIVE_CALLS.dec()
        CALLS.labels(reason).inc()
        log.info("call ended", extra={"reason": reason})

    def _play_replies(
        self,
        keys: CallKeys,
        started: CallStarted,
        playback: OutboundPlayback,
        cursors: dict[bytes, bytes],
        first: OutboundChunk | None = None,
    ) -> None:
        """Move reply audio and worker commands to Twilio from ``cursors`` on (a resumed stream:
        ``first``, the rest of the chunk that was playing, then what followed it): the edge's
        reader reads them with every other call's, this call's sender sends them."""
        replies = _Replies(keys, playback, cursors)
        if first is not None:
            replies.queue(playback.chunk(first), None)
        self.replies = replies
        self.edge.replies.add(replies)
        self.reader = asyncio.create_task(self._send_replies(keys, started, replies))

    async def _send_replies(self, keys: CallKeys, started: CallStarted, replies: _Replies) -> None:
        """Send what the reader queued, in order; once a second check that Redis still knows
        the call (:meth:`_still_known`)."""
        hop = HOP_LATENCY.labels("openai_to_edge")
        loop = asyncio.get_running_loop()
        check_at = loop.time() + LOSS_CHECK_S
        outbox = replies.outbox
        try:
            while True:
                if not outbox:
                    replies.ready.clear()
                    try:
                        async with asyncio.timeout_at(check_at):
                            await replies.ready.wait()
                    except TimeoutError:
                        pass
                if not replies.active and not outbox:
                    await self._reply_reading_ended(replies)
                    return
                while outbox:
                    item = outbox.popleft()
                    if isinstance(item, HangUp):
                        log.info("hanging up", extra={"reason": item.reason})
                        self.hung_up = True
                        await self.ws.close(1000, item.reason[:100])
                        continue
                    messages, stamp_us = item
                    replies.backlog -= len(messages)
                    for message in messages:
                        await self.ws.send(message)
                    if stamp_us is not None:
                        hop.observe(max(0, wall_clock_us() - stamp_us) / 1e6)
                        self.out_frames.inc()
                if loop.time() >= check_at:
                    check_at = loop.time() + LOSS_CHECK_S
                    try:
                        await outlasting_cancel(self._still_known(keys, started))
                    except RETRYABLE as exc:
                        log.warning("redis unavailable for the call's check: %s", exc)
        except ConnectionClosed:
            return

    async def _reply_reading_ended(self, replies: _Replies) -> None:
        """The shared reader stopped reading for this call: taken over by a newer stream
        ("removed"), or its entries could not be handled (a bug, or a key that is not a stream).
        In the second case nothing more of the reply can reach the caller, so the call ends,
        rather than go on in silence."""
        if replies.outcome.cancelled() or replies.outcome.exception() is None:
            return
        log.error("the call's replies cannot be read: %r", replies.outcome.exception())
        self.hung_up = True
        await self.ws.close(1011, "reply path failed")


class _Replies(CallReading):
    """One call's reply entries as the edge's reader hands them over: turned into Twilio
    messages (commands before audio within a read) and queued for the call's sender."""

    def __init__(
        self,
        keys: CallKeys,
        playback: OutboundPlayback,
        cursors: dict[bytes, bytes],
    ) -> None:
        # A reply stream is silent whenever the model is: only the caller's side judges silence.
        super().__init__(keys.call_sid, cursors, silent_limit_s=math.inf)
        self.keys = keys
        self.playback = playback
        self.outbox: deque[tuple[list[str], int | None] | HangUp] = deque()
        self.backlog = 0  # messages queued and not yet sent
        self.ready = asyncio.Event()

    def queue(self, messages: list[str], stamp_us: int | None) -> None:
        if messages:
            self.outbox.append((messages, stamp_us))
            self.backlog += len(messages)

    def wants_entries(self) -> bool:
        return self.backlog < BACKLOG_LIMIT

    def end(self, outcome: str) -> None:
        super().end(outcome)
        self.ready.set()  # the sender finds out

    def fail(self, exc: BaseException) -> None:
        super().fail(exc)
        self.ready.set()

    def take(self, read: Read, writes: Writes) -> None:
        by_stream = dict(read)
        cmd, out = self.keys.cmd, self.keys.out_pcmu
        for entry_id, fields in by_stream.get(cmd, ()):
            self.cursors[cmd] = entry_id
            self._command(fields)
        for entry_id, fields in by_stream.get(out, ()):
            self.cursors[out] = entry_id
            try:
                chunk = decode_outbound(fields)
            except StreamEntryError as exc:
                reject(f"edge_{exc.reason}")
                continue
            if isinstance(chunk, OutboundChunk):
                messages = self.playback.chunk(chunk)
                self.queue(messages, chunk.stamp_us if messages else None)
        if self.outbox:
            self.ready.set()

    def _command(self, fields: dict[bytes, bytes]) -> None:
        try:
            command = decode_command(fields)
        except StreamEntryError as exc:
            reject(f"edge_{exc.reason}")
            return
        if isinstance(command, ClearPlayback):
            # Queued after what the sender has yet to send, as the old per-call loop sent each
            # read's audio before the next read: Twilio's clear drops that audio too.
            self.queue(self.playback.clear(command.response_id), None)
            log.info("cleared playback (barge-in)", extra={"response_id": command.response_id})
        elif isinstance(command, HangUp):
            self.outbox.append(command)


def _stored_parameters(meta: dict[bytes, bytes]) -> dict[str, str]:
    """The call's custom parameters as its first stream registered them."""
    try:
        params = json.loads(meta.get(META_PARAMS, b"{}"))
    except ValueError:
        return {}
    if not isinstance(params, dict):
        return {}
    return {str(k): str(v) for k, v in params.items()}


def _mark_text(mark: tuple[str, int] | None) -> str:
    return f"{mark[0]}:{mark[1]}" if mark else ""


CONNECT_ACTION_PATH = "/connect-action"


def _one_header(request: Request, name: str) -> str | None:
    """A header's value; ``None`` when it is missing or repeated (a request cannot be trusted to
    mean either of two values)."""
    values = request.headers.get_all(name)
    return values[0] if len(values) == 1 else None


class Edge:
    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        batch_s = settings.redis_batch_ms / 1000
        self.writer = BatchedStreamWriter(redis, settings.stream_maxlen, batch_s=batch_s)
        # Every call's cmd and out.pcmu, one read for all.
        self.replies = SharedReader(redis, "edge", block_ms=REPLY_BLOCK_MS, batch_s=batch_s)
        token, shared = settings.twilio_auth_token, settings.twilio_shared_key_secret
        verify = settings.verifies_signatures
        self.signatures = tw.TwilioSignatures(
            token.get_secret_value() if token and verify else None,
            shared.get_secret_value() if shared and verify else None,
        )
        self.tokens = StreamTokens(settings.stream_token_key(), verify)
        # The streams whose start was taken: what MAX_CALLS counts. A socket closed for want of
        # a start is in neither set while its close handshake runs (a peer may never answer it).
        self.started: set[CallBridge] = set()
        # Sockets that have not started yet: apart from MAX_CALLS, with a limit of their own.
        self.pending: PendingSockets[CallBridge] = PendingSockets(
            settings.max_pending_streams, settings.stream_start_timeout_seconds
        )
        self.server: Server | None = None
        self.background: set[asyncio.Task[None]] = set()  # REST requests under way
        self.stopping = False  # its streams close because the edge stops, not because they broke

    def _base_url(self, request: Request) -> str | None:
        """The edge's public base URL: ``PUBLIC_URL``, else the address the request was sent to
        (its Host, and the scheme a TLS-terminating proxy reports), which is the URL Twilio
        signed. ``None`` when the Host header is not a host name."""
        return tw.public_base_url(
            self.settings.public_url,
            _one_header(request, "Host"),
            _one_header(request, "X-Forwarded-Proto"),
        )

    def _signed_url(self, base: str, request: Request) -> str:
        """What Twilio signed for this request: the public URL of its path, with its query."""
        parts = urlsplit(request.path)
        if parts.path == "/media":
            url = self.settings.public_media_url(base)
        else:
            url = base.rstrip("/") + parts.path
        return f"{url}?{parts.query}" if parts.query else url

    def _signed(self, url: str, params: dict[str, str], request: Request) -> bool:
        refusal = self.signatures.refusal(
            url,
            params,
            _one_header(request, "X-Twilio-Signature"),
            _one_header(request, tw.SIGNATURE_SETTINGS_HEADER),
        )
        if refusal is not None:
            reject(refusal)
            if refusal.endswith("_not_configured"):
                log.error(
                    "a request was signed with a secret this edge does not have (%s): set %s",
                    refusal,
                    "TWILIO_SHARED_KEY_SECRET"
                    if refusal.startswith("shared")
                    else "TWILIO_AUTH_TOKEN",
                )
        return refusal is None

    async def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/media":
            if request.method != "GET":
                return respond(http.HTTPStatus.METHOD_NOT_ALLOWED, "use a WebSocket GET\n")
            base = self._base_url(request)
            if base is None:
                reject("edge_bad_host")
                return respond(http.HTTPStatus.BAD_REQUEST, "bad Host header\n")
            if not self._signed(self._signed_url(base, request), {}, request):
                return respond(http.HTTPStatus.FORBIDDEN, "invalid Twilio signature\n")
            if len(self.started) >= self.settings.max_calls:
                reject("edge_max_calls")
                return respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many calls\n")
            return None
        if path == "/twiml":
            return self._twiml(conn, request)
        if path == STREAM_STATUS_PATH:
            return self._stream_status(conn, request)
        if path == CONNECT_ACTION_PATH:
            return await self._connect_action(conn, request)
        if path == AMD_PATH:
            return await amd_callback(self, conn, request)
        if path == CALL_STATUS_PATH:
            return await call_status_callback(self, conn, request)
        if path == "/healthz":
            ok = await answers(self.redis)
            return respond(
                http.HTTPStatus.OK if ok else http.HTTPStatus.SERVICE_UNAVAILABLE,
                "ok\n" if ok else "redis unreachable\n",
            )
        return respond(http.HTTPStatus.NOT_FOUND, "not found\n")

    def _twiml(self, conn: ServerConnection, request: Request) -> Response:
        base = self._base_url(request)
        if base is None:
            reject("edge_bad_host")
            return respond(http.HTTPStatus.BAD_REQUEST, "bad Host header\n")
        if request.method == "POST":
            assert isinstance(conn, EdgeConnection)
            if conn.body_too_large:
                reject("edge_body_too_large")
                return respond(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large\n")
            if conn.length_required:
                reject("edge_body_chunked")
                return respond(http.HTTPStatus.LENGTH_REQUIRED, "send a Content-Length\n")
            params = conn.form()
        elif request.method == "GET":
            params = Form([])
        else:
            return respond(http.HTTPStatus.METHOD_NOT_ALLOWED, "GET or POST\n")
        if not self._signed(self._signed_url(base, request), params, request):
            return respond(http.HTTPStatus.FORBIDDEN, "invalid Twilio signature\n")
        fields = (
            params if request.method == "POST" else dict(parse_qsl(urlsplit(request.path).query))
        )
        return respond(http.HTTPStatus.OK, self._stream_twiml(base, fields), _TWIML_TYPE)

    def _stream_twiml(
        self, base: str, fields: dict[str, str], extra: dict[str, str] | None = None
    ) -> str:
        """The call's ``<Connect><Stream>``: the caller's numbers and CallSid as parameters
        (``extra`` besides), the stream's status callback, and the action Twilio asks when it
        ends."""
        parameters = {k: fields[k] for k in ("From", "To", "CallSid") if fields.get(k)}
        parameters = self.tokens.with_token(fields.get("CallSid"), parameters | (extra or {}))
        return tw.connect_stream_twiml(
            self.settings.public_media_url(base),
            parameters,
            status_callback=base.rstrip("/") + STREAM_STATUS_PATH,
            action=base.rstrip("/") + CONNECT_ACTION_PATH,
        )

    async def _connect_action(self, conn: ServerConnection, request: Request) -> Response:
        """Twilio asks what to do now that a call's stream has ended (``<Connect action>``):
        dial the destination of a call the model transferred, hang up one it ended or that is
        over, connect a stream that broke again as the same call (a resumption: the edge that
        held it died, a network cut), and one whose keys are gone as a new call (see
        :func:`~shared.resumption.after_stream`). Any edge can answer: the call is in Redis."""
        form = self.signed_callback(conn, request)
        if isinstance(form, Response):
            return form
        call_sid = form.get("CallSid", "")
        if not valid_call_sid(call_sid):
            reject("twilio_bad_call_sid")
            return respond(http.HTTPStatus.BAD_REQUEST, "bad CallSid\n")
        base = self._base_url(request)
        assert base is not None  # signed_callback refused a request without one
        keys = CallKeys.for_call(call_sid)
        extra: dict[str, str] = {}
        try:
            decided = await answer_action(
                self.redis, keys, form.get("CallStatus", ""), wall_clock_us
            )
        except RETRYABLE as exc:
            log.warning("cannot read how the call ended (%s); hanging up", exc)
            meta: dict[bytes, bytes] = {}
            answer = "ended"
        else:
            meta, answer = decided.meta, decided.answer
            if decided.grant is not None:
                extra[RESUME_PARAMETER] = decided.grant
                STREAM_RESUMES.labels("granted").inc()
        CONNECT_ACTIONS.labels(answer).inc()
        with call_context(call_sid):
            (log.info if answer in ("hang_up", "transfer", "ended") else log.warning)(
                "stream ended; Twilio asks what next",
                extra={"answer": answer, "call_status": form.get("CallStatus", "")},
            )
        if answer in ("resume", "new_call"):
            twiml = self._stream_twiml(base, form, extra)
        else:
            twiml = tw.after_stream_twiml(
                answer,
                meta.get(META_TRANSFER_TO, b"").decode("utf-8", "replace"),
                caller_id=form.get("To", ""),
            )
        return respond(http.HTTPStatus.OK, twiml, _TWIML_TYPE)

    def signed_callback(self, conn: ServerConnection, request: Request) -> Form | Response:
        """A Twilio callback's form (a POST, signed like every webhook), or the response that
        refuses it: a bad Host, another method, a body too large or chunked, a bad signature."""
        base = self._base_url(request)
        if base is None:
            reject("edge_bad_host")
            return respond(http.HTTPStatus.BAD_REQUEST, "bad Host header\n")
        if request.method != "POST":
            return respond(http.HTTPStatus.METHOD_NOT_ALLOWED, "POST\n")
        assert isinstance(conn, EdgeConnection)
        if conn.body_too_large or conn.length_required:
            reject("edge_body_too_large" if conn.body_too_large else "edge_body_chunked")
            return respond(http.HTTPStatus.BAD_REQUEST, "bad body\n")
        form = conn.form()
        if not self._signed(self._signed_url(base, request), form, request):
            return respond(http.HTTPStatus.FORBIDDEN, "invalid Twilio signature\n")
        return form

    def _stream_status(self, conn: ServerConnection, request: Request) -> Response:
        """Twilio's word on a stream: counted by event, and a stream-error logged, since a
        stream that failed its handshake never reaches ``/media`` to say so itself."""
        form = self.signed_callback(conn, request)
        if isinstance(form, Response):
            return form
        try:
            status = tw.stream_status(form)
        except tw.TwilioProtocolError as exc:
            reject(f"twilio_{exc.reason}")
            return respond(http.HTTPStatus.BAD_REQUEST, "not a stream status callback\n")
        STREAM_EVENTS.labels(status.event).inc()
        with call_context(status.call_sid, status.stream_sid):
            if status.event == "stream-error":
                log.warning("Twilio reports a stream error: %s", status.error)
            else:
                log.info("Twilio reports %s", status.event)
        return respond(http.HTTPStatus.NO_CONTENT, b"")

    async def admit_start(self, bridge: CallBridge) -> bool:
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

    def _close_pending(self, bridges: list[CallBridge], reason: str, text: str) -> None:
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
            process_request=self.process_request,
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
        if not edge.signatures.enabled:
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
