"""The realtime worker's asyncio shell: one OpenAI Realtime socket per owned call.

Per call, two loops feed one :class:`~shared.conversation.CallConversation`: caller frames and
control entries from Redis (one blocking ``XREAD`` over the call's ``in.pcm`` and ``ctl``), and the
model's events from the socket. The core's actions are performed in order: text to the socket,
entries to Redis through the process-wide batched writer. When the socket drops, the call gets a
new session (capped, jittered backoff) with the transcript so far; frames that arrived meanwhile
wait in Redis and are delivered to it. Past ``REALTIME_RESTORE_SECONDS`` the caller is told
goodbye by a hang-up rather than left in silence.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from shared.backoff import Backoff
from shared.conversation import (
    Action,
    CallConversation,
    EndCall,
    Measure,
    Role,
    SendToModel,
    WriteCommand,
    WriteEvent,
    WriteOutbound,
)
from shared.realtime_dialect import (
    Accepted,
    Combo,
    DialectNegotiator,
    Failed,
    RealtimeDialect,
    RealtimeProtocolError,
    ServerError,
    SessionConfig,
    SessionCreated,
    SessionUpdated,
    Switch,
    close_refusal,
    refuses_update,
)
from shared.runtime.claims import Claim, OwnedCalls, stage_claims
from shared.runtime.lifecycle import run_service, serve_stage, wall_clock_us
from shared.runtime.observability import (
    ACTIVE_CALLS,
    CALLS,
    FIRST_REPLY,
    FRAMES,
    HOP_LATENCY,
    REALTIME_ERRORS,
    RECONNECTS,
    call_context,
    label,
    reject,
)
from shared.runtime.redis_io import (
    RETRYABLE,
    BatchedStreamWriter,
    expire_all,
    outlasting_cancel,
)
from shared.runtime.settings import Settings, settings_or_exit
from shared.streams import (
    META_REANNOUNCED,
    META_WORKER_CURSOR,
    WORKER_GROUP,
    CallEvent,
    CallKeys,
    HangUp,
    InboundFrame,
    StreamEnd,
    StreamEntryError,
    decode_control,
    decode_event,
    decode_inbound,
)

log = logging.getLogger("gateway.worker")

META_CTL_CURSOR = b"worker_ctl"
META_GREETED = b"greeted"
CURSOR_SAVE_INTERVAL_S = 0.2
CALL_SILENT_LIMIT_S = 30.0
_EMULATOR_KEY = "sk-local-emulator"


class SessionRefused(Exception):
    """The server will not accept our session (dialect mismatch on every combo, auth, ...)."""


class CallOver(Exception):
    """The caller's side ended (in-band end of the inbound stream)."""


@dataclass
class _Cursors:
    inbound: bytes
    control: bytes
    saved_at: float = 0.0
    dirty: bool = False


