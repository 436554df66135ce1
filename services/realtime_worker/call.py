"""A call served by OpenAI Realtime (combos A and B): the first implementation of the worker's
:class:`~services.realtime_worker.interfaces.ModelSession`.

The dialect-neutral half (keys, cursors, the caller's entries, the actions written out) is
:class:`~services.realtime_worker.pipeline.CallPipeline`'s. Here: the model's events come from
the socket, one session at a time; when the socket drops, the call gets a new session (capped,
jittered backoff) with the transcript so far, and frames that arrived meanwhile wait in Redis for
it. Past ``REALTIME_RESTORE_SECONDS`` the caller is told goodbye by a hang-up rather than left
in silence. A session nearing the server's limit gives way to the next one (a rollover).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from services.realtime_worker.feed import feed
from services.realtime_worker.interfaces import CallHost, Dialect, Role
from services.realtime_worker.pipeline import CallPipeline
from services.realtime_worker.reconnect import CONNECT_FAILURES, Reconnects
from services.realtime_worker.session import SessionRefused, open_session
from shared.call_actions import Action, SendToModel
from shared.call_report import AnalysisWait, analysis_instructions
from shared.conversation import CallConversation
from shared.idle import IdleWatch
from shared.mcp import CallMcp
from shared.realtime_dialect import (
    RealtimeDialect,
    RealtimeProtocolError,
    ServerError,
    SessionConfig,
)
from shared.runtime.claims import HANDED_OVER
from shared.runtime.lifecycle import wall_clock_us
from shared.runtime.observability import REALTIME_ERRORS, RECONNECTS, ROLLOVERS, label, reject
from shared.streams import CallStarted, Control

log = logging.getLogger("gateway.worker")

# Past REALTIME_SESSION_MAX_SECONDS by this much, the call moves between two replies even if
# no quiet moment came.
ROLLOVER_GRACE_S = 120.0
ANALYSIS_TIMEOUT_S = 10.0  # how long a call's end waits for the model's analysis
# A next session opened at a quiet moment that ended before it was ready is dropped after this
# long (at most half the session limit), rather than take over already old.
ROLLOVER_STALE_S = 30.0


class RealtimeCall(CallPipeline):
    """One call's conversation with the model, across its Realtime sessions."""

    dialect: Dialect = "realtime"

    def __init__(
        self,
        host: CallHost,
        call: CallStarted,
        meta: dict[bytes, bytes],
        config: SessionConfig,
    ) -> None:
        super().__init__(host, call, meta)
        self.config = config
        settings = host.settings
        self.handshake = host.dialects.handshake(
            config, settings.realtime_schema, settings.realtime_beta_header
        )
        self.core = CallConversation(
            dialect=self.handshake.dialect,
            turn_detection=config.turn_detection,
            commit_frames=settings.realtime_commit_frames,
            greeting=self.greeting,
            rate=config.rate,
            context_chars=settings.realtime_context_chars,
            tools=self.call_tools(),
            model=config.model or settings.realtime_model,
            mcp=CallMcp({s.label: s for s in settings.agent.mcp_servers})
            if settings.agent.mcp_servers
            else None,
            idle=IdleWatch(turn.idle_prompts)
            if (turn := settings.agent.turn_detection) and turn.idle_action == "hang_up"
            else None,
        )
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

    # --- ModelSession ---------------------------------------------------------------------------
    def restore(self, transcript: Sequence[tuple[Role, str]], greeted: bool) -> None:
        self.core.restore(transcript, greeted)

    async def converse(self) -> str:
        return await self._sessions()

    def caller_audio(self, pcm16: bytes, now_us: int) -> list[Action]:
        return self.core.caller_audio(pcm16)

    def control(self, control: Control, now_us: int) -> list[Action]:
        return self.core.control(control)

    def tick(self, now_us: int) -> list[Action]:
        return self.core.tick(now_us)

    async def after_entries(self) -> None:
        await self._roll_over_when_due()

    async def send(self, text: str) -> None:
        assert self.ws is not None
        await self.ws.send(text)

    def quiet(self, now_us: int) -> bool:
        return self.core.quiet(now_us)

    def ready_us(self) -> int:
        return self.core.ready_us

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    # --- the call, session after session ----------------------------------------------------------
    async def _sessions(self) -> str:
        settings = self.host.settings
        reconnects = Reconnects(settings.realtime_restore_seconds)
        while True:  # one iteration per Realtime session
            try:
                attempt = self.handshake.next_attempt()  # each connection its own handshake
                ws, dialect = await open_session(
                    settings, attempt, self.host.api_key, self.host.dialects
                )
            except CONNECT_FAILURES as exc:
                if (ended := await reconnects.failed(exc, "realtime")) is not None:
                    return ended
                continue
            except SessionRefused as exc:
                log.error("realtime session refused: %s", exc)
                return "realtime_refused"
            reconnects.opened()
            # The next session (and the worker's next call) starts where this worked (auto, or
            # GA once the server said the beta is retired).
            self.handshake = self.host.dialects.handshake(
                self.config, settings.realtime_schema, settings.realtime_beta_header
            )
            self.core.dialect = dialect
            self.session_event({"combo": dialect.combo.name})
            await self.mark_greeted()
            try:
                outcome = await self._converse(ws)
                if outcome not in ("socket_lost", HANDED_OVER):  # the model's analysis, first
                    await self._analyse(self.ws or ws)
            finally:
                live, self.ws = self.ws or ws, None  # after rollovers, not the one opened here
                await live.close()
            if outcome != "socket_lost":
                return outcome
            RECONNECTS.labels("openai").inc()
            log.warning("realtime socket lost; opening a new session with the transcript")
            reconnects.lost()

    async def _analyse(self, ws: ClientConnection) -> None:
        """Ask the session that held the conversation for the report's analysis (out of band,
        text only), and keep it or why there is none; bounded by ANALYSIS_TIMEOUT_S."""
        settings = self.host.settings
        schema = settings.agent.analysis
        if not settings.post_call_webhook_url or schema is None:
            return
        dialect, wait = self.core.dialect, AnalysisWait(schema)
        try:
            await ws.send(json.dumps(dialect.cancel_response()))  # a reply still being made
            await ws.send(json.dumps(dialect.analysis_request(analysis_instructions(schema))))
            async with asyncio.timeout(ANALYSIS_TIMEOUT_S):
                while not wait.feed(await ws.recv()):
                    pass
        except TimeoutError:
            wait.result = (None, f"the model did not answer within {ANALYSIS_TIMEOUT_S:g} s")
        except ConnectionClosed:
            wait.result = (None, "the model session closed before it answered")
        assert wait.result is not None
        self.analysis = wait.result
        log.info("call analysis", extra={"ok": wait.result[0] is not None, "why": wait.result[1]})

    async def _converse(self, ws: ClientConnection) -> str:
        """Sessions from ``ws`` on, until the call ends (its reason) or the live session's
        socket drops ("socket_lost"). A rollover replaces the live session under it."""
        self.ws = ws
        self.session_started = time.monotonic()
        await self.perform(self.core.session_ready(wall_clock_us()))
        self.model_task = asyncio.create_task(self._from_model(ws))
        caller = asyncio.create_task(feed(self.host.reader, self))
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
            ended = await self.perform(self.core.server_event(event, wall_clock_us()))
            if ended:
                return ended
        return "socket_lost"

    # --- rollover: the next session before the server ends this one ------------------------------
    async def _roll_over_when_due(self) -> None:
        """Between two caller frames: open the next session once this one is old enough, and
        move the caller to it at a quiet moment. Done here, at a frame boundary, so that no
        frame is lost or sent twice across the switch."""
        max_s = self.host.settings.realtime_session_max_seconds
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
            self.host.settings, attempt, self.host.api_key, self.host.dialects
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
        self.session_event({"combo": dialect.combo.name, "rollover": "1", "after_s": f"{age:.1f}"})
        log.info("rolled the call over to a new session", extra={"switch_ms": switch_ms})
        if old is not None:
            self._close_later(old)  # its reader is gone; nothing more comes from it
