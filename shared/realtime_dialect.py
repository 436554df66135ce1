"""The OpenAI Realtime dialects, as the dialect report verified them: pure, no sockets.

Two combos reliably return audio (the dialect report, summarised in docs/realtime.md):

* **Combo A** (``REALTIME_SCHEMA=audio``, no beta header; the GA dialect): ``session.type``,
  ``session.audio.{input,output}.format {type: audio/pcm, rate: 24000}``, voice under
  ``session.audio.output``, ``output_modalities: ["audio"]``; turn detection lives at
  ``session.audio.input.turn_detection`` (``session.turn_detection`` is rejected), and
  ``response.modalities`` is rejected.
* **Combo B** (``REALTIME_SCHEMA=flat``, ``OpenAI-Beta: realtime=v1``): flat session keys,
  ``pcm16`` formats, ``modalities: ["audio","text"]`` (``["audio"]`` is rejected), and
  ``session.audio`` is rejected.

:class:`RealtimeDialect` builds every client event the gateway sends in the shape of one combo
and normalises what the server sends (both event names for audio and transcripts become one
event each; errors become typed values). Opening a session, and ``REALTIME_SCHEMA=auto``'s
choice between the combos, is :mod:`shared.realtime_handshake`'s.
"""

from __future__ import annotations

import binascii
import enum
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shared.mcp import ApprovalRequest, McpCallItem, McpCallStarted

TurnDetection = Literal["server_vad", "semantic_vad", "none"]
BETA_HEADER = ("OpenAI-Beta", "realtime=v1")


class RealtimeProtocolError(ValueError):
    """A server message that is not a JSON object with a ``type``."""


class Combo(enum.Enum):
    """The two dialects the report verified, by one name each in the code. The same thing goes
    by three names outside it: the report's combo A / combo B, the SDK's GA / beta, and the
    ``REALTIME_SCHEMA`` values ``audio`` / ``flat`` (this enum's values)."""

    GA = "audio"  # combo A
    BETA = "flat"  # combo B

    @property
    def beta_header(self) -> bool:
        return self is Combo.BETA

    def other(self) -> Combo:
        return Combo.BETA if self is Combo.GA else Combo.GA


# --- configuration -----------------------------------------------------------------------------