class RealtimeWorker:
    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.writer = BatchedStreamWriter(redis, settings.stream_maxlen)
        claims = stage_claims(
            redis,
            WORKER_GROUP,
            settings.consumer_name,
            settings.owner_idle_ms,
            settings.lifecycle_partitions,
        )
        self.owned = OwnedCalls(claims, self.run_call)
        key = settings.openai_api_key
        self.api_key = key.get_secret_value() if key else _EMULATOR_KEY
        # With REALTIME_SCHEMA=auto, the combo the server accepted last time is tried first.
        self.preferred_combo = Combo.GA
        self.hop_in = HOP_LATENCY.labels("edge_to_openai")
        self.frames_in = FRAMES.labels("worker_in")
        self.frames_out = FRAMES.labels("worker_out")

    # --- one call ------------------------------------------------------------------------------
    async def run_call(self, claim: Claim) -> None:
        call = claim.call
        keys = CallKeys.for_call(call.call_sid)
        with call_context(call.call_sid, call.stream_sid):
            meta = await self.redis.hgetall(keys.meta)
            if not meta:
                log.info("call's keys are gone (expired); nothing to do")
                return
            try:
                config = SessionConfig.from_settings(self.settings, call.custom_parameters)
            except ValueError as exc:
                reject("worker_bad_parameters")
                log.warning("ignoring invalid per-call parameters: %s", exc)
                config = SessionConfig.from_settings(self.settings, None)
            ACTIVE_CALLS.inc()
            outcome = "completed"
            try:
                outcome = await self._serve(keys, config, meta, claim.recovered)
            finally:
                ACTIVE_CALLS.dec()
                CALLS.labels(outcome).inc()

    async def _serve(
        self, keys: CallKeys, config: SessionConfig, meta: dict[bytes, bytes], recovered: bool
    ) -> str:
        settings = self.settings
        core = CallConversation(
            dialect=self._first_dialect(config),
            turn_detection=config.turn_detection,
            commit_frames=settings.realtime_commit_frames,
            greeting=settings.realtime_greeting,
            rate=config.rate,
        )
        cursors = _Cursors(meta.get(META_WORKER_CURSOR, b"0-0"), meta.get(META_CTL_CURSOR, b"0-0"))
        if META_REANNOUNCED in meta:  # Redis lost the call mid-way: no greeting, no past
            core.restore([], greeted=True)
        elif recovered or META_WORKER_CURSOR in meta:
            core.restore(await self._transcript(keys), META_GREETED in meta)
        expiry_set: set[bytes] = set()
        outcome = "completed"
        restore_deadline: float | None = None
        backoff = Backoff(base_s=0.2, cap_s=2.0)
        try:
            while True:  # one iteration per Realtime session
                try:
                    ws, core.dialect = await self._open_session(config)
                except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                    if isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403):
                        log.error("OpenAI refused our credentials (%s)", exc.response.status_code)
                        outcome = "realtime_auth"
                        break
                    now = time.monotonic()
                    restore_deadline = restore_deadline or now + settings.realtime_restore_seconds
                    if now >= restore_deadline:
                        outcome = "realtime_unavailable"
                        break
                    RECONNECTS.labels("openai").inc()
                    delay = backoff.next_delay()
                    log.warning("realtime connect failed (%s); retrying in %.2fs", exc, delay)
                    await asyncio.sleep(delay)
                    continue
                except SessionRefused as exc:
                    log.error("realtime session refused: %s", exc)
                    outcome = "realtime_refused"
                    break
                backoff.reset()
                restore_deadline = None
                self._write(
                    keys,
                    WriteEvent(CallEvent("session", {"combo": core.dialect.combo.name})),
                    expiry_set,
                )
                if META_GREETED not in meta and core.greeting:
                    meta[META_GREETED] = b"1"
                    await self.redis.hset(keys.meta, META_GREETED, b"1")
                try:
                    outcome = await self._converse(ws, keys, core, cursors, expiry_set)
                finally:
                    await ws.close()
                if outcome != "socket_lost":
                    break
                RECONNECTS.labels("openai").inc()
                log.warning("realtime socket lost; opening a new session with the transcript")
                restore_deadline = time.monotonic() + settings.realtime_restore_seconds
        except asyncio.CancelledError:
            # Claim lost or shutting down: the call goes on elsewhere. Leave it as it is, with
            # the cursors saved, for the next owner.
            await asyncio.shield(self._save_cursors(keys, cursors))
            raise
        await self._finish(keys, cursors, outcome, expiry_set)
        return outcome

    async def _converse(
        self,
        ws: ClientConnection,
        keys: CallKeys,
        core: CallConversation,
        cursors: _Cursors,
        expiry_set: set[bytes],
    ) -> str:
        """Run one session until the call ends (its reason) or the socket drops ("socket_lost")."""
        await self._perform(ws, keys, core.session_ready(wall_clock_us()), expiry_set)
        model = asyncio.create_task(self._from_model(ws, keys, core, expiry_set))
        caller = asyncio.create_task(self._from_caller(ws, keys, core, cursors, expiry_set))
        try:
            done, _ = await asyncio.wait({model, caller}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this call's task is cancelled: no half of it may outlive it
            for task in (model, caller):
                task.cancel()
            await asyncio.gather(model, caller, return_exceptions=True)
        finished = done.pop()
        try:
            return finished.result()
        except ConnectionClosed:
            return "socket_lost"

    async def _from_model(
        self, ws: ClientConnection, keys: CallKeys, core: CallConversation, expiry_set: set[bytes]
    ) -> str:
        async for message in ws:
            try:
                event = core.dialect.parse(message)
            except RealtimeProtocolError as exc:
                reject("realtime_bad_event")
                log.warning("unparseable realtime event: %s", exc)
                continue
            if isinstance(event, ServerError):
                REALTIME_ERRORS.labels(label(event.code or "unknown")).inc()
                log.info("realtime error %s: %s", event.code, event.message[:200])
            ended = await self._perform(
                ws, keys, core.server_event(event, wall_clock_us()), expiry_set
            )
            if ended:
                return ended
        return "socket_lost"

    async def _from_caller(
        self,
        ws: ClientConnection,
        keys: CallKeys,
        core: CallConversation,
        cursors: _Cursors,
        expiry_set: set[bytes],
    ) -> str:
        silent_since = time.monotonic()
        backoff = Backoff()
        while True:
            try:
                reply = await outlasting_cancel(
                    self.redis.xread(
                        {keys.ctl: cursors.control, keys.in_pcm: cursors.inbound},
                        count=64,
                        block=1000,
                    )
                )
            except RETRYABLE as exc:
                log.warning("redis unavailable (%s)", exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            now = time.monotonic()
            if not reply:
                if now - silent_since > CALL_SILENT_LIMIT_S:
                    return "abandoned"
                continue
            silent_since = now
            for stream, entries in reply:
                for entry_id, fields in entries:
                    if stream == keys.in_pcm:
                        cursors.inbound = entry_id
                        ended = await self._caller_frame(ws, keys, core, fields, expiry_set)
                        if ended:
                            return ended
                    else:
                        cursors.control = entry_id
                        try:
                            control = decode_control(fields)
                        except StreamEntryError as exc:
                            reject(f"worker_{exc.reason}")
                            continue
                        await self._perform(ws, keys, core.control(control), expiry_set)
            cursors.dirty = True
            if now - cursors.saved_at >= CURSOR_SAVE_INTERVAL_S:
                await self._save_cursors(keys, cursors)

    async def _caller_frame(
        self,
        ws: ClientConnection,
        keys: CallKeys,
        core: CallConversation,
        fields: dict[bytes, bytes],
        expiry_set: set[bytes],
    ) -> str | None:
        try:
            entry = decode_inbound(fields)
        except StreamEntryError as exc:
            reject(f"worker_{exc.reason}")
            return None
        if isinstance(entry, StreamEnd):
            return entry.reason or "caller_hung_up"
        assert isinstance(entry, InboundFrame)
        if not entry.audio or len(entry.audio) % 2:
            reject("worker_bad_audio_size")
            return None
        await self._perform(ws, keys, core.caller_audio(entry.audio), expiry_set)
        self.frames_in.inc()
        if entry.stamp_us >= core.ready_us:
            self.hop_in.observe(max(0, wall_clock_us() - entry.stamp_us) / 1e6)
        return None

    # --- actions ----------------------------------------------------------------------------------
    async def _perform(
        self, ws: ClientConnection, keys: CallKeys, actions: list[Action], expiry_set: set[bytes]
    ) -> str | None:
        """Carry out the core's actions in order; the reason if one of them ends the call."""
        for action in actions:
            if isinstance(action, SendToModel):
                await ws.send(action.text)
            elif isinstance(action, EndCall):
                return action.reason
            elif isinstance(action, Measure):
                FIRST_REPLY.observe(action.seconds)
            else:
                self._write(keys, action, expiry_set)
        return None

    def _write(
        self,
        keys: CallKeys,
        action: WriteOutbound | WriteCommand | WriteEvent,
        expiry_set: set[bytes],
    ) -> None:
        if isinstance(action, WriteOutbound):
            stream, fields = keys.out_pcm, action.chunk.encode()
            self.frames_out.inc()
        elif isinstance(action, WriteCommand):
            stream, fields = keys.cmd, action.command.encode()
        else:
            stream, fields = keys.events, action.event.encode()
            event = action.event
            if event.kind == "transcript":
                log.info(
                    "transcript",
                    extra={"role": event.data.get("role"), "text": event.data.get("text")},
                )
        expire = None
        if stream not in expiry_set:
            expiry_set.add(stream)
            expire = self.settings.call_max_seconds
        # Events are the call's record: never trimmed by count, only expired with the call.
        self.writer.add(
            stream, fields, maxlen=None if stream == keys.events else -1, expire_s=expire
        )

    async def _save_cursors(self, keys: CallKeys, cursors: _Cursors) -> None:
        try:
            await self.redis.hset(
                keys.meta,
                mapping={META_WORKER_CURSOR: cursors.inbound, META_CTL_CURSOR: cursors.control},
            )
            cursors.saved_at = time.monotonic()
            cursors.dirty = False
        except RETRYABLE as exc:
            log.warning("could not save cursors: %s", exc)

    async def _finish(
        self, keys: CallKeys, cursors: _Cursors, outcome: str, expiry_set: set[bytes]
    ) -> None:
        """The call is over for the worker: tell the other stages and leave only expiring keys."""
        if outcome.startswith("realtime_"):
            # The caller would otherwise sit in silence: end the call for them.
            self._write(keys, WriteCommand(HangUp(outcome)), expiry_set)
        self._write(keys, WriteEvent(CallEvent("ended", {"reason": outcome})), expiry_set)
        self.writer.add(keys.out_pcm, StreamEnd(outcome).encode())
        try:
            await self._save_cursors(keys, cursors)
            await asyncio.wait_for(self.writer.flush(keys.out_pcm, keys.cmd, keys.events), 5.0)
            await expire_all(self.redis, keys.all(), self.settings.call_retention_seconds)
        except (*RETRYABLE, TimeoutError) as exc:
            log.warning("could not finish the call cleanly in redis: %s", exc)
        log.info("call finished", extra={"outcome": outcome})

    async def _transcript(self, keys: CallKeys) -> list[tuple[Role, str]]:
        transcript: list[tuple[Role, str]] = []
        for _, fields in await self.redis.xrange(keys.events):
            try:
                event = decode_event(fields)
            except StreamEntryError:
                continue
            if event.kind == "transcript" and event.data.get("text"):
                role: Role = "user" if event.data.get("role") == "caller" else "assistant"
                transcript.append((role, event.data["text"]))
        return transcript

    # --- the session ---------------------------------------------------------------------------
    def _first_dialect(self, config: SessionConfig) -> RealtimeDialect:
        s = self.settings
        if s.realtime_schema == "auto":
            return DialectNegotiator(self.preferred_combo, config).current
        return RealtimeDialect(s.realtime_schema, s.realtime_beta_header, config)

    async def _open_session(
        self, config: SessionConfig
    ) -> tuple[ClientConnection, RealtimeDialect]:
        """Connect and get the session accepted, switching combos under ``auto``."""
        s = self.settings
        negotiator = (
            DialectNegotiator(self.preferred_combo, config) if s.realtime_schema == "auto" else None
        )
        dialect = negotiator.current if negotiator else self._first_dialect(config)
        timeout = s.timeout_ms / 1000
        while True:
            request = dialect.connect_request(s.realtime_url, s.realtime_model, self.api_key)
            ws = await websockets.connect(
                request.url,
                additional_headers=request.headers,
                max_size=16 * 1024 * 1024,
                # Base64 audio barely compresses; deflate cost more CPU than the whole hop.
                compression=None,
                open_timeout=timeout,
                ping_interval=20,
                ping_timeout=20,
                # A close waits for the server's close frame, which may sit behind reply audio
                # nobody reads any more (the call was handed over or hung up): don't hold the
                # call's task, or a shutdown, for websockets' default 10 s.
                close_timeout=1.0,
            )
            try:
                step = await asyncio.wait_for(self._handshake(ws, dialect, negotiator), timeout)
            except BaseException:
                await ws.close()
                raise
            if step is None:
                if negotiator:
                    self.preferred_combo = dialect.combo
                return ws, dialect
            await ws.close()
            assert negotiator is not None
            dialect = negotiator.current
            log.warning("realtime dialect switch: %s", step)

    async def _handshake(
        self, ws: ClientConnection, dialect: RealtimeDialect, negotiator: DialectNegotiator | None
    ) -> str | None:
        """session.created -> session.update -> session.updated; a reason to switch, or None."""
        try:
            return await self._handshake_events(ws, dialect, negotiator)
        except ConnectionClosed as exc:  # while waiting or while sending the update
            code = exc.rcvd.code if exc.rcvd else 1006
            reason = exc.rcvd.reason if exc.rcvd else ""
            if negotiator:
                step = negotiator.on_close(code, reason)
                if isinstance(step, Switch):
                    return step.reason
                if isinstance(step, Failed):
                    raise SessionRefused(step.reason) from None
            elif refusal := close_refusal(code, reason):
                raise SessionRefused(refusal) from None  # the configured combo is gone for good
            raise

    async def _handshake_events(
        self, ws: ClientConnection, dialect: RealtimeDialect, negotiator: DialectNegotiator | None
    ) -> str | None:
        sent = False
        while True:
            message = await ws.recv()
            try:
                event = dialect.parse(message)
            except RealtimeProtocolError:
                reject("realtime_bad_event")
                continue
            if isinstance(event, SessionCreated) and not sent:
                await ws.send(json.dumps(dialect.session_update()))
                sent = True
                continue
            if negotiator:
                step = negotiator.on_event(event)
                if isinstance(step, Accepted):
                    return None
                if isinstance(step, Switch):
                    return step.reason
                if isinstance(step, Failed):
                    raise SessionRefused(step.reason)
            if isinstance(event, SessionUpdated):
                return None
            if isinstance(event, ServerError):
                REALTIME_ERRORS.labels(label(event.code or "unknown")).inc()
                if sent and refuses_update(event):
                    raise SessionRefused(f"{event.code}: {event.message}")

    # --- the stage's lifecycle ------------------------------------------------------------------
    def loops(self) -> list[Coroutine[Any, Any, None]]:
        return [self.writer.run(), self.owned.run()]

    async def stop(self) -> None:
        await self.owned.stop(hand_over=True)
        await asyncio.wait_for(self.writer.flush(), 1.0)


async def run_worker(
    settings: Settings, stop: asyncio.Event, redis: aioredis.Redis | None = None
) -> None:
    async def build(client: aioredis.Redis) -> RealtimeWorker:
        log.info(
            "realtime worker ready",
            extra={"consumer": settings.consumer_name, "realtime_url": settings.realtime_url},
        )
        return RealtimeWorker(settings, client)

    await serve_stage("realtime_worker", settings, stop, build, redis)


def main(settings: Settings | None = None) -> None:
    settings = settings or settings_or_exit("realtime_worker")
    if settings.openai_api_key is None and not settings.uses_emulator:
        print(
            "realtime_worker: configuration error: OPENAI_API_KEY is required when REALTIME_URL "
            f"({settings.realtime_url}) is not the local emulator",
            file=sys.stderr,
        )
        raise SystemExit(2)
    run_service("realtime_worker", settings, lambda stop: run_worker(settings, stop))
