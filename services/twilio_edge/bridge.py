"""One Twilio Media Stream at the edge, from ``connected`` to ``stop`` or a closed socket.

Twilio's messages go through the pure :class:`~shared.twilio_media.TwilioMediaSession`; caller
frames are queued on the edge's :class:`~shared.runtime.redis_io.BatchedStreamWriter`; the
call's replies (``out.pcmu``) and the worker's commands (``cmd``) come from the edge's shared
reader into :class:`~services.twilio_edge.replies.Replies`, and the bridge's sender task moves
them to Twilio through :class:`~shared.playback.OutboundPlayback`. A bridge depends on
:class:`~services.twilio_edge.interfaces.BridgeHost`, never on the edge's service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from services.twilio_edge.interfaces import BridgeHost
from services.twilio_edge.replies import Replies
from services.twilio_edge.resume import resume_point
from shared import twilio_media as tw
from shared.limits import TokenBucket
from shared.playback import OutboundPlayback
from shared.resumption import (
    RESUME_PARAMETER,
    Admission,
    admit_stream,
    break_marking,
    check_holding,
    heard_field,
)
from shared.runtime.lifecycle import wall_clock_us
from shared.runtime.observability import (
    ACTIVE_CALLS,
    CALLS,
    FRAMES,
    HOP_LATENCY,
    REANNOUNCED,
    STREAM_RESUMES,
    bind_call,
    reject,
)
from shared.runtime.redis_io import (
    RETRYABLE,
    expire_all,
    fields_arg,
    hash_field,
    hash_fields,
    outlasting_cancel,
)
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
    CallEvent,
    CallKeys,
    CallStarted,
    DtmfPressed,
    HangUp,
    InboundFrame,
    InboundIds,
    KeyExpiry,
    MarkPlayed,
    OutboundChunk,
    StreamEnd,
    call_meta,
    call_ttl_s,
    lifecycle_stream_for,
    valid_call_sid,
)

log = logging.getLogger("gateway.edge")

LOSS_CHECK_S = 1.0  # how often a call checks that Redis still knows it (and that it is its)
RESUME_POLL_S = 0.25  # how often a broken stream's edge looks for the call's new stream


class CallBridge:
    """One Twilio Media Stream, from ``connected`` to ``stop`` or a closed socket."""

    def __init__(self, edge: BridgeHost, ws: ServerConnection) -> None:
        self.edge = edge
        self.ws = ws
        self.session = tw.TwilioMediaSession()
        self.keys: CallKeys | None = None
        self.stream_sid = ""
        self.reader: asyncio.Task[None] | None = None  # sends the reply (_send_replies)
        self.replies: Replies | None = None  # this call's part in the edge's reply reader
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
        self.edge.call_started(self)
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
        replies = Replies(keys, playback, cursors)
        if first is not None:
            replies.queue(playback.chunk(first), None)
        self.replies = replies
        self.edge.replies.add(replies)
        self.reader = asyncio.create_task(self._send_replies(keys, started, replies))

    async def _send_replies(self, keys: CallKeys, started: CallStarted, replies: Replies) -> None:
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

    async def _reply_reading_ended(self, replies: Replies) -> None:
        """The shared reader stopped reading for this call: taken over by a newer stream
        ("removed"), or its entries could not be handled (a bug, or a key that is not a stream).
        In the second case nothing more of the reply can reach the caller, so the call ends,
        rather than go on in silence."""
        if replies.outcome.cancelled() or replies.outcome.exception() is None:
            return
        log.error("the call's replies cannot be read: %r", replies.outcome.exception())
        self.hung_up = True
        await self.ws.close(1011, "reply path failed")


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