_VOICE_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
MAX_CALL_INSTRUCTIONS = 4000
ANALYSIS_PURPOSE = "gateway_analysis"  # the metadata of the end-of-call analysis response


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What a session is configured with (both dialects say it in their own shape)."""

    voice: str
    instructions: str
    turn_detection: TurnDetection
    rate: int = 24000
    transcription_model: str | None = None
    # The turn detector's knobs (threshold, silence_duration_ms, eagerness, ...): each dialect
    # sends those it has (the beta one has no idle_timeout_ms).
    turn_knobs: Mapping[str, Any] = field(default_factory=dict)
    # near_field / far_field; "off" turns it off (null); None leaves the server's default.
    noise_reduction: str | None = None
    # session.tools, in the flat shape both dialects share (``Tool.declaration``).
    tools: tuple[Mapping[str, Any], ...] = ()
    # GA only (the beta dialect has none of them and leaves them out): the model (the URL's
    # ?model=, over REALTIME_MODEL), session.reasoning.effort, parallel_tool_calls, truncation
    # ("auto", "disabled" or a retention ratio) and remote MCP servers (``McpServer.declaration``).
    model: str | None = None
    reasoning_effort: str | None = None
    parallel_tool_calls: bool | None = None
    truncation: str | float | None = None
    mcp_tools: tuple[Mapping[str, Any], ...] = ()

    def with_overrides(self, overrides: Mapping[str, str]) -> SessionConfig:
        """This session with a call's ``voice``/``instructions`` (Twilio ``<Parameter>``s);
        other parameters are not the session's and are left alone.

        Raises ValueError naming the bad override (the worker then ignores all overrides).
        """
        voice, instructions = self.voice, self.instructions
        for key, value in overrides.items():
            if key == "voice":
                if not _VOICE_RE.fullmatch(value):
                    raise ValueError(f"voice={value[:40]!r} is not a voice name")
                voice = value
            elif key == "instructions":
                if len(value) > MAX_CALL_INSTRUCTIONS:
                    raise ValueError(f"instructions longer than {MAX_CALL_INSTRUCTIONS} characters")
                instructions = value
        return replace(self, voice=voice, instructions=instructions)


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    url: str
    headers: dict[str, str]

    def __repr__(self) -> str:  # never show the key
        shown = {k: ("Bearer ***" if k == "Authorization" else v) for k, v in self.headers.items()}
        return f"ConnectRequest(url={self.url!r}, headers={shown!r})"


# --- normalised server events ------------------------------------------------------------------


class ErrorKind(enum.Enum):
    BENIGN = "benign"  # e.g. a commit racing server VAD (the report saw it; audio still came)
    DIALECT_MISMATCH = "dialect_mismatch"  # the server speaks the other dialect
    FATAL = "fatal"  # no session can work (auth, model)
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class SessionCreated:
    session: dict[str, Any]
    dialect_seen: Literal["ga", "beta"]


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    session: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AudioDelta:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    audio: bytes


@dataclass(frozen=True, slots=True)
class TranscriptDelta:
    response_id: str
    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class TranscriptDone:
    response_id: str
    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class InputTranscript:
    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    audio_start_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    audio_end_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class IdleTimeout:
    """``input_audio_buffer.timeout_triggered``: the caller stayed silent for idle_timeout_ms."""

    item_id: str


@dataclass(frozen=True, slots=True)
class InputCommitted:
    item_id: str


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A function the model called, as ``response.done`` lists it among the response's output."""

    call_id: str
    name: str
    arguments: str  # JSON text, as the model wrote it (not yet checked)
    item_id: str = ""
    status: str = "completed"


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response_id: str
    status: str
    # The response's function calls; run only when the response completed (a cancelled or
    # interrupted response's calls are not run).
    calls: tuple[FunctionCall, ...] = ()
    # response.usage as the server sent it (tokens by modality; read by shared.usage).
    usage: Mapping[str, Any] | None = None
    # The remote MCP calls the server ran in this response (GA).
    mcp_calls: tuple[McpCallItem, ...] = ()


@dataclass(frozen=True, slots=True)
class ServerError:
    code: str
    message: str
    param: str
    event_id: str
    type: str
    kind: ErrorKind
    implies: Combo | None = None  # for a dialect mismatch: the combo the server seems to want


@dataclass(frozen=True, slots=True)
class OtherEvent:
    type: str


ServerEvent = (
    SessionCreated
    | SessionUpdated
    | AudioDelta
    | TranscriptDelta
    | TranscriptDone
    | InputTranscript
    | SpeechStarted
    | SpeechStopped
    | InputCommitted
    | ResponseCreated
    | ResponseDone
    | ServerError
    | ApprovalRequest
    | McpCallStarted
    | IdleTimeout
    | OtherEvent
)

_BENIGN_CODES = {"input_audio_buffer_commit_empty", "response_cancel_not_active"}
_FATAL_CODES = {"invalid_api_key", "model_not_found", "insufficient_quota", "invalid_model"}
# Session keys that exist in only one dialect: an error naming one tells which dialect is wrong.
_GA_ONLY = (
    "session.type",
    "session.audio",
    "session.output_modalities",
    "response.audio",
    "response.output_modalities",
)
_BETA_ONLY = (
    "session.modalities",
    "session.input_audio_format",
    "session.output_audio_format",
    "session.voice",
    "session.turn_detection",
    "session.input_audio_transcription",
    "response.modalities",
    "response.voice",
    "response.output_audio_format",
)
# The close code the live API ends a beta-header session with once the beta shape is disabled
# (docs/dialects.md: since May 2026), after an error with code beta_api_shape_disabled.
BETA_SHAPE_DISABLED_CLOSE = 4000
BETA_RETIRED_CODE = "beta_api_shape_disabled"
_PARAM_RE = re.compile(r"Unknown parameter: '([^']+)'")


