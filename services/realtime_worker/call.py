"""One call in the realtime worker, as the edge has :class:`CallBridge`: its Realtime socket, its
keys, its conversation core and its cursors.

The call does not read Redis for its caller's frames: :mod:`services.realtime_worker.feed` reads
them and hands them over (:meth:`RealtimeCall.on_entries`), so how entries are read can change
in that one place. The model's events come from the socket, one session at a time; when the
socket drops, the call gets a new session (capped, jittered backoff) with the transcript so far,
and frames that arrived meanwhile wait in Redis for it. Past ``REALTIME_RESTORE_SECONDS`` the
caller is told goodbye by a hang-up rather than left in silence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from services.realtime_worker.session import SessionRefused, open_session
from shared.backoff import Backoff
from shared.call_actions import (
    Action,
    EndCall,
    Measure,
    RunTool,
    SendToModel,
    SetDisposition,
    WriteCommand,
    WriteEvent,
    WriteOutbound,
)
from shared.conversation import CallConversation, Role
from shared.realtime_dialect import (
    RealtimeDialect,
    RealtimeProtocolError,
    ServerError,
    SessionConfig,
)
from shared.runtime.lifecycle import wall_clock_us
from shared.runtime.observability import (
    FIRST_REPLY,
    REALTIME_ERRORS,
    RECONNECTS,
    ROLLOVERS,
    label,
    reject,
)
from shared.runtime.redis_io import RETRYABLE, expire_all
from shared.streams import (
    META_CONTROL_CURSOR,
    META_DISPOSITION,
    META_GREETED,
    META_REANNOUNCED,
    META_TRANSFER_TO,
    META_WORKER_CURSOR,
    TOOL_CALLS_MAXLEN,
    TOOL_CALLS_STREAM,
    CallEvent,
    CallKeys,
    CallStarted,
    HangUp,
    InboundFrame,
    KeyExpiry,
    StreamEnd,
    StreamEntryError,
    decode_control,
    decode_event,
    decode_inbound,
)
from shared.tool_calls import CallIdentity, CallTools

if TYPE_CHECKING:
    from services.realtime_worker.service import RealtimeWorker

log = logging.getLogger("gateway.worker")

CURSOR_SAVE_INTERVAL_S = 0.2
# Past REALTIME_SESSION_MAX_SECONDS by this much, the call moves between two replies even if
# no quiet moment came.
ROLLOVER_GRACE_S = 120.0
# A next session opened at a quiet moment that ended before it was ready is dropped after this
# long (at most half the session limit), rather than take over already old.
ROLLOVER_STALE_S = 30.0
MAX_GREETING_CHARS = 2000
Entries = Sequence[tuple[bytes, dict[bytes, bytes]]]


@dataclass
class Cursors:
    """Where the call is in its two input streams; saved in the call's meta now and then, so a
    worker that takes the call over goes on from there."""

    inbound: bytes
    control: bytes
    saved_at: float = 0.0
    saved: tuple[bytes, bytes] = (b"", b"")  # what was last saved
    in_flight: asyncio.Future[None] | None = None  # a save sent with the reader's batch


class RealtimeCall:
    """One call's conversation with the model, across its Realtime sessions."""

    def __init__(
        self,
        worker: RealtimeWorker,
        call: CallStarted,
        meta: dict[bytes, bytes],
        config: SessionConfig,
    ) -> None:
        self.worker = worker
        self.call = call
        self.keys = CallKeys.for_call(call.call_sid)
        self.meta = meta
        self.config = config
        settings = worker.settings
        self.handshake = worker.dialects.handshake(
            config, settings.realtime_schema, settings.realtime_beta_header
        )
        params = call.custom_parameters
        greeting = params.get("greeting", settings.greeting)[:MAX_GREETING_CHARS]
        tools = worker.tools
        self.core = CallConversation(
            dialect=self.handshake.dialect,
            turn_detection=config.turn_detection,
            commit_frames=settings.realtime_commit_frames,
            greeting=greeting,
            rate=config.rate,
            context_chars=settings.realtime_context_chars,
            tools=CallTools(
                tools,
                CallIdentity(
                    call.call_sid,
                    call.stream_sid,
                    params.get("From", ""),
                    params.get("To", ""),
                    params,
                ),
                max_calls=settings.tool_calls_per_call,
                max_in_flight=settings.tool_calls_in_flight,
                filler_after_us=settings.tool_still_working_ms * 1000,
            )
            if tools
            else None,
        )
        self.cursors = Cursors(
            meta.get(META_WORKER_CURSOR, b"0-0"), meta.get(META_CONTROL_CURSOR, b"0-0")
        )
        self.expiry = KeyExpiry()
        self.ws: ClientConnection | None = None  # the live session's socket
        self.model_task: asyncio.Task[str] | None = None  # reading self.ws
        self.session_started = 0.0  # monotonic, when self.ws became the caller's session
        # The next session, opened beside the live one once it is REALTIME_SESSION_MAX_SECONDS
        # old; the caller's audio moves to it at the first quiet moment (a rollover).
        self.next_session: asyncio.Task[tuple[ClientConnection, RealtimeDialect, float]] | None = (
            None
        )
        self.next_attempt_at = 0.0
        self.closing: set[asyncio.Task[None]] = set()  # sessions being closed after a rollover

    # --- the call, session after session ----------------------------------------------------------
    async def run(self, recovered: bool) -> str:
        """Serve the call until it ends; returns the outcome. Cancelled (claim lost, shutdown):
        the cursors are saved and the call is left as it is for the next owner."""
        if META_REANNOUNCED in self.meta:  # Redis lost the call mid-way: no greeting, no past
            self.core.restore([], greeted=True)
        elif recovered or META_WORKER_CURSOR in self.meta:
            self.core.restore(await self._transcript(), META_GREETED in self.meta)
        try:
            outcome = await self._sessions()
        except asyncio.CancelledError:
            await asyncio.shield(self.save_cursors())
            raise
        await self._finish(outcome)
        return outcome

    async def _sessions(self) -> str:
        settings = self.worker.settings
        restore_deadline: float | None = None
        backoff = Backoff(base_s=0.2, cap_s=2.0)
        while True:  # one iteration per Realtime session
            try:
                attempt = self.handshake.next_attempt()  # each connection its own handshake
                ws, dialect = await open_session(
                    settings, attempt, self.worker.api_key, self.worker.dialects
                )
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                if isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403):
                    log.error("OpenAI refused our credentials (%s)", exc.response.status_code)
                    return "realtime_auth"
                now = time.monotonic()
                restore_deadline = restore_deadline or now + settings.realtime_restore_seconds
                if now >= restore_deadline:
                    return "realtime_unavailable"
                RECONNECTS.labels("openai").inc()
                delay = backoff.next_delay()
                log.warning("realtime connect failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            except SessionRefused as exc:
                log.error("realtime session refused: %s", exc)
                return "realtime_refused"
            backoff.reset()
            restore_deadline = None
            # The next session (and the worker's next call) starts where this worked (auto, or
            # GA once the server said the beta is retired).
            self.handshake = self.worker.dialects.handshake(
                self.config, settings.realtime_schema, settings.realtime_beta_header
            )
            self.core.dialect = dialect
            self._write(WriteEvent(CallEvent("session", {"combo": dialect.combo.name})))
            if META_GREETED not in self.meta and self.core.greeting:
                self.meta[META_GREETED] = b"1"
                await self.worker.redis.hset(self.keys.meta, META_GREETED, b"1")
            try:
                outcome = await self._converse(ws)
            finally:
                live, self.ws = self.ws or ws, None  # after rollovers, not the one opened here
                await live.close()
            if outcome != "socket_lost":
                return outcome
            RECONNECTS.labels("openai").inc()
            log.warning("realtime socket lost; opening a new session with the transcript")
            restore_deadline = time.monotonic() + settings.realtime_restore_seconds

    async def _converse(self, ws: ClientConnection) -> str:
        """Sessions from ``ws`` on, until the call ends (its reason) or the live session's
        socket drops ("socket_lost"). A rollover replaces the live session under it."""
        self.ws = ws
        self.session_started = time.monotonic()
        await self._perform(self.core.session_ready(wall_clock_us()))
        from services.realtime_worker.feed import feed  # the one place entries are read

        self.model_task = asyncio.create_task(self._from_model(ws))
        caller = asyncio.create_task(feed(self.worker.reader, self))
        try:
            while True:
                model = self.model_task
                done, _ = await asyncio.wait({model, caller}, return_when=asyncio.FIRST_COMPLETED)
                if caller in done:
                    try:
                        return caller.result()
                    except ConnectionClosed:  # a frame's send found the session gone
                        self.core.session_lost()
                        return "socket_lost"
                if model is not self.model_task:
                    continue  # a rollover replaced it: the new session goes on
                try:
                    outcome = model.result()
                except ConnectionClosed:
                    outcome = "socket_lost"
                if outcome == "socket_lost":
                    self.core.session_lost()
                return outcome
        finally:  # also when this call's task is cancelled: no half of it may outlive it
            tasks = [t for t in (self.model_task, caller, self.next_session) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.next_session is not None and not self.next_session.cancelled():
                if self.next_session.exception() is None:
                    await self.next_session.result()[0].close()
            self.next_session = None

    async def _from_model(self, ws: ClientConnection) -> str:
        async for message in ws:
            try:
                event = self.core.dialect.parse(message)
            except RealtimeProtocolError as exc:
                reject("realtime_bad_event")
                log.warning("unparseable realtime event: %s", exc)
                continue
            if isinstance(event, ServerError):
                REALTIME_ERRORS.labels(label(event.code or "unknown")).inc()
                log.info("realtime error %s: %s", event.code, event.message[:200])
            ended = await self._perform(self.core.server_event(event, wall_clock_us()))
            if ended:
                return ended
        return "socket_lost"

    # --- entries from the caller's side (fed by the reader) --------------------------------------
    def streams(self) -> dict[bytes, bytes]:
        """What the reader reads for this call: its streams and where it is in each."""
        return {self.keys.ctl: self.cursors.control, self.keys.in_pcm: self.cursors.inbound}

    async def on_entries(self, stream: bytes, entries: Entries) -> str | None:
        """Act on entries read from one of :meth:`streams`; the call's end reason if they end
        it. The cursor moves past each entry acted on."""
        for entry_id, fields in entries:
            # Each cursor moves past an entry only once it was acted on: a frame whose send
            # found the session gone goes to the next session instead of being lost.
            if stream == self.keys.in_pcm:
                ended = await self._caller_frame(fields)
                self.cursors.inbound = entry_id
                if ended:
                    return ended
            else:
                try:
                    control = decode_control(fields)
                except StreamEntryError as exc:
                    reject(f"worker_{exc.reason}")
                    self.cursors.control = entry_id
                    continue
                await self._perform(self.core.control(control))
                self.cursors.control = entry_id
        ended = await self._perform(self.core.tick(wall_clock_us()))
        await self._roll_over_when_due()
        return ended

    # --- rollover: the next session before the server ends this one ------------------------------
    async def _roll_over_when_due(self) -> None:
        """Between two caller frames: open the next session once this one is old enough, and
        move the caller to it at a quiet moment. Done here, at a frame boundary, so that no
        frame is lost or sent twice across the switch."""
        max_s = self.worker.settings.realtime_session_max_seconds
        if max_s <= 0:
            return
        now = time.monotonic()
        age = now - self.session_started
        due = self.core.may_switch(
            int(age * 1e6), max_s * 1_000_000, int(ROLLOVER_GRACE_S * 1e6), wall_clock_us()
        )
        if self.next_session is None:
            # Opened at a quiet moment (or when forced), so that it is fresh when it takes over:
            # the server counts a session's time from its opening.
            if due and now >= self.next_attempt_at:
                self.next_session = asyncio.create_task(self._open_next())
            return
        if not self.next_session.done():
            return
        try:
            ws, dialect, opened = self.next_session.result()
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed, SessionRefused) as exc:
            log.warning("could not open the next session (%s); trying again", exc)
            self.next_session = None
            self.next_attempt_at = now + 2.0
            return
        if not due:
            if now - opened > min(ROLLOVER_STALE_S, max_s / 2):  # no quiet moment came since
                self.next_session = None
                self._close_later(ws)
            return
        self.next_session = None
        await self._switch(ws, dialect, opened, age)

    def _close_later(self, ws: ClientConnection) -> None:
        """Close a session the call no longer uses without holding up the caller's audio
        (the task is kept until done: an unreferenced task may be collected half-way)."""
        task = asyncio.create_task(ws.close())
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    async def _open_next(self) -> tuple[ClientConnection, RealtimeDialect, float]:
        attempt = self.handshake.next_attempt()  # the same session.update, tools included
        opened = time.monotonic()
        ws, dialect = await open_session(
            self.worker.settings, attempt, self.worker.api_key, self.worker.dialects
        )
        return ws, dialect, opened

    async def _switch(
        self, ws: ClientConnection, dialect: RealtimeDialect, opened: float, age: float
    ) -> None:
        old, old_reader = self.ws, self.model_task
        t0 = time.monotonic()
        self.core.dialect = dialect
        for action in self.core.seed():  # the conversation so far, before any caller audio
            if isinstance(action, SendToModel):
                await ws.send(action.text)
        self.core.switched(wall_clock_us())
        self.ws, self.session_started = ws, opened
        self.model_task = asyncio.create_task(self._from_model(ws))
        if old_reader is not None:
            old_reader.cancel()
        ROLLOVERS.inc()
        switch_ms = round((time.monotonic() - t0) * 1000, 1)
        self._write(
            WriteEvent(
                CallEvent(
                    "session",
                    {"combo": dialect.combo.name, "rollover": "1", "after_s": f"{age:.1f}"},
                )
            )
        )
        log.info("rolled the call over to a new session", extra={"switch_ms": switch_ms})
        if old is not None:
            self._close_later(old)  # its reader is gone; nothing more comes from it

    async def _caller_frame(self, fields: dict[bytes, bytes]) -> str | None:
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
        await self._perform(self.core.caller_audio(entry.audio))
        self.worker.frames_in.inc()
        if entry.stamp_us >= self.core.ready_us:
            self.worker.hop_in.observe(max(0, wall_clock_us() - entry.stamp_us) / 1e6)
        return None

    # --- actions ----------------------------------------------------------------------------------
    async def _perform(self, actions: list[Action]) -> str | None:
        """Carry out the core's actions in order; the reason if one of them ends the call."""
        for action in actions:
            if isinstance(action, SendToModel):
                assert self.ws is not None
                await self.ws.send(action.text)
            elif isinstance(action, EndCall):
                return action.reason
            elif isinstance(action, Measure):
                FIRST_REPLY.observe(action.seconds)
            elif isinstance(action, RunTool):
                self.worker.writer.add(
                    TOOL_CALLS_STREAM, action.call.encode(), maxlen=TOOL_CALLS_MAXLEN
                )
                log.info("tool call", extra={"tool": action.call.name, "id": action.call.call_id})
            elif isinstance(action, SetDisposition):
                # Before the hang-up: the edge answering Twilio's <Connect action> reads it.
                await self.worker.redis.hset(
                    self.keys.meta,
                    mapping={
                        META_DISPOSITION: action.kind.encode(),
                        META_TRANSFER_TO: action.target.encode(),
                    },
                )
            else:
                self._write(action)
        return None

    def _write(self, action: WriteOutbound | WriteCommand | WriteEvent) -> None:
        keys = self.keys
        if isinstance(action, WriteOutbound):
            stream, fields = keys.out_pcm, action.chunk.encode()
            self.worker.frames_out.inc()
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
        first = self.expiry.first_write(stream)
        self.worker.writer.add(
            stream,
            fields,
            maxlen=-1 if keys.capped(stream) else None,
            expire_s=self.worker.settings.call_max_seconds if first else None,
        )

    async def save_cursors(self) -> None:
        saving = self.cursors.in_flight
        if saving is not None and not saving.done():
            # A save the reader sent with a batch, not yet answered: this later one must not
            # land before it (a successor would go on from the older cursor).
            await asyncio.wait([saving], timeout=1.0)
        saved = (self.cursors.inbound, self.cursors.control)
        try:
            await self.worker.redis.hset(
                self.keys.meta,
                mapping={
                    META_WORKER_CURSOR: self.cursors.inbound,
                    META_CONTROL_CURSOR: self.cursors.control,
                },
            )
            self.cursors.saved_at, self.cursors.saved = time.monotonic(), saved
        except RETRYABLE as exc:
            log.warning("could not save cursors: %s", exc)

    def cursors_to_save(self, now: float) -> tuple[bytes, dict[bytes, bytes]] | None:
        """The meta fields to write, once :data:`CURSOR_SAVE_INTERVAL_S` has passed since the
        last save and the call has moved (the reader sends them with its next batch)."""
        c = self.cursors
        if now - c.saved_at < CURSOR_SAVE_INTERVAL_S or (c.inbound, c.control) == c.saved:
            return None
        c.saved_at, c.saved = now, (c.inbound, c.control)
        return self.keys.meta, {META_WORKER_CURSOR: c.inbound, META_CONTROL_CURSOR: c.control}

    async def _finish(self, outcome: str) -> None:
        """The call is over for the worker: tell the other stages and leave only expiring keys."""
        keys, worker = self.keys, self.worker
        if outcome.startswith("realtime_"):
            # The caller would otherwise sit in silence: end the call for them.
            self._write(WriteCommand(HangUp(outcome)))
        self._write(WriteEvent(CallEvent("ended", {"reason": outcome})))
        worker.writer.add(keys.out_pcm, StreamEnd(outcome).encode())
        try:
            await self.save_cursors()
            await asyncio.wait_for(worker.writer.flush(keys.out_pcm, keys.cmd, keys.events), 5.0)
            await expire_all(worker.redis, keys.all(), worker.settings.call_retention_seconds)
        except (*RETRYABLE, TimeoutError) as exc:
            log.warning("could not finish the call cleanly in redis: %s", exc)
        log.info("call finished", extra={"outcome": outcome})

    async def _transcript(self) -> list[tuple[Role, str]]:
        transcript: list[tuple[Role, str]] = []
        entries: Any = await self.worker.redis.xrange(self.keys.events)
        for _, fields in entries:
            try:
                event = decode_event(fields)
            except StreamEntryError:
                continue
            data = event.data
            if event.kind == "transcript" and data.get("text"):
                role: Role = "user" if data.get("role") == "caller" else "assistant"
                transcript.append((role, data["text"]))
            elif event.kind == "tool_call":  # in a new session's context, as the core has them
                text = f"[I called the tool {data.get('name')}({data.get('arguments', '')})]"
                transcript.append(("assistant", text))
            elif event.kind == "tool_result":
                text = f"[The tool {data.get('name')} answered: {data.get('output', '')}]"
                transcript.append(("assistant", text))
        return transcript
