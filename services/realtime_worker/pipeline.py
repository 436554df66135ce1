"""One call in the realtime worker, whatever its model: keys, cursors, the caller's entries in,
the core's actions out, the end of the call.

:class:`CallPipeline` is the per-call pipeline contract every dialect shares: the caller's frames
and controls come from :mod:`services.realtime_worker.feed`; what the model session's pure core
decides (:mod:`shared.call_actions`) becomes entries on the call's streams (``out.pcm``, ``cmd``,
``events``), tool calls on ``gw:tools``, the call's disposition in its meta. A subclass is the
call's model session (:class:`~services.realtime_worker.interfaces.ModelSession`): Realtime
(:mod:`~services.realtime_worker.call`) or GPT-Live (:mod:`~services.realtime_worker.live_call`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from services.realtime_worker.interfaces import CallHost, Cursors, Dialect, Entries, Role
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
from shared.call_report import ReportRequest
from shared.drain import Move
from shared.runtime.claims import HANDED_OVER
from shared.runtime.lifecycle import wall_clock_us
from shared.runtime.observability import FIRST_REPLY, MCP_CALLS, REALTIME_TOKENS, reject
from shared.runtime.redis_io import RETRYABLE, expire_all
from shared.streams import (
    META_CONTROL_CURSOR,
    META_DISPOSITION,
    META_GREETED,
    META_REANNOUNCED,
    META_TRANSFER_TO,
    META_WORKER_CURSOR,
    REPORTS_MAXLEN,
    REPORTS_STREAM,
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

log = logging.getLogger("gateway.worker")

CURSOR_SAVE_INTERVAL_S = 0.2
MAX_GREETING_CHARS = 2000

__all__ = ["CURSOR_SAVE_INTERVAL_S", "CallPipeline", "Cursors", "Entries"]


class CallPipeline(ABC):
    """The dialect-neutral half of a call; the model session is the subclass's."""

    dialect: Dialect

    def __init__(self, host: CallHost, call: CallStarted, meta: dict[bytes, bytes]) -> None:
        self.host = host
        self.call = call
        self.keys = CallKeys.for_call(call.call_sid)
        self.meta = meta
        self.cursors = Cursors(
            meta.get(META_WORKER_CURSOR, b"0-0"), meta.get(META_CONTROL_CURSOR, b"0-0")
        )
        self.expiry = KeyExpiry()
        params = call.custom_parameters
        self.greeting = params.get("greeting", host.settings.greeting)[:MAX_GREETING_CHARS]
        # The end-of-call report's analysis, or why there is none (POST_CALL_WEBHOOK_URL); a
        # session that can be asked replaces it before it closes.
        self.analysis: tuple[dict[str, Any] | None, str] = (
            (None, "the agent file has no [analysis]")
            if host.settings.agent.analysis is None
            else (None, "the model session was gone before the analysis could be asked")
        )

    def call_tools(self) -> CallTools | None:
        """The call's tool state (None: the agent has no tools)."""
        host, call = self.host, self.call
        if not host.tools:
            return None
        params, settings = call.custom_parameters, host.settings
        return CallTools(
            host.tools,
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

    # --- the model session (ModelSession) ------------------------------------------------------
    @abstractmethod
    def restore(self, transcript: Sequence[tuple[Role, str]], greeted: bool) -> None: ...

    @abstractmethod
    async def converse(self) -> str: ...

    @abstractmethod
    def caller_audio(self, pcm16: bytes, now_us: int) -> list[Action]: ...

    @abstractmethod
    def control(self, control: Any, now_us: int) -> list[Action]: ...

    @abstractmethod
    def tick(self, now_us: int) -> list[Action]: ...

    async def after_entries(self) -> None:
        return None

    @abstractmethod
    async def send(self, text: str) -> None: ...

    @abstractmethod
    def quiet(self, now_us: int) -> bool:
        """A moment to move the call to another session or worker (the rollover's predicate:
        no caller speech in progress, no reply being made or still playing, no tool running)."""

    @abstractmethod
    def ready_us(self) -> int:
        """When the current session became ready (frames older than this waited for it)."""

    # --- the call ---------------------------------------------------------------------------------
    async def run(self, recovered: bool) -> str:
        """Serve the call until it ends; returns the outcome. Cancelled (claim lost, shutdown):
        the cursors are saved and the call is left as it is for the next owner."""
        if META_REANNOUNCED in self.meta:  # Redis lost the call mid-way: no greeting, no past
            self.restore([], greeted=True)
        elif recovered or META_WORKER_CURSOR in self.meta:
            self.restore(await self._transcript(), META_GREETED in self.meta)
        try:
            outcome = await self.converse()
        except asyncio.CancelledError:
            await asyncio.shield(self.save_cursors())
            raise
        if outcome == HANDED_OVER:
            await self._hand_over()
        else:
            await self._finish(outcome)
        return outcome

    async def _hand_over(self) -> None:
        """The worker is draining and the call moves to a peer, which goes on from what is
        saved here: the cursors (the frames the model has had) and the call's events (the
        transcript its first session is seeded with), written before the claim is handed over."""
        keys = self.keys
        try:
            await self.save_cursors()
            await asyncio.wait_for(self.host.writer.flush(keys.out_pcm, keys.cmd, keys.events), 5.0)
        except (*RETRYABLE, TimeoutError) as exc:
            log.warning("could not save the call for its next worker: %s", exc)

    def _drain_move(self) -> str | None:
        """HANDED_OVER if the draining worker moves this call now (between two batches of its
        entries: the cursors say exactly which frames the model has had)."""
        host = self.host
        if not host.drain.draining:
            return None
        now_us = wall_clock_us()
        quiet = self.quiet(now_us)
        move = host.drain.decide(self.call.call_sid, now_us, quiet, host.peers)
        if move is Move.KEEP:
            return None
        if move is Move.QUIET:
            log.info("handing the call over to another worker at a quiet moment")
        else:
            log.warning(
                "handing the call over: WORKER_DRAIN_SECONDS (%ss) passed",
                host.settings.worker_drain_seconds,
                extra={"quiet": quiet, "peer_alive": host.peers},
            )
        return HANDED_OVER

    async def mark_greeted(self) -> None:
        """The greeting is being given: a successor must not give it again."""
        if META_GREETED not in self.meta and self.greeting:
            self.meta[META_GREETED] = b"1"
            await self.host.redis.hset(self.keys.meta, META_GREETED, b"1")

    def session_event(self, data: dict[str, str]) -> None:
        """The call's ``session`` event: which dialect (and combo) now serves it."""
        self._write(WriteEvent(CallEvent("session", {**data, "dialect": self.dialect})))

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
                await self.perform(self.control(control, wall_clock_us()))
                self.cursors.control = entry_id
        ended = await self.perform(self.tick(wall_clock_us()))
        await self.after_entries()
        return ended or self._drain_move()

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
        now_us = wall_clock_us()
        await self.perform(self.caller_audio(entry.audio, now_us))
        self.host.frames_in.inc()
        if entry.stamp_us >= self.ready_us():
            self.host.hop_in.observe(max(0, now_us - entry.stamp_us) / 1e6)
        return None

    # --- actions ----------------------------------------------------------------------------------
    async def perform(self, actions: list[Action]) -> str | None:
        """Carry out the core's actions in order; the reason if one of them ends the call."""
        for action in actions:
            if isinstance(action, SendToModel):
                await self.send(action.text)
            elif isinstance(action, EndCall):
                return action.reason
            elif isinstance(action, Measure):
                FIRST_REPLY.observe(action.seconds)
            elif isinstance(action, RunTool):
                self.host.writer.add(
                    TOOL_CALLS_STREAM, action.call.encode(), maxlen=TOOL_CALLS_MAXLEN
                )
                log.info("tool call", extra={"tool": action.call.name, "id": action.call.call_id})
            elif isinstance(action, SetDisposition):
                # Before the hang-up: the edge answering Twilio's <Connect action> reads it.
                await self.host.redis.hset(
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
            self.host.frames_out.inc()
        elif isinstance(action, WriteCommand):
            stream, fields = keys.cmd, action.command.encode()
        else:
            stream, fields = keys.events, action.event.encode()
            event = action.event
            if event.kind == "usage":  # tokens by kind, never by call (no label per call)
                for kind, count in event.data.items():
                    if count.isdigit() and kind not in ("model", "response_id"):
                        REALTIME_TOKENS.labels(kind).inc(int(count))
            elif event.kind == "mcp_call":
                data = event.data
                known = {s.label for s in self.host.settings.agent.mcp_servers}
                server = data.get("server", "")  # a label of the agent file's: bounded
                MCP_CALLS.labels(server if server in known else "other", data["outcome"]).inc()
                log.info(  # "tool", not "name": a LogRecord's own attribute cannot be set
                    "mcp call",
                    extra={
                        "server": server,
                        "tool": data.get("name"),
                        "outcome": data.get("outcome"),
                        "duration_ms": data.get("duration_ms"),
                    },
                )
            elif event.kind == "transcript":
                log.info(
                    "transcript",
                    extra={"role": event.data.get("role"), "text": event.data.get("text")},
                )
        first = self.expiry.first_write(stream)
        self.host.writer.add(
            stream,
            fields,
            maxlen=-1 if keys.capped(stream) else None,
            expire_s=self.host.settings.call_max_seconds if first else None,
        )

    async def save_cursors(self) -> None:
        saving = self.cursors.in_flight
        if saving is not None and not saving.done():
            # A save the reader sent with a batch, not yet answered: this later one must not
            # land before it (a successor would go on from the older cursor).
            await asyncio.wait([saving], timeout=1.0)
        saved = (self.cursors.inbound, self.cursors.control)
        try:
            await self.host.redis.hset(
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
        keys, host = self.keys, self.host
        if outcome.startswith("realtime_"):
            # The caller would otherwise sit in silence: end the call for them.
            self._write(WriteCommand(HangUp(outcome)))
        self._write(WriteEvent(CallEvent("ended", {"reason": outcome})))
        host.writer.add(keys.out_pcm, StreamEnd(outcome).encode())
        if host.settings.post_call_webhook_url:
            request = ReportRequest(self.call.call_sid, *self.analysis)
            host.writer.add(REPORTS_STREAM, request.encode(), maxlen=REPORTS_MAXLEN)
        try:
            await self.save_cursors()
            flushed = (keys.out_pcm, keys.cmd, keys.events, REPORTS_STREAM)
            await asyncio.wait_for(host.writer.flush(*flushed), 5.0)
            await expire_all(host.redis, keys.all(), host.settings.call_retention_seconds)
        except (*RETRYABLE, TimeoutError) as exc:
            log.warning("could not finish the call cleanly in redis: %s", exc)
        log.info("call finished", extra={"outcome": outcome})

    async def _transcript(self) -> list[tuple[Role, str]]:
        """The conversation so far, read back from the call's events (a worker took it over)."""
        transcript: list[tuple[Role, str]] = []
        entries: Any = await self.host.redis.xrange(self.keys.events)
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