def classify_error(
    code: str, message: str, param: str, sent_combo: Combo
) -> tuple[ErrorKind, Combo | None]:
    """What an error means for the dialect in use (and which combo it points to)."""
    if code in _BENIGN_CODES:
        return ErrorKind.BENIGN, None
    if code == BETA_RETIRED_CODE:
        return ErrorKind.DIALECT_MISMATCH, Combo.GA
    if code in _FATAL_CODES:
        return ErrorKind.FATAL, None
    named = param or (m.group(1) if (m := _PARAM_RE.search(message)) else "")
    # Only a key the server does not know says "wrong dialect" (or the GA server missing the
    # session.type it requires); a bad value, such as a rate below 24000, is our own error.
    if code == "unknown_parameter" or "Unknown parameter" in message:
        if named.startswith(_GA_ONLY) and sent_combo is Combo.GA:
            return ErrorKind.DIALECT_MISMATCH, Combo.BETA
        if named.startswith(_BETA_ONLY) and sent_combo is Combo.BETA:
            return ErrorKind.DIALECT_MISMATCH, Combo.GA
        if named.startswith(("session.", "response.")):
            return ErrorKind.DIALECT_MISMATCH, sent_combo.other()
    if (
        code == "missing_required_parameter"
        and named == "session.type"
        and sent_combo is Combo.BETA
    ):
        return ErrorKind.DIALECT_MISMATCH, Combo.GA
    return ErrorKind.OTHER, None


# --- the dialect -------------------------------------------------------------------------------


_BETA_TURN_KNOBS = {
    "threshold",
    "prefix_padding_ms",
    "silence_duration_ms",
    "create_response",
    "interrupt_response",
    "eagerness",
}


def _turn_detection(
    kind: TurnDetection, knobs: Mapping[str, Any], *, ga: bool
) -> dict[str, Any] | None:
    if kind == "none":
        return None
    shown = {k: v for k, v in knobs.items() if ga or k in _BETA_TURN_KNOBS}
    return {"type": kind, **shown}


def _ga_only_keys(c: SessionConfig) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    if c.reasoning_effort is not None:
        keys["reasoning"] = {"effort": c.reasoning_effort}
    if c.parallel_tool_calls is not None:
        keys["parallel_tool_calls"] = c.parallel_tool_calls
    if isinstance(c.truncation, float):
        keys["truncation"] = {"type": "retention_ratio", "retention_ratio": c.truncation}
    elif c.truncation is not None:
        keys["truncation"] = c.truncation
    return keys


def _noise_reduction(kind: str) -> dict[str, Any] | None:
    return None if kind == "off" else {"type": kind}


