"""A local stand-in for the OpenAI Realtime API that enforces the dialect report's rules.

``python -m sim.openai_realtime --host 127.0.0.1 --port N [--record-dir DIR] [--api-key KEY]
[--beta accept|refuse]`` serves ``/v1/realtime?model=...`` like the live API, so the gateway and
the official ``openai`` client reach it by URL alone, and GPT-Live at ``/v1/live/sessions``
(:mod:`sim.openai_live`). Per connection it speaks the GA dialect; a connection with the
``OpenAI-Beta: realtime=v1`` header is refused as the live API refuses it since May 2026
(``beta_api_shape_disabled``, then close 4000), unless ``--beta accept`` (``beta="accept"``,
``EMULATOR_BETA=accept``) restores the beta dialect (the report's combo B) for testing it. It
refuses what the live API refused (:mod:`sim.realtime_rules`) with errors of the live API's
shape. Input and output audio
each have their own format (PCM16 at the session's rate, or G.711 mu-law / A-law at 8 kHz). It
runs server VAD on the decoded input's energy and answers with real speech-like audio in the
output format: the caller's own committed words echoed back, or a synthetic voice when there is
nothing to echo (a greeting). A text-only session or response streams text and no audio.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import http
import itertools
import json
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from sim.live_rules import BETA_DISABLED_MESSAGE
from sim.openai_live import LIVE_PATH, LiveSession, run_session
from sim.realtime_analysis import analysis_answer
from sim.realtime_idle import IDLE_PROMPT, IdleClock
from sim.realtime_mcp import ScriptedMcpCall, ScriptedMcpServer, SessionMcp
from sim.realtime_rules import (
    CLIENT_EVENTS,
    PCM_24K,
    Rejection,
    WireFormat,
    beta_format,
    check_response,
    check_session,
    ga_format,
    unknown_parameter,
)
from sim.realtime_tools import (
    ScriptedToolCall,
    check_declared_tools,
    function_call_item,
    stream_function_call,
)
from sim.realtime_usage import UsageMeter
from sim.realtime_voice import synthetic_voice
from sim.session_record import Arrivals, SessionRecord
from sim.session_waiters import SessionWaiters
from sim.wire_audio import EnergyVad, at_rate, decode, encode

MIN_COMMIT_MS = 100
_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}{next(_ids)}"


def _http(status: http.HTTPStatus, body: dict[str, Any]) -> Response:
    data = json.dumps(body).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return Response(status.value, status.phrase, headers, data)


# --- records --------------------------------------------------------------------------------------


@dataclass
class ResponseRecord:
    """One response: what it was asked for (format, modalities, voice) and what it sent."""

    id: str
    item_id: str
    instructions: str | None
    format: WireFormat = PCM_24K
    modalities: list[str] = field(default_factory=lambda: ["audio"])
    voice: Any = "alloy"
    status: str = "in_progress"
    cancel_reason: str | None = None
    turn: int = 0  # the caller's turn this response answers (0: not one, e.g. a greeting)
    session_turn: int = 0  # the same, counted in this session alone
    audio: bytearray = field(default_factory=bytearray)  # wire bytes of ``format``
    mcp_items: list[dict[str, Any]] = field(default_factory=list)  # sim/realtime_mcp.py

    @property
    def speaks(self) -> bool:
        """Whether the response carries audio; a text-only one streams text deltas alone."""
        return "audio" in self.modalities


@dataclass
class _Item:
    id: str
    role: str
    audio_ms: float = 0.0
    has_audio: bool = False  # whether content part 0 is audio (what truncate may cut)


# Event name stems and content part types per dialect.
_STREAM = {
    "ga": {
        "audio": "response.output_audio",
        "transcript": "response.output_audio_transcript",
        "text": "response.output_text",
    },
    "beta": {
        "audio": "response.audio",
        "transcript": "response.audio_transcript",
        "text": "response.text",
    },
}
_ITEM_CONTENT = {
    "ga": {"audio": "output_audio", "text": "output_text"},
    "beta": {"audio": "audio", "text": "text"},
}


class EmulatedSession(SessionWaiters):
    """One connection: its dialect, what it received and sent, and awaitable waits for tests."""

    def __init__(
        self,
        emulator: RealtimeEmulator,
        ws: ServerConnection,
        dialect: str,
        model: str,
        headers: dict[str, str],
        record: Path | None,
    ) -> None:
        self.emulator = emulator
        self.ws = ws
        self.dialect = dialect
        self.model = model
        self.headers = headers
        self.id = _id("sess")
        self.connected_at = time.time()
        self.client_events: list[dict[str, Any]] = []
        self.server_events: list[dict[str, Any]] = []
        self.input_audio = bytearray()
        self.arrivals = Arrivals()  # when each append was handled (a benchmark reads them)
        self.responses: list[ResponseRecord] = []
        self.truncations: list[dict[str, Any]] = []
        self.errors_sent: list[dict[str, Any]] = []
        self.closed = False
        self.closed_at: float | None = None  # wall clock
        self.expired = False  # ended by the session limit (--max-session-seconds)
        self.expired_at: float | None = None  # wall clock
        self._changed = asyncio.Condition()
        self._record = record
        self._files = SessionRecord(record)  # events.jsonl, input.pcm, output.pcm kept open
        self.meter = UsageMeter()  # response.done's usage (GA)
        self.idle = IdleClock()  # server VAD's idle_timeout_ms (GA)
        self.mcp = SessionMcp(emulator.mcp_servers, emulator.mcp_calls)  # remote MCP (GA)
        # session state
        self.instructions = ""
        self.voice: Any = "alloy"
        self.input_format = PCM_24K
        self.output_format = PCM_24K
        self.modalities: list[str] = ["audio"] if dialect == "ga" else ["audio", "text"]
        self.noise_reduction: Any = None
        self.turn_detection: dict[str, Any] | None = {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
            "create_response": True,
            "interrupt_response": True,
        }
        self.transcription: dict[str, Any] | None = None
        self.tools: list[dict[str, Any]] = []
        self.tool_choice: Any = "auto"
        self.user_turns = 0  # responses that answered the caller's committed audio
        self.function_calls: dict[str, str] = {}  # call_id -> name, every call made
        self.tool_outputs: list[dict[str, Any]] = []  # function_call_output items received
        # call_id -> [monotonic time the call was sent, time its output came] (benchmarks)
        self.call_times: dict[str, list[float]] = {}
        self._fresh_output: str | None = None  # an output no response has used yet
        self.buffer = bytearray()  # uncommitted input audio
        self.items: dict[str, _Item] = {}
        self.last_user_audio = b""
        self.active: ResponseRecord | None = None
        self.active_task: asyncio.Task[None] | None = None
        # server VAD (sim/wire_audio.py, shared with the Live emulator)
        self.vad = EnergyVad(self.input_format)
        self.speech_item: str | None = None
        if record:
            record.mkdir(parents=True, exist_ok=True)

    @property
    def rate(self) -> int:
        """The sample rate of the caller's audio as the session was told it (input format)."""
        return self.input_format.rate

    # --- recording and waiting ---------------------------------------------------------------
    def _log(self, direction: str, event: dict[str, Any]) -> None:
        if self._record:
            self._files.append("events.jsonl", json.dumps({"dir": direction, **event}) + "\n")

    async def close(self, code: int = 1011) -> None:
        await self.ws.close(code, "server closed the session")

    # --- sending -------------------------------------------------------------------------------
    async def send(self, event: dict[str, Any]) -> None:
        event = {"event_id": _id("event"), **event}
        self.server_events.append(event)
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
            "event_id": client_event_id,
        }
        self.errors_sent.append(err)
        await self.send({"type": "error", "error": err})

    # --- session shape -------------------------------------------------------------------------
    def session_object(self) -> dict[str, Any]:
        """The effective configuration, echoing what the client set (formats in its words)."""
        if self.dialect == "ga":
            return {
                "type": "realtime",
                "object": "realtime.session",
                "id": self.id,
                "model": self.model,
                "output_modalities": list(self.modalities),
                "instructions": self.instructions,
                "audio": {
                    "input": {
                        "format": self.input_format.ga(),
                        "turn_detection": self.turn_detection,
                        "transcription": self.transcription,
                        "noise_reduction": self.noise_reduction,
                    },
                    "output": {
                        "format": self.output_format.ga(),
                        "voice": self.voice,
                        "speed": 1.0,
                    },
                },
                "tools": self.tools,
                "tool_choice": "auto",
                "max_output_tokens": "inf",
            }
        return {
            "id": self.id,
            "object": "realtime.session",
            "model": self.model,
            "modalities": list(self.modalities),
            "instructions": self.instructions,
            "voice": self.voice,
            "input_audio_format": self.input_format.beta(),
            "output_audio_format": self.output_format.beta(),
            "input_audio_noise_reduction": self.noise_reduction,
            "turn_detection": self.turn_detection,
            "input_audio_transcription": self.transcription,
            "tools": self.tools,
            "tool_choice": "auto",
            "temperature": 0.8,
            "max_response_output_tokens": "inf",
        }

    def _set_input_format(self, fmt: WireFormat) -> None:
        if fmt != self.input_format:
            self.vad.set_format(fmt)
        self.input_format = fmt

    def _apply_session(self, s: dict[str, Any]) -> None:
        """Take a validated session.update's values (only those present change)."""
        self.instructions = s.get("instructions", self.instructions)
        if "tools" in s:
            self.tools = check_declared_tools(s["tools"], "session.tools")
        self.tool_choice = s.get("tool_choice", self.tool_choice)
        if self.dialect == "ga":
            self._apply_ga_session(s)
        else:
            self._apply_beta_session(s)

    def _apply_ga_session(self, s: dict[str, Any]) -> None:
        audio = s.get("audio") or {}
        inp, out = audio.get("input") or {}, audio.get("output") or {}
        if "format" in inp:
            self._set_input_format(ga_format(inp["format"], "session.audio.input.format"))
        if "format" in out:
            self.output_format = ga_format(out["format"], "session.audio.output.format")
        if "turn_detection" in inp:
            self.turn_detection = _turn_defaults(inp["turn_detection"])
        if "transcription" in inp:
            self.transcription = inp["transcription"]
        if "noise_reduction" in inp:
            self.noise_reduction = inp["noise_reduction"]
        self.voice = out.get("voice", self.voice)
        self.modalities = list(s.get("output_modalities") or self.modalities)

    def _apply_beta_session(self, s: dict[str, Any]) -> None:
        if "input_audio_format" in s:
            self._set_input_format(beta_format(s["input_audio_format"], "input_audio_format"))
        if "output_audio_format" in s:
            self.output_format = beta_format(s["output_audio_format"], "output_audio_format")
        if "turn_detection" in s:
            self.turn_detection = _turn_defaults(s["turn_detection"])
        if "input_audio_transcription" in s:
            self.transcription = s["input_audio_transcription"]
        if "input_audio_noise_reduction" in s:
            self.noise_reduction = s["input_audio_noise_reduction"]
        self.voice = s.get("voice", self.voice)
        self.modalities = list(s.get("modalities") or self.modalities)

    def _response_settings(self, r: dict[str, Any]) -> tuple[WireFormat, list[str], Any]:
        """A validated response.create's format, modalities and voice, the session's where it
        names none: a response may override them for itself alone."""
        if self.dialect == "ga":
            out = (r.get("audio") or {}).get("output") or {}
            fmt = ga_format(out["format"], "") if "format" in out else self.output_format
            return (
                fmt,
                list(r.get("output_modalities") or self.modalities),
                out.get("voice", self.voice),
            )
        fmt = (
            beta_format(r["output_audio_format"], "")
            if "output_audio_format" in r
            else self.output_format
        )
        return fmt, list(r.get("modalities") or self.modalities), r.get("voice", self.voice)

    # --- client events -------------------------------------------------------------------------
    async def handle(self, raw: str | bytes) -> None:
        try:
            event = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            await self.error(
                Rejection(
                    "invalid_json", "The server could not parse the event: invalid JSON.", None
                ),
                None,
            )
            return
        if not isinstance(event, dict):
            await self.error(
                Rejection("invalid_event", "The event must be a JSON object.", None), None
            )
            return
        self.client_events.append(event)
        self._log("client", event)
        await self._notify()
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        kind = event.get("type")
        tree = CLIENT_EVENTS[self.dialect].get(kind) if isinstance(kind, str) else None
        try:
            if tree is None:
                raise Rejection(
                    "invalid_value",
                    f"Invalid value: '{kind}'. The event type is not supported.",
                    "type",
                )
            unknown_parameter(event, tree, "")
            assert isinstance(kind, str)  # a tree was found for it
            await getattr(self, "_on_" + kind.replace(".", "_"))(event)
        except Rejection as rejection:
            await self.error(rejection, event_id)

    async def _on_session_update(self, e: dict[str, Any]) -> None:
        check_session(self.dialect, e.get("session"))
        self._apply_session(e["session"])
        await self.send({"type": "session.updated", "session": self.session_object()})
        if self.dialect == "ga":
            await self.mcp.declare(self.tools, self.send)

    async def _on_input_audio_buffer_append(self, e: dict[str, Any]) -> None:
        audio = e.get("audio")
        try:
            data = binascii.a2b_base64(audio, strict_mode=True) if isinstance(audio, str) else None
        except (binascii.Error, ValueError):
            data = None
        if data is None:
            raise Rejection(
                "invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.", "audio"
            )
        if not self.input_audio and self._record:
            # When the session opened and first heard the caller, on the wall clock: another
            # process (a benchmark) compares them with when the call started.
            timing = {
                "connected_at": self.connected_at,
                "first_append_at": time.time(),
                "instructions": self.instructions,
            }
            (self._record / "timing.json").write_text(json.dumps(timing))
        self.input_audio += data
        self.buffer += data
        if self._record:
            self._files.append("input.pcm", data)
            self.arrivals.add(len(self.input_audio))
        await self._vad(data)

    def _buffer_ms(self) -> float:
        return self.input_format.ms(len(self.buffer))

    async def _on_input_audio_buffer_commit(self, e: dict[str, Any]) -> None:
        ms = self._buffer_ms()
        if ms < MIN_COMMIT_MS:
            raise Rejection(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: "
                f"buffer too small. Expected at least 100ms of audio, but buffer only has "
                f"{ms:.2f}ms of audio.",
                None,
            )
        await self._commit(_id("item"))

    async def _commit(self, item_id: str) -> None:
        audio = bytes(self.buffer)
        self.buffer.clear()
        self.last_user_audio = audio
        seconds = self.input_format.ms(len(audio)) / 1000
        self.items[item_id] = _Item(item_id, "user", seconds * 1000, has_audio=True)
        await self.send(
            {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": None}
        )
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        await self._item_created(item)
        if self.transcription:
            await self.send(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": f"caller audio of {seconds:.2f} s",
                    **(
                        {"usage": {"type": "duration", "seconds": 1.0}}
                        if self.dialect == "ga"
                        else {}
                    ),
                }
            )

    async def _item_created(self, item: dict[str, Any]) -> None:
        if self.dialect == "ga":
            await self.send(
                {"type": "conversation.item.added", "previous_item_id": None, "item": item}
            )
            await self.send(
                {"type": "conversation.item.done", "previous_item_id": None, "item": item}
            )
        else:
            await self.send(
                {"type": "conversation.item.created", "previous_item_id": None, "item": item}
            )

    async def _on_input_audio_buffer_clear(self, e: dict[str, Any]) -> None:
        self.buffer.clear()
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _on_response_create(self, e: dict[str, Any]) -> None:
        check_response(self.dialect, e.get("response"))
        if self.active is not None:
            raise Rejection(
                "conversation_already_has_active_response",
                "Conversation already has an "
                f"active response in progress: {self.active.id}. Wait until the response "
                "is finished before creating a new one.",
                None,
            )
        self._start_response(e.get("response") or {})

    async def _on_response_cancel(self, e: dict[str, Any]) -> None:
        if self.active is None:
            raise Rejection(
                "response_cancel_not_active", "Cancellation failed: no active response found.", None
            )
        await self._cancel("client_cancelled")

    async def _on_conversation_item_create(self, e: dict[str, Any]) -> None:
        item = e.get("item")
        if not isinstance(item, dict) or item.get("type") not in (
            "message",
            "function_call",
            "function_call_output",
            "mcp_approval_response",
        ):
            raise Rejection("invalid_value", "Invalid 'item.type'.", "item.type")
        if item["type"] == "mcp_approval_response" and not self.mcp.answer(item):
            raise Rejection(
                "invalid_value",
                f"No approval request '{item.get('approval_request_id')}' awaits an answer.",
                "item.approval_request_id",
            )
        ok_types = {
            "user": {"input_text", "input_audio"},
            "system": {"input_text"},
            "assistant": {"output_text", "output_audio"}
            if self.dialect == "ga"
            else {"text", "audio"},
        }
        if item["type"] == "message":
            allowed = ok_types.get(item.get("role", ""))
            if allowed is None:
                raise Rejection(
                    "invalid_value", f"Invalid 'item.role': {item.get('role')!r}.", "item.role"
                )
            for i, part in enumerate(item.get("content") or []):
                if not isinstance(part, dict) or part.get("type") not in allowed:
                    raise Rejection(
                        "invalid_value",
                        f"Invalid 'item.content[{i}].type': "
                        f"{part.get('type') if isinstance(part, dict) else part!r}.",
                        f"item.content[{i}].type",
                    )
        if item["type"] == "function_call_output":
            call_id = item.get("call_id")
            if call_id not in self.function_calls:
                raise Rejection(
                    "invalid_value",
                    f"Tool call ID '{call_id}' not found in conversation.",
                    "item.call_id",
                )
            if not isinstance(item.get("output"), str):
                raise Rejection(
                    "invalid_type",
                    "Invalid type for 'item.output': expected a string.",
                    "item.output",
                )
            self.tool_outputs.append(item)
            self.call_times.get(call_id, []).append(time.monotonic())
            self._fresh_output = item["output"]
        item_id = item.get("id") or _id("item")
        self.items[item_id] = _Item(
            item_id, item.get("role", ""), has_audio=_opens_with_audio(item)
        )
        await self._item_created(
            {"object": "realtime.item", "status": "completed", **item, "id": item_id}
        )

    async def _on_conversation_item_truncate(self, e: dict[str, Any]) -> None:
        item = self.items.get(e.get("item_id"))  # type: ignore[arg-type]
        if item is None:
            raise Rejection(
                "invalid_value",
                f"Invalid 'item_id': no item with id '{e.get('item_id')}'.",
                "item_id",
            )
        if item.role != "assistant":
            raise Rejection("invalid_value", "Only assistant messages can be truncated.", "item_id")
        _check_content_index(item, e)
        end = e.get("audio_end_ms")
        if not isinstance(end, int) or isinstance(end, bool) or end < 0 or end > item.audio_ms + 1:
            raise Rejection(
                "invalid_value",
                f"Audio content of {item.audio_ms:.0f}ms is already shorter than {end}ms",
                "audio_end_ms",
            )
        self.truncations.append(e)
        item.audio_ms = float(end)
        await self.send(
            {
                "type": "conversation.item.truncated",
                "item_id": item.id,
                "content_index": 0,
                "audio_end_ms": end,
            }
        )

    async def _on_conversation_item_delete(self, e: dict[str, Any]) -> None:
        if self.items.pop(e.get("item_id"), None) is None:  # type: ignore[arg-type]
            raise Rejection(
                "invalid_value",
                f"Invalid 'item_id': no item with id '{e.get('item_id')}'.",
                "item_id",
            )
        await self.send({"type": "conversation.item.deleted", "item_id": e["item_id"]})

    async def _on_conversation_item_retrieve(self, e: dict[str, Any]) -> None:
        raise Rejection(
            "invalid_value", "Item retrieval is not supported by the emulator.", "item_id"
        )

    # --- VAD -----------------------------------------------------------------------------------
    async def _vad(self, data: bytes) -> None:
        """Server VAD on the energy of each 20 ms window of input, decoded from its format."""
        td = self.turn_detection
        if not td:
            self.vad.audio_ms += self.input_format.ms(len(data))
            return
        self.vad.silence_ms = td.get("silence_duration_ms", 500)
        for event in self.vad.feed(data):
            if event.kind == "started":
                self.idle.pause()
                await self._speech_started(td, event.at_ms)
            else:
                await self._speech_stopped(td, event.at_ms)
        if (
            not self.vad.speaking
            and self.active is None
            and (span := self.idle.due(self.vad.audio_ms, td.get("idle_timeout_ms")))
        ):
            await self._idle_timeout(*span)

    async def _idle_timeout(self, start_ms: float, end_ms: float) -> None:
        """The caller stayed silent for idle_timeout_ms: say so, and answer it (the server's
        own response, which the client may cancel)."""
        await self.send(
            {
                "type": "input_audio_buffer.timeout_triggered",
                "audio_start_ms": int(start_ms),
                "audio_end_ms": int(end_ms),
                "item_id": _id("item"),
            }
        )
        self._start_response({"instructions": IDLE_PROMPT})

    async def _speech_started(self, td: dict[str, Any], at_ms: float) -> None:
        self.speech_item = _id("item")
        start = max(0.0, at_ms - td.get("prefix_padding_ms", 300))
        await self.send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": int(start),
                "item_id": self.speech_item,
            }
        )
        if self.active is not None and td.get("interrupt_response", True):
            await self._cancel("turn_detected")

    async def _speech_stopped(self, td: dict[str, Any], at_ms: float) -> None:
        item_id = self.speech_item or _id("item")
        await self.send(
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": int(at_ms),
                "item_id": item_id,
            }
        )
        await self._commit(item_id)
        self.idle.reset(self.vad.audio_ms)
        if td.get("create_response", True) and self.active is None:
            self._start_response({})

    # --- responses ---------------------------------------------------------------------------
    def _start_response(self, request: dict[str, Any]) -> None:
        """Start answering a (validated) response.create's ``response``; {} for server VAD's."""
        fmt, modalities, voice = self._response_settings(request)
        record = ResponseRecord(
            _id("resp"), _id("item"), request.get("instructions"), fmt, modalities, voice
        )
        self.responses.append(record)
        self.active = record
        self.items[record.item_id] = _Item(record.item_id, "assistant", has_audio=record.speaks)
        self.active_task = asyncio.create_task(self._respond(record))

    def _reply(self, record: ResponseRecord) -> tuple[bytes, str]:
        """The reply's audio in the response's format (none for a text-only one) and its
        transcript: the caller's last committed audio echoed back when it can be brought to
        the output rate, else the emulator's voice saying the instructions or a greeting."""
        if record.instructions and (analysis := analysis_answer(record.instructions)):
            return b"", analysis  # the gateway's end-of-call analysis: text, whole
        echo, self.last_user_audio = self.last_user_audio, b""
        fmt = record.format
        if echo and record.instructions is None:
            self.user_turns += 1
            self.emulator.user_turns += 1
            record.turn = self.emulator.user_turns
            record.session_turn = self.user_turns
            samples = at_rate(decode(self.input_format, echo), self.input_format.rate, fmt.rate)
            if samples is not None:
                seconds = self.input_format.ms(len(echo)) / 1000
                audio = encode(fmt, samples) if record.speaks else b""
                return audio, f"echo of {seconds:.2f} s of audio"
        text = spoken = record.instructions or "How can I help you today?"
        if record.instructions is None and self._fresh_output is not None:
            # The answer after a tool's output: the transcript says what the tool answered;
            # the voice says a short sentence (the synthetic voice would take seconds on JSON).
            spoken = "Here is what I found."
            text = f"Here is what I found: {self._fresh_output[:160]}"
            self._fresh_output = None
        audio = encode(fmt, synthetic_voice(spoken, fmt.rate)) if record.speaks else b""
        return audio, text[:200]

    def _response_object(
        self, record: ResponseRecord, output: list[dict[str, Any]]
    ) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": record.id,
            "object": "realtime.response",
            "status": record.status,
            "output": output,
            "metadata": None,
            "usage": None,
        }
        if record.status == "cancelled":
            obj["status_details"] = {"type": "cancelled", "reason": record.cancel_reason}
        if self.dialect == "ga":
            obj["output_modalities"] = list(record.modalities)
            obj["audio"] = {"output": {"format": record.format.ga(), "voice": record.voice}}
        else:
            obj["modalities"] = list(record.modalities)
            obj["output_audio_format"] = record.format.beta()
            obj["voice"] = record.voice
        return obj

    async def _respond(self, record: ResponseRecord) -> None:
        """Stream one response: its audio (with a transcript) or, text-only, its text."""
        ids = {
            "response_id": record.id,
            "item_id": record.item_id,
            "output_index": 0,
            "content_index": 0,
        }
        item = {
            "id": record.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        audio, transcript = self._reply(record)
        kind = "audio" if record.speaks else "text"
        run, ask = self.mcp.plan(record.turn)
        refused = self.mcp.take_refusals()
        try:
            await self.send(
                {"type": "response.created", "response": self._response_object(record, [])}
            )
            if run or ask or refused:
                audio, transcript = await self._mcp_steps(record, run, ask, bool(refused))
            await self.send(
                {
                    "type": "response.output_item.added",
                    "response_id": record.id,
                    "output_index": 0,
                    "item": item,
                }
            )
            added = (
                "conversation.item.added" if self.dialect == "ga" else "conversation.item.created"
            )
            await self.send({"type": added, "previous_item_id": None, "item": item})
            empty = (
                {"type": "audio", "transcript": ""}
                if record.speaks
                else {"type": "text", "text": ""}
            )
            await self.send({"type": "response.content_part.added", **ids, "part": empty})
            if record.speaks:
                await self._stream_audio(record, ids, audio, transcript)
            else:
                await self._stream_text(ids, transcript)
            await self._finish(record, ids, item, kind, transcript)
        except ConnectionClosed:
            self.active = None

    async def _mcp_steps(
        self,
        record: ResponseRecord,
        run: list[ScriptedMcpCall],
        ask: list[ScriptedMcpCall],
        refused: bool,
    ) -> tuple[bytes, str]:
        """Run the response's MCP calls (or ask approval for them) before it speaks; what it
        then says: the calls' results, a word before the approval, or a refusal's apology."""
        for call in ask:
            record.mcp_items.append(await self.mcp.ask(call, record.id, self.send))
        results = []
        for call in run:
            item = await self.mcp.run(call, record.id, self.send, lambda: asyncio.sleep(0.05))
            record.mcp_items.append(item)
            results.append(item.get("output") or "the tool failed")
        if results:
            text = f"Here is what I found: {'; '.join(results)[:160]}"
        elif ask:
            text = "Let me look that up for you."
        else:
            text = "I am sorry, I am not allowed to do that."
        spoken = text if not results else "Here is what I found."
        fmt = record.format
        audio = encode(fmt, synthetic_voice(spoken, fmt.rate)) if record.speaks else b""
        return audio, text

    async def _stream_audio(
        self, record: ResponseRecord, ids: dict[str, Any], audio: bytes, transcript: str
    ) -> None:
        names = _STREAM[self.dialect]
        step = record.format.nbytes(self.emulator.reply_chunk_ms)
        words = transcript.split()
        loop = asyncio.get_running_loop()
        began = loop.time()
        lead = self.emulator.reply_lead_ms / 1000
        for n, pos in enumerate(range(0, len(audio), step)):
            chunk = audio[pos : pos + step]
            record.audio += chunk
            self.items[record.item_id].audio_ms = record.format.ms(len(record.audio))
            if self.emulator.record_dir and self._record:
                self._files.append("output.pcm", chunk)  # wire bytes, as sent
            delta = base64.b64encode(chunk).decode()
            await self.send({"type": f"{names['audio']}.delta", **ids, "delta": delta})
            if n < len(words):
                await self.send(
                    {"type": f"{names['transcript']}.delta", **ids, "delta": words[n] + " "}
                )
            # A burst of up to ``reply_lead_ms`` ahead of real time, then real time: a client
            # that stops reading (the official one, when it decides to close) is left with a
            # few unread messages, not a whole reply. websockets pauses reading past 16 queued
            # messages, and a paused client never reads the close frame that answers its
            # own close: its `async with` then hangs for its 10 s close timeout (issue 25).
            ahead = record.format.ms(len(record.audio)) / 1000 - (loop.time() - began)
            await asyncio.sleep(max(0.0, ahead - lead))  # and a point to be interrupted
        await self.send({"type": f"{names['audio']}.done", **ids})
        await self.send({"type": f"{names['transcript']}.done", **ids, "transcript": transcript})

    async def _stream_text(self, ids: dict[str, Any], text: str) -> None:
        name = _STREAM[self.dialect]["text"]
        for word in text.split():
            await self.send({"type": f"{name}.delta", **ids, "delta": word + " "})
            await asyncio.sleep(0.005)  # interruptible, like the audio
        await self.send({"type": f"{name}.done", **ids, "text": text})

    async def _finish(
        self,
        record: ResponseRecord,
        ids: dict[str, Any],
        item: dict[str, Any],
        kind: str,
        transcript: str,
    ) -> None:
        """Close the content part and the item (GA: ``conversation.item.done`` too, the item
        being final), then the response."""
        field_ = "transcript" if kind == "audio" else "text"
        part = {"type": kind, field_: transcript}
        await self.send({"type": "response.content_part.done", **ids, "part": part})
        content = {"type": _ITEM_CONTENT[self.dialect][kind], field_: transcript}
        item = {**item, "status": "completed", "content": [content]}
        await self.send(
            {
                "type": "response.output_item.done",
                "response_id": record.id,
                "output_index": 0,
                "item": item,
            }
        )
        if self.dialect == "ga":
            await self.send(
                {"type": "conversation.item.done", "previous_item_id": None, "item": item}
            )
        output = [*record.mcp_items, item]
        for scripted in self._scripted_calls(record):
            call = function_call_item(
                _id("item"), _id("call"), scripted.name, json.dumps(scripted.arguments)
            )
            self.function_calls[call["call_id"]] = scripted.name
            self.call_times[call["call_id"]] = [time.monotonic()]
            self.items[call["id"]] = _Item(call["id"], "assistant")
            await stream_function_call(self.send, self.dialect, record.id, len(output), call)
            output.append(call)
        record.status = "completed"
        self.active = None
        await self.send(
            {"type": "response.done", "response": self._done_object(record, output, transcript)}
        )

    def _done_object(
        self, record: ResponseRecord, output: list[dict[str, Any]], text: str
    ) -> dict[str, Any]:
        """The response as response.done ends it: with its usage (GA; the beta's is left null)."""
        obj = self._response_object(record, output)
        # Silence counts from the end of this response's audio, as the caller hears it.
        self.idle.reset(self.vad.audio_ms + record.format.ms(len(record.audio)))
        if self.dialect == "ga":
            before = [(i.role, i.audio_ms) for i in self.items.values() if i.id != record.item_id]
            obj["usage"] = self.meter.response(
                self.instructions,
                before,
                record.format.ms(len(record.audio)),
                text,
                speaks=record.speaks,
            )
        return obj

    def _scripted_calls(self, record: ResponseRecord) -> list[ScriptedToolCall]:
        """The tool calls scripted for the turn this response answers, of functions the
        session declared (the model calls only what it was given)."""
        declared = {t.get("name") for t in self.tools if t.get("type", "function") == "function"}
        return [
            c
            for c in self.emulator.tool_calls
            if record.turn
            and c.name in declared
            and (c.turn == record.turn or (c.turn == 0 and record.session_turn == 1))
        ]

    async def _cancel(self, reason: str) -> None:
        """End the active response as cancelled: ``client_cancelled`` for a response.cancel,
        ``turn_detected`` for server VAD's barge-in."""
        record, task = self.active, self.active_task
        if record is None:
            return
        self.active = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        record.status = "cancelled"
        record.cancel_reason = reason
        await self.send({"type": "response.done", "response": self._done_object(record, [], "")})


def _opens_with_audio(item: dict[str, Any]) -> bool:
    """Whether a client-created item's content part 0 is audio (``input_audio``, ``audio``,
    ``output_audio``): the only part a truncation may cut."""
    parts = item.get("content")
    first = parts[0] if isinstance(parts, list) and parts else None
    return isinstance(first, dict) and "audio" in str(first.get("type"))


def _check_content_index(item: _Item, e: dict[str, Any]) -> None:
    """Truncation cuts an item's audio, its content part 0: another index, or an item with no
    audio (a text-only reply), is refused."""
    if "content_index" not in e:
        raise Rejection(
            "missing_required_parameter",
            "Missing required parameter: 'content_index'.",
            "content_index",
        )
    index = e["content_index"]
    if type(index) is int and index == 0 and item.has_audio:
        return
    raise Rejection(
        "invalid_value",
        f"Invalid 'content_index': {index!r}. Item '{item.id}' has no audio content part at "
        "that index.",
        "content_index",
    )


def _turn_defaults(td: Any) -> dict[str, Any] | None:
    if not td:
        return None
    base = {
        "type": td.get("type", "server_vad"),
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": True,
        "interrupt_response": True,
    }
    if base["type"] == "semantic_vad":
        base = {
            "type": "semantic_vad",
            "eagerness": "auto",
            "create_response": True,
            "interrupt_response": True,
        }
    return {**base, **td}


class RealtimeEmulator:
    """The emulated service; ``url`` is valid after :meth:`start`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        record_dir: str | Path | None = None,
        api_key: str | None = None,
        beta: str | None = None,
        reply_chunk_ms: int = 100,
        reply_lead_ms: int = 300,
        live_chunk_ms: int = 40,
        live_close_drain_s: float = 10.0,
        keep_sessions: int | None = None,
        tool_calls: list[ScriptedToolCall] | None = None,
        max_session_seconds: float = 0.0,
        mcp_servers: list[ScriptedMcpServer] | None = None,
        mcp_calls: list[ScriptedMcpCall] | None = None,
    ) -> None:
        """``keep_sessions``: how many ended sessions stay in :attr:`sessions` (None: all, for
        tests that inspect them). A long-running stand-in keeps only the newest, or it would
        hold every call's audio for as long as it runs (0.6 MB a call in the soak).

        ``beta``: ``"refuse"`` (what the live API does since May 2026) or ``"accept"`` (the
        retired beta dialect, combo B, for testing it); None reads ``EMULATOR_BETA``, default
        refuse. ``reply_lead_ms``: how far ahead of real time a Realtime reply's audio is sent
        (a burst that long, then real time). ``live_chunk_ms``: the duration of each Live
        audio delta (one is sent per that many ms of wall time); ``live_close_drain_s``: how
        long a Live ``session.close`` lets the speech in progress finish."""
        self.host, self.port = host, port
        self.record_dir = Path(record_dir) if record_dir else None
        self.api_key = api_key
        beta = beta if beta is not None else os.environ.get("EMULATOR_BETA") or "refuse"
        if beta not in ("accept", "refuse"):
            raise ValueError(f"beta must be 'accept' or 'refuse', got {beta!r}")
        self.beta = beta
        self.reply_chunk_ms = reply_chunk_ms
        self.reply_lead_ms = reply_lead_ms
        self.live_chunk_ms = live_chunk_ms
        self.live_close_drain_s = live_close_drain_s
        self.live_sessions: list[LiveSession] = []
        # Scripted function calls (sim/realtime_tools.py): a test's or the demo's control.
        self.tool_calls: list[ScriptedToolCall] = list(tool_calls or [])
        # Scripted remote MCP servers and calls (sim/realtime_mcp.py).
        self.mcp_servers: list[ScriptedMcpServer] = list(mcp_servers or [])
        self.mcp_calls: list[ScriptedMcpCall] = list(mcp_calls or [])
        # The live API ends a session after 60 minutes (GA; 30 beta): a test sets seconds.
        self.max_session_seconds = max_session_seconds
        # Caller turns answered, over all sessions: a scripted tool call's turn counts these, so
        # a call that moved to a new session goes on counting where it was.
        self.user_turns = 0
        self.sessions: list[EmulatedSession] = []
        self.keep_sessions = keep_sessions
        self.opened = 0  # sessions ever opened; numbers the record directories
        self._server: Any = None
        self._new_session = asyncio.Condition()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/realtime"

    @property
    def live_url(self) -> str:
        """Where GPT-Live is served (``REALTIME_URL`` for ``REALTIME_SCHEMA=live``)."""
        return f"ws://{self.host}:{self.port}{LIVE_PATH}"

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._check,
            max_size=16 * 1024 * 1024,
            ping_interval=None,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> RealtimeEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for_session(self, n: int = 1, timeout: float = 5.0) -> EmulatedSession:
        async with asyncio.timeout(timeout):
            async with self._new_session:
                await self._new_session.wait_for(lambda: len(self.sessions) >= n)
        return self.sessions[n - 1]

    async def wait_for_live_session(self, n: int = 1, timeout: float = 5.0) -> LiveSession:
        """The ``n``th Live session (1-based) opened on this emulator, once it is open."""
        async with asyncio.timeout(timeout):
            async with self._new_session:
                await self._new_session.wait_for(lambda: len(self.live_sessions) >= n)
        return self.live_sessions[n - 1]

    async def drop_all(self, code: int = 1011) -> None:
        for session in self.sessions:
            if not session.closed:
                await session.close(code)
        for live in self.live_sessions:
            if not live.closed:
                await live.ws.close(code, "server closed the session")

    def _check(self, conn: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path.rstrip("/") not in ("/v1/realtime", LIVE_PATH):
            return _http(
                http.HTTPStatus.NOT_FOUND,
                {"error": {"message": "Not found", "type": "invalid_request_error"}},
            )
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        if not token or (self.api_key is not None and token != self.api_key):
            return _http(
                http.HTTPStatus.UNAUTHORIZED,
                {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                        "param": None,
                    }
                },
            )
        if parts.path.rstrip("/") == LIVE_PATH:
            if "model" in parse_qs(parts.query, keep_blank_values=True):
                return _http(
                    http.HTTPStatus.BAD_REQUEST,
                    {
                        "error": {
                            "message": "Unknown parameter: 'model'. The Live model goes in "
                            "session.start's session.model, not in the URL.",
                            "type": "invalid_request_error",
                            "code": "unknown_parameter",
                            "param": "model",
                        }
                    },
                )
            return None
        if not parse_qs(parts.query).get("model"):
            return _http(
                http.HTTPStatus.BAD_REQUEST,
                {
                    "error": {
                        "message": "Missing required parameter: 'model'.",
                        "type": "invalid_request_error",
                        "code": "missing_required_parameter",
                        "param": "model",
                    }
                },
            )
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        if urlsplit(request.path).path.rstrip("/") == LIVE_PATH:
            await self._handle_live(ws)
            return
        beta = request.headers.get("OpenAI-Beta", "").replace(" ", "") == "realtime=v1"
        model = parse_qs(urlsplit(request.path).query)["model"][0]
        headers = {k: v for k, v in request.headers.raw_items() if k.lower() != "authorization"}
        self.opened += 1
        record = self.record_dir / f"{self.opened:04d}" if self.record_dir else None
        session = EmulatedSession(self, ws, "beta" if beta else "ga", model, headers, record)
        async with self._new_session:
            self.sessions.append(session)
            self._new_session.notify_all()
        limit: asyncio.Task[None] | None = None
        try:
            if beta and self.beta != "accept":
                # As the live API answers since May 2026: the error, first thing, then 4000.
                await session.error(
                    Rejection("beta_api_shape_disabled", BETA_DISABLED_MESSAGE, None), None
                )
                await ws.close(4000, "beta_api_shape_disabled")
                return
            await session.send({"type": "session.created", "session": session.session_object()})
            if self.max_session_seconds:
                limit = asyncio.create_task(self._expire(session, self.max_session_seconds))
            async for raw in ws:
                await session.handle(raw)
        except ConnectionClosed:
            pass
        finally:
            if limit is not None:
                limit.cancel()
            if session.active_task:
                session.active_task.cancel()
            session.closed = True
            session.closed_at = time.time()
            session.arrivals.write(session._record)
            # The record's last line says the session ended, for a reader in another process
            # (a test of containers reads the records through a mounted folder).
            session._log("emulator", {"type": "closed"})
            session._files.close()
            await session._notify()
            self._forget_old_sessions()

    async def _handle_live(self, ws: ServerConnection) -> None:
        self.opened += 1
        record = self.record_dir / f"{self.opened:04d}" if self.record_dir else None
        session = LiveSession(self, ws, record)
        async with self._new_session:
            self.live_sessions.append(session)
            self._new_session.notify_all()
        try:
            await run_session(session, self.max_session_seconds)
        finally:
            self._forget_old_sessions()

    @staticmethod
    async def _expire(session: EmulatedSession, after_s: float) -> None:
        """The live API's session limit: an error, then a 1001 close with the same text."""
        await asyncio.sleep(after_s)
        minutes = 60 if session.dialect == "ga" else 30
        message = f"Your session hit the maximum duration of {minutes} minutes."
        session.expired = True
        session.expired_at = time.time()
        await session.error(Rejection("session_expired", message, None), None)
        await session.ws.close(1001, message)

    def _forget_old_sessions(self) -> None:
        if self.keep_sessions is None:
            return
        excess = sum(1 for s in self.sessions if s.closed) - self.keep_sessions
        if excess > 0:
            ended = [s for s in self.sessions if s.closed][:excess]
            self.sessions = [s for s in self.sessions if s not in ended]
        excess = sum(1 for s in self.live_sessions if s.closed) - self.keep_sessions
        if excess > 0:
            gone = [s for s in self.live_sessions if s.closed][:excess]
            self.live_sessions = [s for s in self.live_sessions if s not in gone]


async def _main(args: argparse.Namespace) -> None:
    emulator = RealtimeEmulator(
        args.host,
        args.port,
        record_dir=args.record_dir,
        api_key=args.api_key,
        beta=args.beta,
        reply_lead_ms=args.reply_lead_ms,
        live_chunk_ms=args.live_chunk_ms,
        live_close_drain_s=args.live_close_drain_s,
        keep_sessions=args.keep_sessions,
        tool_calls=[ScriptedToolCall.parse(spec) for spec in args.tool_call],
        max_session_seconds=args.max_session_seconds,
        mcp_servers=args.mcp_server,
        mcp_calls=args.mcp_call,
    )
    await emulator.start()
    print(
        json.dumps(
            {
                "msg": "OpenAI Realtime emulator listening",
                "url": emulator.url,
                "live_url": emulator.live_url,
                "beta": emulator.beta,
            }
        ),
        flush=True,
    )
    # SIGTERM stops it cleanly (exit 0): as a container's first process it would otherwise
    # ignore the signal, and `docker stop` would kill it after the grace period.
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await emulator.stop()


T = TypeVar("T")


def _parsed(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type`` from a ``parse`` that raises ValueError with its own message
    (argparse prints it as the usage error, instead of a bare "invalid value")."""

    def convert(spec: str) -> T:
        try:
            return parse(spec)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def main() -> None:
    parser = argparse.ArgumentParser(description="Local OpenAI Realtime API emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--record-dir")
    parser.add_argument("--api-key")
    parser.add_argument(
        "--beta",
        choices=["accept", "refuse"],
        default=None,
        help="the retired beta dialect (OpenAI-Beta: realtime=v1): refuse it as the live API "
        "does (default; EMULATOR_BETA sets the default), or accept it (combo B, for testing)",
    )
    parser.add_argument(
        "--reply-lead-ms",
        type=int,
        default=300,
        help="how far ahead of real time a Realtime reply is sent (then real time)",
    )
    parser.add_argument(
        "--live-close-drain-s",
        type=float,
        default=10.0,
        help="how long a GPT-Live session.close lets the speech in progress finish",
    )
    parser.add_argument(
        "--live-chunk-ms",
        type=int,
        default=40,
        help="duration of each GPT-Live audio delta, sent in real time",
    )
    parser.add_argument(
        "--keep-sessions", type=int, default=100, help="ended sessions kept in memory"
    )
    parser.add_argument(
        "--max-session-seconds",
        type=float,
        default=0.0,
        help="end each session after this long, as the live API does at 60 min (0: never)",
    )
    parser.add_argument(
        "--tool-call",
        action="append",
        default=[],
        metavar="N:NAME:JSON",
        help="at the caller's Nth turn, call the declared function NAME with these arguments",
    )
    parser.add_argument(
        "--mcp-server",
        action="append",
        default=[],
        type=_parsed(ScriptedMcpServer.parse),
        metavar="JSON",
        help="a remote MCP server the emulator answers for, found by the server_url a session "
        'declares: {"url": URL, "tools": [{"name": NAME, "output": TEXT} | '
        '{"name": NAME, "error": TEXT}]}',
    )
    parser.add_argument(
        "--mcp-call",
        action="append",
        default=[],
        type=_parsed(ScriptedMcpCall.parse),
        metavar="N:LABEL:NAME:JSON",
        help="at the caller's Nth turn, call tool NAME of the MCP server the session declared "
        "as LABEL with these arguments",
    )
    try:
        asyncio.run(_main(parser.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
