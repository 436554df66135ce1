"""The Live API (``/v1/live/sessions``, GPT-Live) in the emulator: one full-duplex session.

Served by the Realtime emulator's server (``python -m sim.openai_realtime``): a WebSocket to
``/v1/live/sessions`` (Bearer key; no query string: the model goes in ``session.start``) is a
:class:`LiveSession`. It validates every client event against ``openai.types.live.ClientEvent``
and refuses what the live API refuses (:mod:`sim.live_rules`); after ``session.started`` it
sends one continuous stream of ``session.output_audio.delta`` in the session's format, one
``chunk_ms`` delta every ``chunk_ms`` of wall time, silence as zero samples
(:mod:`sim.live_stream`). It hears the caller with an energy VAD: when a turn ends it answers
with the caller's own words echoed back; when the caller talks over it, its speech stops and
the stream goes on with silence. A ``session.commentary.append`` is spoken in the emulator's
synthetic voice (a greeting, right after ``session.started``); scripted tool calls run through
delegation (:mod:`sim.live_delegation`). ``session.close`` lets the speech finish (at most
``close_drain_s``), then ``session.closed`` and a 1000 close.

Tests read :attr:`LiveSession.config` (what ``session.start`` said, its ``input`` history
included), ``client_events`` / ``server_events``, ``input_audio`` / ``output_audio``,
``turns``, ``delegations`` and ``tool_outputs``, and await ``wait_for_event``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from sim.live_delegation import Delegation, Delegator, new_id
from sim.live_rules import (
    WITH_EVENT_ID,
    audio_format,
    check_start,
    validate_client_event,
)
from sim.live_stream import OutputStream, Utterance, transcript_windows
from sim.realtime_rules import Rejection, WireFormat
from sim.realtime_tools import ScriptedToolCall
from sim.realtime_voice import synthetic_voice
from sim.session_record import Arrivals, SessionRecord
from sim.session_waiters import SessionWaiters
from sim.wire_audio import EnergyVad, encode

LIVE_PATH = "/v1/live/sessions"
PREFIX_MS = 300  # caller audio kept before the VAD heard speech (as server VAD pads)
SILENCE_MS = 500  # caller silence that ends a turn
USAGE_EVERY_MS = 1000


class LiveHost(Protocol):
    """What a Live session uses of the emulator that serves it."""

    record_dir: Path | None
    tool_calls: list[ScriptedToolCall]
    user_turns: int
    live_chunk_ms: int
    live_close_drain_s: float
    keep_sessions: int | None  # None: tests, which read the whole stream back


@dataclass
class Turn:
    """One caller turn the VAD heard, on the input's timeline."""

    number: int  # emulator-wide (what a scripted tool call's N counts)
    start_ms: float
    end_ms: float
    audio: bytes  # what the echo says back