class RealtimeDialect:
    """Client events in one combo's shape, and the server's events normalised."""

    def __init__(
        self, schema: Literal["audio", "flat"], beta_header: bool, config: SessionConfig
    ) -> None:
        if schema not in ("audio", "flat"):
            raise ValueError(f"schema must be audio or flat, got {schema!r}")
        self.combo = Combo(schema)
        # Only the smoke test pairs a schema with the other combo's header (to show the refusal).
        self.beta_header = beta_header
        self.config = config

    @property
    def schema(self) -> Literal["audio", "flat"]:
        """The ``REALTIME_SCHEMA`` name of the combo's session shape."""
        return "audio" if self.combo is Combo.GA else "flat"

    @classmethod
    def for_combo(cls, combo: Combo, config: SessionConfig) -> RealtimeDialect:
        return cls(combo.value, combo.beta_header, config)

    def __repr__(self) -> str:
        return f"RealtimeDialect(schema={self.schema!r}, beta_header={self.beta_header})"

    # connection
    def connect_request(self, url: str, model: str, api_key: str) -> ConnectRequest:
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "model"]
        query.append(("model", self.config.model or model))
        full = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
        headers = {"Authorization": f"Bearer {api_key}"}
        if self.beta_header:
            headers[BETA_HEADER[0]] = BETA_HEADER[1]
        return ConnectRequest(full, headers)

    # session
    def session_update(self) -> dict[str, Any]:
        c = self.config
        if self.combo is Combo.GA:
            fmt = {"type": "audio/pcm", "rate": c.rate}
            audio_in: dict[str, Any] = {
                "format": fmt,
                "turn_detection": _turn_detection(c.turn_detection, c.turn_knobs, ga=True),
            }
            if c.transcription_model:
                audio_in["transcription"] = {"model": c.transcription_model}
            if c.noise_reduction is not None:
                audio_in["noise_reduction"] = _noise_reduction(c.noise_reduction)
            session: dict[str, Any] = {
                "type": "realtime",
                "output_modalities": ["audio"],
                "instructions": c.instructions,
                "audio": {"input": audio_in, "output": {"format": dict(fmt), "voice": c.voice}},
            }
            session.update(_ga_only_keys(c))
        else:
            session = {
                "modalities": ["audio", "text"],
                "instructions": c.instructions,
                "voice": c.voice,
                "input_audio_format": "pcm16",
                "output_audio_format": "pcm16",
                "turn_detection": _turn_detection(c.turn_detection, c.turn_knobs, ga=False),
            }
            if c.transcription_model:
                session["input_audio_transcription"] = {"model": c.transcription_model}
            if c.noise_reduction is not None:
                session["input_audio_noise_reduction"] = _noise_reduction(c.noise_reduction)
        # The same flat function shape in both dialects (no nested "function" key); remote MCP
        # servers only in the GA one.
        tools = [dict(tool) for tool in c.tools]
        if self.combo is Combo.GA:
            tools += [dict(tool) for tool in c.mcp_tools]
        if tools:
            session["tools"] = tools
            session["tool_choice"] = "auto"
        return {"type": "session.update", "session": session}

    def response_create(
        self, instructions: str | None = None, *, out_of_band: bool = False
    ) -> dict[str, Any]:
        """A response; ``out_of_band``: one that does not enter the conversation
        (``conversation: "none"``), e.g. a word to the caller while a tool runs."""
        c = self.config
        if self.combo is Combo.GA:
            response: dict[str, Any] = {
                "audio": {
                    "output": {"format": {"type": "audio/pcm", "rate": c.rate}, "voice": c.voice}
                }
            }
        else:
            response = {
                "modalities": ["audio", "text"],
                "output_audio_format": "pcm16",
                "voice": c.voice,
            }
        if instructions:
            response["instructions"] = instructions
        if out_of_band:
            response["conversation"] = "none"
        return {"type": "response.create", "response": response}

    @staticmethod
    def function_call_output(call_id: str, output: str) -> dict[str, Any]:
        """The answer to the model's function call ``call_id`` (then ask for a response)."""
        return {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": output},
        }

    def analysis_request(self, instructions: str) -> dict[str, Any]:
        """An out-of-band, text-only response (``conversation: "none"``: not spoken, not in the
        conversation, though it reads it) asking for the end-of-call analysis."""
        response: dict[str, Any] = {
            "conversation": "none",
            "instructions": instructions,
            "metadata": {"purpose": ANALYSIS_PURPOSE},
        }
        if self.combo is Combo.GA:
            response["output_modalities"] = ["text"]
        else:
            response["modalities"] = ["text"]
        return {"type": "response.create", "response": response}

    @staticmethod
    def mcp_approval_response(item: Mapping[str, Any]) -> dict[str, Any]:
        """The gateway's answer to the model's ``mcp_approval_request`` (GA only)."""
        return {"type": "conversation.item.create", "item": dict(item)}

    @staticmethod
    def system_text_item(text: str) -> dict[str, Any]:
        """A note to the model from the gateway, e.g. a tool's result for a call the session
        did not make (it went with a session that is gone)."""
        return {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "system",
                "content": [{"type": "input_text", "text": text}],
            },
        }

    # audio (hot path: 50 per second per call)
    @staticmethod
    def append_audio(pcm16: bytes) -> str:
        b64 = binascii.b2a_base64(pcm16, newline=False).decode("ascii")
        return f'{{"type":"input_audio_buffer.append","audio":"{b64}"}}'

    @staticmethod
    def commit() -> dict[str, Any]:
        return {"type": "input_audio_buffer.commit"}

    @staticmethod
    def clear_input() -> dict[str, Any]:
        return {"type": "input_audio_buffer.clear"}

    @staticmethod
    def cancel_response() -> dict[str, Any]:
        return {"type": "response.cancel"}

    @staticmethod
    def truncate(item_id: str, audio_end_ms: int, content_index: int = 0) -> dict[str, Any]:
        return {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": content_index,
            "audio_end_ms": max(0, int(audio_end_ms)),
        }

    @staticmethod
    def user_text_item(text: str) -> dict[str, Any]:
        return {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}],
            },
        }

    def context_items(
        self, transcript: Sequence[tuple[Literal["user", "assistant"], str]]
    ) -> list[dict[str, Any]]:
        """The conversation so far, for a new session after a reconnect."""
        assistant_type = "output_text" if self.combo is Combo.GA else "text"
        items = []
        for role, text in transcript:
            kind = "input_text" if role == "user" else assistant_type
            items.append(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": role,
                        "content": [{"type": kind, "text": text}],
                    },
                }
            )
        return items

    # server events
    def parse(self, message: str | bytes) -> ServerEvent:
        try:
            data = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            raise RealtimeProtocolError(f"not JSON: {str(message)[:60]!r}") from None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise RealtimeProtocolError("not an event object with a type")
        kind = data["type"]
        handler = _HANDLERS.get(kind)
        if handler is None:
            return OtherEvent(kind)
        try:
            return handler(self, data)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise RealtimeProtocolError(f"malformed {kind}: {exc}") from None


