"""A call served by GPT-Live (combo C, ``REALTIME_SCHEMA=live``): the second implementation of
the worker's :class:`~services.realtime_worker.interfaces.ModelSession`.

The pure core is :class:`shared.live_conversation.LiveConversation`; this shell connects, sends
``session.start`` (the conversation so far as its ``input``) and nothing else until
``session.started``, moves messages, and opens the next session when one ends: closed by the
API (``session.closed``, e.g. its duration limit) or its socket lost. Frames that arrive
meanwhile wait in Redis for the next session, as for combo A.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from services.realtime_worker.feed import feed
from services.realtime_worker.interfaces import CallHost, Dialect, Role
from services.realtime_worker.pipeline import CallPipeline
from services.realtime_worker.reconnect import CONNECT_FAILURES, Reconnects
from shared.call_actions import Action
from shared.live_conversation import LiveConversation
from shared.live_dialect import (
    Closed,
    LiveConfig,
    LiveError,
    LiveOpening,
    LiveProtocolError,
    Started,
    connect_request,
    parse,
    session_close,
)
from shared.runtime.lifecycle import wall_clock_us
from shared.runtime.observability import REALTIME_ERRORS, ROLLOVERS, label, reject
from shared.streams import CallStarted, Control

log = logging.getLogger("gateway.worker")

SESSION_ENDED = "session_ended"  # not an outcome: the call goes on in a new session


class LiveRefused(Exception):
    """The API answered ``session.start`` with an error: a new session would be refused alike."""


class LiveCall(CallPipeline):
    """One call's conversation with GPT-Live, across its sessions."""

    dialect: Dialect = "live"

    def __init__(
        self, host: CallHost, call: CallStarted, meta: dict[bytes, bytes], config: LiveConfig
    ) -> None:
        super().__init__(host, call, meta)
        if host.settings.agent.analysis is not None:  # the report says why it has none
            self.analysis = (None, "GPT-Live sessions are not asked for an analysis")
        self.config = config
        self.core = LiveConversation(
            rate=config.rate, greeting=self.greeting, tools=self.call_tools()
        )
        self.ws: ClientConnection | None = None

    # --- ModelSession ---------------------------------------------------------------------------
    def restore(self, transcript: Sequence[tuple[Role, str]], greeted: bool) -> None:
        self.core.restore(transcript, greeted)

    def caller_audio(self, pcm16: bytes, now_us: int) -> list[Action]:
        return self.core.caller_audio(pcm16, now_us)

    def control(self, control: Control, now_us: int) -> list[Action]:
        return self.core.control(control, now_us)

    def tick(self, now_us: int) -> list[Action]:
        return self.core.tick(now_us)

    async def send(self, text: str) -> None:
        if self.ws is None:  # between sessions: the frame waits in Redis for the next one
            raise ConnectionClosed(None, None)
        await self.ws.send(text)

    def quiet(self, now_us: int) -> bool:
        return self.core.quiet()

    def ready_us(self) -> int:
        return self.core.ready_us

    async def close(self) -> None:
        ws, self.ws = self.ws, None
        if ws is None:
            return
        try:  # the API finalises the session (usage, recording); we do not wait for its drain
            await ws.send(json.dumps(session_close()))
        except ConnectionClosed:
            pass
        await ws.close()

    async def converse(self) -> str:
        settings = self.host.settings
        reconnects = Reconnects(settings.realtime_restore_seconds)
        first = True
        while True:  # one iteration per Live session
            try:
                ws, started = await self._open()
            except CONNECT_FAILURES as exc:
                if (ended := await reconnects.failed(exc, "live")) is not None:
                    return ended
                continue
            except LiveRefused as exc:
                log.error("live session refused: %s", exc)
                return "realtime_refused"
            reconnects.opened()
            if not first:
                ROLLOVERS.inc()
            self.session_event(
                {"combo": "LIVE", "model": self.config.model, "session_id": started.session_id}
                | ({} if first else {"rollover": "1"})
            )
            first = False
            self.ws = ws
            await self.mark_greeted()
            try:
                await self.perform(self.core.session_started(started, wall_clock_us()))
                outcome = await self._converse(ws)
            except ConnectionClosed:
                outcome = SESSION_ENDED
            finally:
                await self.close()
            await self.perform(self.core.session_lost())  # what was said becomes turns
            if outcome != SESSION_ENDED:
                return outcome
            log.warning("live session ended; opening a new one with the conversation so far")
            reconnects.lost()

    # --- one session ----------------------------------------------------------------------------
    async def _open(self) -> tuple[ClientConnection, Started]:
        """A started session: ``session.start`` with the conversation so far, then nothing
        until ``session.started``."""
        settings = self.host.settings
        request = connect_request(settings.realtime_url, self.host.api_key)
        opening = LiveOpening(self.config, self.core.context())
        ws = await websockets.connect(
            request.url,
            additional_headers=request.headers,
            max_size=16 * 1024 * 1024,
            compression=None,  # base64 audio barely compresses
            open_timeout=settings.realtime_open_timeout_ms / 1000,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=1.0,
        )
        try:
            async with asyncio.timeout(settings.realtime_open_timeout_ms / 1000):
                await ws.send(opening.first)
                while opening.started is None:
                    try:
                        opening.receive(await ws.recv())
                    except LiveProtocolError:
                        reject("realtime_bad_event")
                        continue
                    if opening.refused is not None:
                        error = opening.refused
                        raise LiveRefused(f"{error.code}: {error.message[:200]}")
        except BaseException:
            await ws.close()
            raise
        return ws, opening.started

    async def _converse(self, ws: ClientConnection) -> str:
        """The session until the call ends (its outcome) or the session does (SESSION_ENDED)."""
        model = asyncio.create_task(self._from_model(ws))
        caller = asyncio.create_task(feed(self.host.reader, self))
        try:
            done, _ = await asyncio.wait({model, caller}, return_when=asyncio.FIRST_COMPLETED)
            task = caller if caller in done else model
            try:
                return task.result()
            except ConnectionClosed:  # a send found the session gone
                return SESSION_ENDED
        finally:
            for t in (model, caller):
                t.cancel()
            await asyncio.gather(model, caller, return_exceptions=True)

    async def _from_model(self, ws: ClientConnection) -> str:
        async for message in ws:
            try:
                event = parse(message)
            except LiveProtocolError as exc:
                reject("realtime_bad_event")
                log.warning("unparseable live event: %s", exc)
                continue
            if isinstance(event, LiveError):
                REALTIME_ERRORS.labels(label(event.code or "unknown")).inc()
                log.info("live error %s: %s", event.code, event.message[:200])
            if isinstance(event, Closed):
                log.info("live session closed", extra={"reason": event.reason})
                return SESSION_ENDED
            ended = await self.perform(self.core.server_event(event, wall_clock_us()))
            if ended:
                return ended
        return SESSION_ENDED