class LiveSession(SessionWaiters):
    """One ``/v1/live/sessions`` connection."""

    def __init__(self, host: LiveHost, ws: ServerConnection, record: Path | None) -> None:
        self.host = host
        self.ws = ws
        self.id = new_id("live")
        self.connected_at = time.time()
        self.headers = (
            {k: v for k, v in ws.request.headers.raw_items() if k.lower() != "authorization"}
            if ws.request
            else {}
        )
        self.client_events: list[dict[str, Any]] = []
        self.server_events: list[dict[str, Any]] = []
        self.errors_sent: list[dict[str, Any]] = []
        self.input_audio = bytearray()
        self.arrivals = Arrivals()  # when each append was handled (a benchmark reads them)
        self.output_audio = bytearray()  # the whole stream as sent, silence included
        # A long-running stand-in (keep_sessions set: the CLI, benchmarks) keeps neither the
        # stream nor the audio events' payloads: 7 MB a session-minute otherwise.
        self._retain_audio = host.keep_sessions is None
        self.config: dict[str, Any] | None = None  # session.start's session, as sent
        self.format = WireFormat("pcm16", 24000)
        self.delegator = Delegator(None)
        self.turns: list[Turn] = []
        self.appended: list[dict[str, Any]] = []  # commentary / thinking / instructions
        self.closing = False
        self.closed = False
        self.close_reason: str | None = None
        self.stream: OutputStream | None = None
        self._vad: EnergyVad | None = None
        self._heard = bytearray()  # caller audio since PREFIX_MS before the turn began
        self._turn_start_ms: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Condition()
        self._record = record
        self._files = SessionRecord(record)  # events.jsonl, input.pcm, output.pcm kept open
        self.muted = False

    # --- waiting and recording -----------------------------------------------------------------
    @property
    def history(self) -> list[dict[str, Any]]:
        """The text history session.start seeded the session with (its ``input``)."""
        return list((self.config or {}).get("input") or [])

    @property
    def delegations(self) -> dict[str, Delegation]:
        """Every task delegated, by delegation id."""
        return self.delegator.tasks

    @property
    def tool_outputs(self) -> list[dict[str, Any]]:
        """The function_call_output items received, in order."""
        return self.delegator.tool_outputs

    @property
    def started(self) -> bool:
        return self.config is not None

    def _log(self, direction: str, event: dict[str, Any]) -> None:
        if self._record:
            if "delta" in event and event["type"].endswith("audio.delta"):
                event = {**event, "delta": f"<{len(event['delta'])} base64 chars>"}
            if event.get("type") == "session.input_audio.append":
                event = {**event, "audio": f"<{len(event.get('audio', ''))} base64 chars>"}
            self._files.append("events.jsonl", json.dumps({"dir": direction, **event}) + "\n")

    async def send(self, event: dict[str, Any]) -> None:
        if event["type"] in WITH_EVENT_ID:
            event = {"event_id": new_id("event"), **event}
        if self._retain_audio or event["type"] != "session.output_audio.delta":
            self.server_events.append(event)
        else:
            self.server_events.append({**event, "delta": ""})
        self._log("server", event)
        try:
            await self.ws.send(json.dumps(event))
        finally:
            await self._notify()

    async def error(self, rejection: Rejection, client_event_id: str | None) -> None:
        err = {
            "type": rejection.type,
            "code": rejection.code,
            "message": rejection.message,
            "param": rejection.param,
            "client_event_id": client_event_id,
        }
        self.errors_sent.append(err)
        await self.send({"type": "error", "error": err, "client_event_id": client_event_id})

    def resource(self) -> dict[str, Any]:
        """The resolved session (``SessionResource``): what was started, with defaults."""
        config = dict(self.config or {})
        audio = dict(config.get("audio") or {})
        audio.setdefault("format", {"type": "audio/pcm", "rate": 24000})
        audio["output"] = {"voice": "marin", **(audio.get("output") or {})}
        return {
            **config,
            "audio": audio,
            "delegation": self.delegator.config,
            "id": self.id,
            "expires_at": int(self.connected_at) + 3600,
            "status": "active",
        }

    def usage(self) -> dict[str, Any]:
        return {"seconds": float((self.stream.position_ms if self.stream else 0) // 1000)}

    # --- client events -------------------------------------------------------------------------
    async def handle(self, raw: str | bytes) -> None:
        try:
            event = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            event = None
        if isinstance(event, dict):
            self.client_events.append(event)
            self._log("client", event)
            await self._notify()
        event_id = event.get("event_id") if isinstance(event, dict) else None
        try:
            validate_client_event(event)
            assert isinstance(event, dict)
            kind = event["type"]
            if kind == "session.start" and self.started:
                raise Rejection(
                    "session_already_started", "The session has already started.", "type"
                )
            if kind != "session.start" and not self.started:
                raise Rejection(
                    "session_not_started",
                    f"'{kind}' was sent before session.start: send session.start first and "
                    "wait for session.started.",
                    "type",
                )
            # While it drains, the caller's audio may still come (a bridge streams until the
            # call ends): taken and not heard; any other command is refused.
            if self.closing and kind != "session.input_audio.append":
                raise Rejection("session_closing", "The session is closing.", "type")
            await getattr(self, "_on_" + kind.replace(".", "_"))(event)
        except Rejection as rejection:
            await self.error(rejection, event_id if isinstance(event_id, str) else None)

    async def _on_session_start(self, e: dict[str, Any]) -> None:
        session = e["session"]
        check_start(session)
        self.format = audio_format(session)
        self.config = session
        self.delegator = Delegator(session.get("delegation"))
        self.stream = OutputStream(self.format, self.host.live_chunk_ms)
        self._vad = EnergyVad(self.format, SILENCE_MS)
        if self._record:
            (self._record / "start.json").write_text(json.dumps(session))
        await self.send({"type": "session.started", "session": self.resource(), **_answering(e)})
        self._tasks.append(asyncio.create_task(self._pump()))

    async def _on_session_update(self, e: dict[str, Any]) -> None:
        self.delegator.update(e["session"])
        await self.send({"type": "session.updated", "session": self.resource(), **_answering(e)})

    async def _on_session_input_audio_append(self, e: dict[str, Any]) -> None:
        try:
            data = binascii.a2b_base64(e["audio"], strict_mode=True)
        except (binascii.Error, ValueError):
            raise Rejection(
                "invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.", "audio"
            ) from None
        if not self.input_audio and self._record:
            timing = {
                "connected_at": self.connected_at,
                "first_append_at": time.time(),
                "instructions": (self.config or {}).get("instructions"),
            }
            (self._record / "timing.json").write_text(json.dumps(timing))
        self.input_audio += data
        if self._record:
            self._files.append("input.pcm", data)
            self.arrivals.add(len(self.input_audio))
        if self.muted or self.closing:
            return
        assert self._vad is not None
        self._heard += data
        for event in self._vad.feed(data):
            if event.kind == "started":
                await self._caller_started(event.at_ms)
            else:
                await self._caller_stopped(event.at_ms)
        if self._turn_start_ms is None:  # keep only the prefix before a turn
            del self._heard[: max(0, len(self._heard) - self.format.nbytes(PREFIX_MS))]

    async def _on_session_input_audio_mute(self, e: dict[str, Any]) -> None:
        self.muted = True
        await self.send({"type": "session.input_audio.muted", **_answering(e)})

    async def _on_session_input_audio_unmute(self, e: dict[str, Any]) -> None:
        self.muted = False
        await self.send({"type": "session.input_audio.unmuted", **_answering(e)})

    async def _appended(self, e: dict[str, Any], kind: str) -> None:
        self.appended.append(e)
        at = self.stream.position_ms if self.stream else 0
        await self.send(
            {"type": f"session.{kind}.appended", "start_ms": at, "end_ms": at, **_answering(e)}
        )

    async def _on_session_instructions_append(self, e: dict[str, Any]) -> None:
        await self._appended(e, "instructions")

    async def _on_session_thinking_append(self, e: dict[str, Any]) -> None:
        self.delegator.check_id(e.get("delegation_id"))
        await self._appended(e, "thinking")

    async def _on_session_commentary_append(self, e: dict[str, Any]) -> None:
        """Speakable context: the model says it (the emulator: word for word, in its voice)."""
        self.delegator.check_id(e.get("delegation_id"))
        await self._appended(e, "commentary")
        self._say(e["content"], "greeting" if not self.turns else "commentary")

    async def _on_response_item_create(self, e: dict[str, Any]) -> None:
        self.delegator.add_output(e["item"])
        await self._notify()

    async def _on_response_create(self, e: dict[str, Any]) -> None:
        events, said = self.delegator.continue_()
        for event in events:
            await self.send(event)
        for text in said:
            # The live model relays the answer; the voice says a short sentence (the synthetic
            # voice would take seconds over JSON) and the transcript carries the whole answer.
            self._say("Here is what I found.", "tool_result", transcript=text[:400])

    async def _on_session_close(self, e: dict[str, Any]) -> None:
        self.closing = True
        self._tasks.append(asyncio.create_task(self._close("close_requested", e)))

    async def _refused(self, e: dict[str, Any]) -> None:
        raise Rejection(
            "unsupported_event",
            f"'{e['type']}' is not emulated (decisions and audio fixtures are not).",
            "type",
        )

    _on_decision_create = _on_decision_item_create = _on_decision_item_delete = _refused
    _on_session_output_audio_fixture_play = _refused

    # --- the caller's turns ------------------------------------------------------------------
    async def _caller_started(self, at_ms: float) -> None:
        self._turn_start_ms = at_ms
        assert self.stream is not None
        self.stream.interrupt()  # barge-in: the speech stops; the stream goes on, silent

    async def _caller_stopped(self, at_ms: float) -> None:
        start = self._turn_start_ms if self._turn_start_ms is not None else at_ms
        self._turn_start_ms = None
        speech_end = at_ms - SILENCE_MS
        audio = bytes(self._heard[: max(0, len(self._heard) - self.format.nbytes(SILENCE_MS))])
        self._heard.clear()
        self.host.user_turns += 1
        turn = Turn(self.host.user_turns, start, speech_end, audio)
        self.turns.append(turn)
        seconds = (speech_end - start) / 1000
        for s, e, text in transcript_windows(
            start, speech_end - start, f"caller audio of {seconds:.2f} s"
        ):
            await self.send(
                {
                    "type": "session.input_transcript.delta",
                    "delta": text,
                    "start_ms": s,
                    "end_ms": e,
                }
            )
        assert self.stream is not None
        self.stream.say(
            Utterance(
                audio,
                f"echo of {self.format.ms(len(audio)) / 1000:.2f} s of audio",
                "echo",
                turn.number,
            )
        )
        await self._delegate(turn, len(self.turns))

    def _say(self, text: str, kind: str, transcript: str | None = None) -> None:
        assert self.stream is not None
        audio = encode(self.format, synthetic_voice(text, self.format.rate))
        self.stream.say(Utterance(audio, transcript or text, kind))

    async def _delegate(self, turn: Turn, session_turn: int) -> None:
        """The tool calls scripted for this turn, through the session's delegation."""
        scripted = [
            c
            for c in self.host.tool_calls
            if c.turn == turn.number or (c.turn == 0 and session_turn == 1)
        ]
        assert self.stream is not None
        for event in self.delegator.delegate(scripted, turn.number, self.stream.position_ms):
            await self.send(event)

    # --- the output stream ---------------------------------------------------------------------
    async def _pump(self) -> None:
        """One delta every ``chunk_ms`` of wall time, on an absolute schedule (no drift)."""
        assert self.stream is not None
        loop = asyncio.get_running_loop()
        step = self.stream.chunk_ms / 1000
        t0 = loop.time()
        n = reported = 0
        try:
            while True:
                chunk = self.stream.next_chunk()
                if self._retain_audio:
                    self.output_audio += chunk.audio
                if self._record:
                    self._files.append("output.pcm", chunk.audio)
                delta = base64.b64encode(chunk.audio).decode()
                await self.send({"type": "session.output_audio.delta", "delta": delta})
                for start, end, text in chunk.transcripts:
                    await self.send(
                        {
                            "type": "session.output_transcript.delta",
                            "delta": text,
                            "start_ms": start,
                            "end_ms": end,
                        }
                    )
                if self.stream.position_ms // USAGE_EVERY_MS > reported:
                    reported = self.stream.position_ms // USAGE_EVERY_MS
                    await self.send({"type": "session.usage.updated", "usage": self.usage()})
                n += 1
                await asyncio.sleep(max(0.0, t0 + n * step - loop.time()))
        except ConnectionClosed:
            pass

    async def _close(self, reason: str, e: dict[str, Any] | None = None) -> None:
        """Let the speech finish (at most ``live_close_drain_s``), then ``session.closed``."""
        assert self.stream is not None
        stream = self.stream
        try:
            async with asyncio.timeout(self.host.live_close_drain_s):
                await self.wait_for(lambda: not stream.speaking, timeout=None)  # type: ignore[arg-type]
        except TimeoutError:
            stream.interrupt()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.close_reason = reason
        try:
            await self.send(
                {
                    "type": "session.closed",
                    "reason": reason,
                    "session": self.resource(),
                    "usage": self.usage(),
                    **(_answering(e) if e else {}),
                }
            )
            await self.ws.close(1000, "session closed")
        except ConnectionClosed:
            pass

    async def expire(self) -> None:
        """The session limit: ``session.closed`` with reason ``expired``, then a close."""
        if self.started and not self.closing:
            self.closing = True
            self.stream.interrupt() if self.stream else None
            await self._close("expired")

    def end(self) -> None:
        """The connection ended: stop the stream and any pending work."""
        for task in self._tasks:
            task.cancel()
        self.closed = True


def _answering(e: dict[str, Any]) -> dict[str, Any]:
    """``client_event_id`` for a server event that answers a client command with an id."""
    event_id = e.get("event_id")
    return {"client_event_id": event_id} if isinstance(event_id, str) else {}


async def run_session(session: LiveSession, max_session_seconds: float = 0.0) -> None:
    """Serve one connection until it ends (``max_session_seconds``: the session limit)."""
    limit: asyncio.Task[None] | None = None
    try:
        if max_session_seconds:
            limit = asyncio.create_task(_expire_after(session, max_session_seconds))
        async for raw in session.ws:
            await session.handle(raw)
    except ConnectionClosed:
        pass
    finally:
        if limit is not None:
            limit.cancel()
        session.end()
        session._log("emulator", {"type": "closed"})
        session.arrivals.write(session._record)
        session._files.close()
        await session._notify()


async def _expire_after(session: LiveSession, seconds: float) -> None:
    await asyncio.sleep(seconds)
    await session.expire()