def _s(data: dict[str, Any], key: str) -> str:
    # The server sends null for an optional field it has no value for (an error's param or
    # event_id): that is "no value", never the text "None".
    value = data.get(key)
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _i(data: dict[str, Any], key: str) -> int:
    value = data.get(key, 0)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _audio_delta(_: RealtimeDialect, d: dict[str, Any]) -> ServerEvent:
    delta = d["delta"]
    if not isinstance(delta, str):
        raise ValueError("delta is not a string")
    return AudioDelta(
        _s(d, "response_id"),
        _s(d, "item_id"),
        _i(d, "output_index"),
        _i(d, "content_index"),
        binascii.a2b_base64(delta),
    )


def _error(dialect: RealtimeDialect, d: dict[str, Any]) -> ServerEvent:
    err = d.get("error")
    if not isinstance(err, dict):
        err = {}
    code, message, param = _s(err, "code"), _s(err, "message"), _s(err, "param")
    kind, implies = classify_error(code, message, param, dialect.combo)
    return ServerError(code, message, param, _s(err, "event_id"), _s(err, "type"), kind, implies)


def _session_created(_: RealtimeDialect, d: dict[str, Any]) -> ServerEvent:
    session = d.get("session")
    if not isinstance(session, dict):
        raise ValueError("session is not an object")
    seen: Literal["ga", "beta"] = (
        "ga" if "audio" in session or "output_modalities" in session else "beta"
    )
    return SessionCreated(session, seen)


