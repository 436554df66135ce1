"""A local stand-in for the OpenAI Realtime API that enforces the dialect report's rules.

``python -m sim.openai_realtime --host 127.0.0.1 --port N [--record-dir DIR] [--api-key KEY]
[--beta-disabled]`` serves ``/v1/realtime?model=...`` like the live API, so the gateway and the
official ``openai`` client reach it by URL alone. Per connection it speaks the GA dialect, or the
beta dialect when the ``OpenAI-Beta: realtime=v1`` header is sent, and refuses what the live API
refused (:mod:`sim.realtime_rules`) with errors of the live API's shape. It runs server VAD on the
input audio's energy and answers with real speech-like audio: the caller's own committed words
echoed back, or a synthetic voice when there is nothing to echo (a greeting).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import http
import itertools
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from sim.realtime_rules import (
    CLIENT_EVENTS,
    Rejection,
    check_response,
    check_session,
    unknown_parameter,
)
from sim.realtime_voice import synthetic_voice

MIN_COMMIT_MS = 100
VAD_WINDOW_MS = 20
VAD_THRESHOLD_DBFS = -40.0
_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}{next(_ids)}"


def _http(status: http.HTTPStatus, body: dict[str, Any]) -> Response:
    data = json.dumps(body).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return Response(status.value, status.phrase, headers, data)


@dataclass
class ResponseRecord:
    id: str
    item_id: str
    instructions: str | None
    status: str = "in_progress"
    audio: bytearray = field(default_factory=bytearray)


@dataclass
class _Item:
    id: str
    role: str
    audio_ms: float = 0.0


class EmulatedSession:
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
        self.client_events: list[dict[str, Any]] = []
        self.server_events: list[dict[str, Any]] = []
        self.input_audio = bytearray()
        self.responses: list[ResponseRecord] = []
        self.truncations: list[dict[str, Any]] = []
        self.errors_sent: list[dict[str, Any]] = []
        self.closed = False
        self._changed = asyncio.Condition()
        self._record = record
        # session state
        self.instructions = ""
        self.voice = "alloy"
        self.rate = 24000
        self.bytes_per_sample = 2
        self.turn_detection: dict[str, Any] | None = {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
            "create_response": True,
            "interrupt_response": True,
        }
        self.transcription: dict[str, Any] | None = None
        self.buffer = bytearray()  # uncommitted input audio
        self.items: dict[str, _Item] = {}
        self.last_user_audio = b""
        self.active: ResponseRecord | None = None
        self.active_task: asyncio.Task[None] | None = None
        # VAD state (milliseconds of input audio since the session began)
        self.audio_ms = 0.0
        self.speaking = False
        self.silence_ms = 0.0
        self.speech_item: str | None = None
        self._vad_carry = bytearray()
        if record:
            record.mkdir(parents=True, exist_ok=True)

    # --- recording and waiting ---------------------------------------------------------------
    def _log(self, direction: str, event: dict[str, Any]) -> None:
        if self._record:
            with open(self._record / "events.jsonl", "a") as f:
                f.write(json.dumps({"dir": direction, **event}) + "\n")

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait(self, check: Callable[[], Any], timeout: float) -> Any:
        async with asyncio.timeout(timeout):
            async with self._changed:
                while True:
                    found = check()
                    if found:
                        return found
                    await self._changed.wait()

    async def wait_for_event(
        self,
        type: str,
        timeout: float = 5.0,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        return await self._wait(
            lambda: next(
                (
                    e
                    for e in self.server_events
                    if e["type"] == type and (predicate is None or predicate(e))
                ),
                None,
            ),
            timeout,
        )

    async def wait_for_client_event(
        self,
        type: str,
        timeout: float = 5.0,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        return await self._wait(
            lambda: next(
                (
                    e
                    for e in self.client_events
                    if e.get("type") == type and (predicate is None or predicate(e))
                ),
                None,
            ),
            timeout,
        )

    async def wait_closed(self, timeout: float = 5.0) -> None:
        await self._wait(lambda: self.closed, timeout)

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
        if self.dialect == "ga":
            fmt = {"type": "audio/pcm", "rate": self.rate}
            return {
                "type": "realtime",
                "object": "realtime.session",
                "id": self.id,
                "model": self.model,
                "output_modalities": ["audio"],
                "instructions": self.instructions,
                "audio": {
                    "input": {
                        "format": fmt,
                        "turn_detection": self.turn_detection,
                        "transcription": self.transcription,
                        "noise_reduction": None,
                    },
                    "output": {"format": fmt, "voice": self.voice, "speed": 1.0},
                },
                "tools": [],
                "tool_choice": "auto",
                "max_output_tokens": "inf",
            }
        return {
            "id": self.id,
            "object": "realtime.session",
            "model": self.model,
            "modalities": ["audio", "text"],
            "instructions": self.instructions,
            "voice": self.voice,
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "turn_detection": self.turn_detection,
            "input_audio_transcription": self.transcription,
            "tools": [],
            "tool_choice": "auto",
            "temperature": 0.8,
            "max_response_output_tokens": "inf",
        }

    def _apply_session(self, s: dict[str, Any]) -> None:
        self.instructions = s.get("instructions", self.instructions)
        if self.dialect == "ga":
            audio = s.get("audio") or {}
            inp, out = audio.get("input") or {}, audio.get("output") or {}
            if "format" in inp:
                fmt = inp["format"]
                self.rate = int(fmt.get("rate") or 8000)
                self.bytes_per_sample = 2 if fmt["type"] == "audio/pcm" else 1
            if "turn_detection" in inp:
                self.turn_detection = _turn_defaults(inp["turn_detection"])
            if "transcription" in inp:
                self.transcription = inp["transcription"]
            self.voice = out.get("voice", self.voice)
        else:
            if "input_audio_format" in s:
                self.bytes_per_sample = 2 if s["input_audio_format"] == "pcm16" else 1
                self.rate = 24000 if s["input_audio_format"] == "pcm16" else 8000
            if "turn_detection" in s:
                self.turn_detection = _turn_defaults(s["turn_detection"])
            if "input_audio_transcription" in s:
                self.transcription = s["input_audio_transcription"]
            self.voice = s.get("voice", self.voice)

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
            await getattr(self, "_on_" + kind.replace(".", "_"))(event)
        except Rejection as rejection:
            await self.error(rejection, event_id)

    async def _on_session_update(self, e: dict[str, Any]) -> None:
        check_session(self.dialect, e.get("session"))
        self._apply_session(e["session"])
        await self.send({"type": "session.updated", "session": self.session_object()})

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
        self.input_audio += data
        self.buffer += data
        if self._record:
            with open(self._record / "input.pcm", "ab") as f:
                f.write(data)
        await self._vad(data)

    def _buffer_ms(self) -> float:
        return len(self.buffer) / self.bytes_per_sample / self.rate * 1000

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
        self.items[item_id] = _Item(
            item_id, "user", len(audio) / self.bytes_per_sample / self.rate * 1000
        )
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
                    "transcript": "caller audio of "
                    f"{len(audio) / self.bytes_per_sample / self.rate:.2f} s",
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
        self._start_response((e.get("response") or {}).get("instructions"))

    async def _on_response_cancel(self, e: dict[str, Any]) -> None:
        if self.active is None:
            raise Rejection(
                "response_cancel_not_active", "Cancellation failed: no active response found.", None
            )
        await self._cancel()

    async def _on_conversation_item_create(self, e: dict[str, Any]) -> None:
        item = e.get("item")
        if not isinstance(item, dict) or item.get("type") not in (
            "message",
            "function_call",
            "function_call_output",
        ):
            raise Rejection("invalid_value", "Invalid 'item.type'.", "item.type")
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
        item_id = item.get("id") or _id("item")
        self.items[item_id] = _Item(item_id, item.get("role", ""))
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
        end = e.get("audio_end_ms")
        if not isinstance(end, int) or end < 0 or end > item.audio_ms + 1:
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
                "content_index": e.get("content_index", 0),
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
        td = self.turn_detection
        if not td or self.bytes_per_sample != 2:
            self.audio_ms += len(data) / self.bytes_per_sample / self.rate * 1000
            return
        self._vad_carry += data
        window = self.rate * VAD_WINDOW_MS // 1000 * 2
        while len(self._vad_carry) >= window:
            chunk = np.frombuffer(bytes(self._vad_carry[:window]), dtype=np.int16).astype(
                np.float64
            )
            del self._vad_carry[:window]
            self.audio_ms += VAD_WINDOW_MS
            level = 20 * np.log10(max(np.sqrt(np.mean(chunk**2)), 1e-9) / 32768)
            if level > VAD_THRESHOLD_DBFS:
                self.silence_ms = 0.0
                if not self.speaking:
                    self.speaking = True
                    self.speech_item = _id("item")
                    start = max(
                        0.0, self.audio_ms - VAD_WINDOW_MS - td.get("prefix_padding_ms", 300)
                    )
                    await self.send(
                        {
                            "type": "input_audio_buffer.speech_started",
                            "audio_start_ms": int(start),
                            "item_id": self.speech_item,
                        }
                    )
                    if self.active is not None and td.get("interrupt_response", True):
                        await self._cancel()
            elif self.speaking:
                self.silence_ms += VAD_WINDOW_MS
                if self.silence_ms >= td.get("silence_duration_ms", 500):
                    self.speaking = False
                    item_id = self.speech_item or _id("item")
                    await self.send(
                        {
                            "type": "input_audio_buffer.speech_stopped",
                            "audio_end_ms": int(self.audio_ms),
                            "item_id": item_id,
                        }
                    )
                    await self._commit(item_id)
                    if td.get("create_response", True) and self.active is None:
                        self._start_response(None)

    # --- responses ---------------------------------------------------------------------------
    def _start_response(self, instructions: str | None) -> None:
        record = ResponseRecord(_id("resp"), _id("item"), instructions)
        self.responses.append(record)
        self.active = record
        self.items[record.item_id] = _Item(record.item_id, "assistant")
        self.active_task = asyncio.create_task(self._respond(record))

    def _reply_audio(self, record: ResponseRecord) -> tuple[bytes, str]:
        echo = self.last_user_audio
        self.last_user_audio = b""
        if echo and record.instructions is None and self.bytes_per_sample == 2:
            seconds = len(echo) / 2 / self.rate
            return echo, f"echo of {seconds:.2f} s of audio"
        text = record.instructions or "How can I help you today?"
        return synthetic_voice(text, self.rate).tobytes(), text[:200]

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
            obj["status_details"] = {"type": "cancelled", "reason": "turn_detected"}
        if self.dialect == "ga":
            obj["output_modalities"] = ["audio"]
            obj["audio"] = {
                "output": {"format": {"type": "audio/pcm", "rate": self.rate}, "voice": self.voice}
            }
        else:
            obj["modalities"] = ["audio", "text"]
            obj["output_audio_format"] = "pcm16"
            obj["voice"] = self.voice
        return obj

    async def _respond(self, record: ResponseRecord) -> None:
        ga = self.dialect == "ga"
        audio_ev = "response.output_audio" if ga else "response.audio"
        text_ev = "response.output_audio_transcript" if ga else "response.audio_transcript"
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
        audio, transcript = self._reply_audio(record)
        try:
            await self.send(
                {"type": "response.created", "response": self._response_object(record, [])}
            )
            await self.send(
                {
                    "type": "response.output_item.added",
                    "response_id": record.id,
                    "output_index": 0,
                    "item": item,
                }
            )
            await self._item_created(item) if not ga else await self.send(
                {"type": "conversation.item.added", "previous_item_id": None, "item": item}
            )
            part = {"type": "audio", "transcript": ""}
            await self.send({"type": "response.content_part.added", **ids, "part": part})
            step = self.rate * self.emulator.reply_chunk_ms // 1000 * 2
            words = transcript.split()
            for n, pos in enumerate(range(0, len(audio), step)):
                chunk = audio[pos : pos + step]
                record.audio += chunk
                self.items[record.item_id].audio_ms = len(record.audio) / 2 / self.rate * 1000
                if self.emulator.record_dir and self._record:
                    with open(self._record / "output.pcm", "ab") as f:
                        f.write(chunk)
                await self.send(
                    {"type": f"{audio_ev}.delta", **ids, "delta": base64.b64encode(chunk).decode()}
                )
                if n < len(words):
                    await self.send({"type": f"{text_ev}.delta", **ids, "delta": words[n] + " "})
                await asyncio.sleep(0.005)  # bursty, faster than real time, interruptible
            await self.send({"type": f"{audio_ev}.done", **ids})
            await self.send({"type": f"{text_ev}.done", **ids, "transcript": transcript})
            done_part = {"type": "audio", "transcript": transcript}
            await self.send({"type": "response.content_part.done", **ids, "part": done_part})
            item = {
                **item,
                "status": "completed",
                "content": [{"type": "output_audio" if ga else "audio", "transcript": transcript}],
            }
            await self.send(
                {
                    "type": "response.output_item.done",
                    "response_id": record.id,
                    "output_index": 0,
                    "item": item,
                }
            )
            record.status = "completed"
            self.active = None
            await self.send(
                {"type": "response.done", "response": self._response_object(record, [item])}
            )
        except ConnectionClosed:
            self.active = None

    async def _cancel(self) -> None:
        record, task = self.active, self.active_task
        if record is None:
            return
        self.active = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        record.status = "cancelled"
        await self.send({"type": "response.done", "response": self._response_object(record, [])})


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
        beta_disabled: bool = False,
        reply_chunk_ms: int = 100,
    ) -> None:
        self.host, self.port = host, port
        self.record_dir = Path(record_dir) if record_dir else None
        self.api_key = api_key
        self.beta_disabled = beta_disabled
        self.reply_chunk_ms = reply_chunk_ms
        self.sessions: list[EmulatedSession] = []
        self._server: Any = None
        self._new_session = asyncio.Condition()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/realtime"

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

    async def drop_all(self, code: int = 1011) -> None:
        for session in self.sessions:
            if not session.closed:
                await session.close(code)

    def _check(self, conn: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path.rstrip("/") != "/v1/realtime":
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
        beta = request.headers.get("OpenAI-Beta", "").replace(" ", "") == "realtime=v1"
        model = parse_qs(urlsplit(request.path).query)["model"][0]
        headers = {k: v for k, v in request.headers.raw_items() if k.lower() != "authorization"}
        n = len(self.sessions) + 1
        record = self.record_dir / f"{n:04d}" if self.record_dir else None
        session = EmulatedSession(self, ws, "beta" if beta else "ga", model, headers, record)
        async with self._new_session:
            self.sessions.append(session)
            self._new_session.notify_all()
        try:
            if beta and self.beta_disabled:
                await session.error(
                    Rejection(
                        "beta_api_shape_disabled",
                        "The beta Realtime API shape "
                        "is no longer supported. Remove the 'OpenAI-Beta: "
                        "realtime=v1' header.",
                        None,
                    ),
                    None,
                )
                await ws.close(4000, "beta_api_shape_disabled")
                return
            await session.send({"type": "session.created", "session": session.session_object()})
            async for raw in ws:
                await session.handle(raw)
        except ConnectionClosed:
            pass
        finally:
            if session.active_task:
                session.active_task.cancel()
            session.closed = True
            await session._notify()


async def _main(args: argparse.Namespace) -> None:
    emulator = RealtimeEmulator(
        args.host,
        args.port,
        record_dir=args.record_dir,
        api_key=args.api_key,
        beta_disabled=args.beta_disabled,
    )
    await emulator.start()
    print(
        json.dumps({"msg": "OpenAI Realtime emulator listening", "url": emulator.url}), flush=True
    )
    await asyncio.Future()


def main() -> None:
    parser = argparse.ArgumentParser(description="Local OpenAI Realtime API emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--record-dir")
    parser.add_argument("--api-key")
    parser.add_argument("--beta-disabled", action="store_true")
    try:
        asyncio.run(_main(parser.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