def _response_done(response: dict[str, Any]) -> ServerEvent:
    output = response.get("output")
    calls = []
    mcp_calls = []
    for item in output if isinstance(output, list) else []:
        if isinstance(item, dict) and item.get("type") == "mcp_call":
            error = item.get("error")
            mcp_calls.append(
                McpCallItem(
                    _s(item, "id"),
                    _s(item, "server_label"),
                    _s(item, "name"),
                    _s(item, "arguments"),
                    item["output"] if isinstance(item.get("output"), str) else None,
                    (_s(error, "message") or _s(error, "type") or "error")
                    if isinstance(error, dict)
                    else None,
                )
            )
        if isinstance(item, dict) and item.get("type") == "function_call":
            calls.append(
                FunctionCall(
                    _s(item, "call_id"),
                    _s(item, "name"),
                    _s(item, "arguments"),
                    _s(item, "id"),
                    _s(item, "status") or "completed",
                )
            )
    usage = response.get("usage")
    return ResponseDone(
        _s(response, "id"),
        _s(response, "status"),
        tuple(calls),
        usage if isinstance(usage, dict) else None,
        tuple(mcp_calls),
    )


def _item_done(_: RealtimeDialect, d: dict[str, Any]) -> ServerEvent:
    item = d.get("item")
    if isinstance(item, dict) and item.get("type") == "mcp_approval_request":
        return ApprovalRequest(
            _s(item, "id"), _s(item, "server_label"), _s(item, "name"), _s(item, "arguments")
        )
    return OtherEvent(_s(d, "type"))


def _response(d: dict[str, Any]) -> dict[str, Any]:
    response = d.get("response")
    return response if isinstance(response, dict) else {}


# Each server event type the gateway acts on, and how to read it into a normalised event.
_Handler = Callable[["RealtimeDialect", dict[str, Any]], ServerEvent]
_HANDLERS: dict[str, _Handler] = {
    "session.created": _session_created,
    "session.updated": lambda _, d: SessionUpdated(d.get("session") or {}),
    "response.output_audio.delta": _audio_delta,
    "response.audio.delta": _audio_delta,
    "response.output_audio_transcript.delta": lambda _, d: TranscriptDelta(
        _s(d, "response_id"), _s(d, "item_id"), _s(d, "delta")
    ),
    "response.audio_transcript.delta": lambda _, d: TranscriptDelta(
        _s(d, "response_id"), _s(d, "item_id"), _s(d, "delta")
    ),
    "response.output_audio_transcript.done": lambda _, d: TranscriptDone(
        _s(d, "response_id"), _s(d, "item_id"), _s(d, "transcript")
    ),
    "response.audio_transcript.done": lambda _, d: TranscriptDone(
        _s(d, "response_id"), _s(d, "item_id"), _s(d, "transcript")
    ),
    "conversation.item.input_audio_transcription.completed": lambda _, d: InputTranscript(
        _s(d, "item_id"), _s(d, "transcript")
    ),
    "input_audio_buffer.speech_started": lambda _, d: SpeechStarted(
        _i(d, "audio_start_ms"), _s(d, "item_id")
    ),
    "input_audio_buffer.speech_stopped": lambda _, d: SpeechStopped(
        _i(d, "audio_end_ms"), _s(d, "item_id")
    ),
    "input_audio_buffer.committed": lambda _, d: InputCommitted(_s(d, "item_id")),
    "input_audio_buffer.timeout_triggered": lambda _, d: IdleTimeout(_s(d, "item_id")),
    "response.created": lambda _, d: ResponseCreated(_s(_response(d), "id")),
    "response.done": lambda _, d: _response_done(_response(d)),
    "response.output_item.done": _item_done,
    "conversation.item.done": _item_done,
    "response.mcp_call.in_progress": lambda _, d: McpCallStarted(_s(d, "item_id")),
    "error": _error,
}


# --- refusals ----------------------------------------------------------------------------------


def close_refusal(code: int, reason: str) -> str | None:
    """Why a close before the session was accepted refuses the combo for good (4000: the beta
    shape disabled, docs/realtime.md), or ``None`` for a close worth reconnecting after."""
    return f"closed {code} {reason}".strip() if code == BETA_SHAPE_DISABLED_CLOSE else None
