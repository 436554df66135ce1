"""GPT-Live ("combo C", ``REALTIME_SCHEMA=live``): the client events the gateway sends and the
server events it reads, pure and typed (no sockets, no clock).

The shapes are ``openai.types.live``'s (openai 3.5x+); every event built here validates against
``openai.types.live.ClientEvent`` with no unknown field left over (tested). What differs from
the Realtime dialects (:mod:`shared.realtime_dialect`):

* one URL, ``wss://api.openai.com/v1/live/sessions``; the model goes in ``session.start``, never
  in the URL; ``session.start`` is the first event and nothing else goes before
  ``session.started`` (:class:`LiveOpening` keeps that rule);
* the conversation so far is given in ``session.start``'s ``input`` (text only, at most 128
  messages and 8,192 rendered tokens: :func:`history` trims the oldest first);
* no turns or responses to drive: the model speaks and stops by itself; the function tools are
  declared to a Responses backend (``delegation: {type: "responses"}``) whose stream arrives in
  ``response.event`` envelopes, answered with ``response.item.create`` + ``response.create``.
"""

from __future__ import annotations

import binascii
import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from shared.realtime_dialect import ConnectRequest, FunctionCall

LIVE_URL = "wss://api.openai.com/v1/live/sessions"
LIVE_MODEL = "gpt-live-1.1"
LIVE_RATES = (16000, 24000)  # audio/pcm on a primary WebSocket (AudioPCM.rate)
MAX_INPUT_MESSAGES = 128  # SessionConfig.input: at most 128 messages ...
MAX_INPUT_TOKENS = 8192  # ... and 8,192 rendered tokens by default
# Appends (commentary, instructions) carry at most 500 tokens; measured against a lower budget,
# as our count is an estimate.
MAX_APPEND_TOKENS = 450

Role = Literal["user", "assistant"]


class LiveProtocolError(ValueError):
    """A server message that is not a JSON object with a ``type``, or a malformed known event."""


class LiveConfigError(ValueError):
    """A configuration the live API would refuse (the message names the value)."""


@dataclass(frozen=True, slots=True)
class LiveConfig:
    """What a Live session is started with (``session.start``'s ``session``)."""

    model: str
    instructions: str
    voice: str
    rate: int = 24000
    # The agent file's tools, in the flat declaration shape (``Tool.declaration()``).
    tools: tuple[Mapping[str, Any], ...] = ()
    # The Responses backend that runs them (required by ResponsesDelegationConfig).
    delegation_model: str = "gpt-5.4-mini"
    delegation_instructions: str = ""

    def __post_init__(self) -> None:
        if self.rate not in LIVE_RATES:
            raise LiveConfigError(
                f"audio/pcm rate {self.rate} is not one GPT-Live takes (16000 or 24000)"
            )
        if not self.model:
            raise LiveConfigError("a Live session needs a model")


# --- tokens and history ------------------------------------------------------------------------

# Per message: role and framing tokens a renderer adds around the text (the OpenAI chat format
# spends 3-4; counted high).
_MESSAGE_OVERHEAD_TOKENS = 8


def estimate_tokens(text: str) -> int:
    """A conservative token count: one per 3 UTF-8 bytes, rounded up (English runs about
    4 characters a token; other scripts spend more bytes per character as they spend more
    tokens), and never fewer than the words."""
    size = len(text.encode("utf-8"))
    return max(-(-size // 3), len(text.split()))


def history(
    transcript: Sequence[tuple[Role, str]],
    max_messages: int = MAX_INPUT_MESSAGES,
    max_tokens: int = MAX_INPUT_TOKENS,
) -> list[dict[str, Any]]:
    """``session.start``'s ``input`` for a conversation: the newest messages that fit both
    limits, oldest first (what is older is left out). A newest message that alone exceeds the
    budget keeps its end (the latest words)."""
    kept: list[dict[str, Any]] = []
    left = max_tokens
    for role, text in reversed(transcript):
        text = text.strip()
        if not text:
            continue
        if len(kept) >= max_messages:
            break
        cost = estimate_tokens(text) + _MESSAGE_OVERHEAD_TOKENS
        if cost > left:
            if kept:
                break
            text = _tail(text, left - _MESSAGE_OVERHEAD_TOKENS)
            if not text:
                break
            cost = left
        kept.append(_message(role, text))
        left -= cost
    return kept[::-1]


def _tail(text: str, tokens: int) -> str:
    """The end of ``text`` within ``tokens`` (by the same estimate)."""
    if tokens <= 0:
        return ""
    data = text.encode("utf-8")[-3 * tokens :]
    tail = data.decode("utf-8", "ignore")
    while tail and estimate_tokens(tail) > tokens:
        tail = tail[len(tail) // 10 + 1 :]
    return tail.strip()


def _message(role: Role, text: str) -> dict[str, Any]:
    part = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": part, "text": text}]}


def clip_append(text: str) -> str:
    """Text for a commentary or instructions append, within its 500-token limit."""
    if estimate_tokens(text) <= MAX_APPEND_TOKENS:
        return text
    data = text.encode("utf-8")[: 3 * MAX_APPEND_TOKENS]
    return data.decode("utf-8", "ignore")


# --- client events -----------------------------------------------------------------------------


def connect_request(url: str, api_key: str) -> ConnectRequest:
    """The WebSocket request: the URL as configured (the model is never in it) and the key."""
    query = dict(parse_qsl(urlsplit(url).query))
    if "model" in query:
        raise LiveConfigError(
            f"REALTIME_URL {url!r} names a model: GPT-Live takes it in session.start only"
        )
    return ConnectRequest(url, {"Authorization": f"Bearer {api_key}"})


def function_tool(declaration: Mapping[str, Any]) -> dict[str, Any]:
    """An agent-file tool as a Responses ``FunctionTool`` (only the fields that type has)."""
    tool: dict[str, Any] = {"type": "function", "name": str(declaration["name"])}
    if declaration.get("description"):
        tool["description"] = str(declaration["description"])
    if declaration.get("parameters") is not None:
        tool["parameters"] = dict(declaration["parameters"])
    return tool


def session_start(
    config: LiveConfig, transcript: Sequence[tuple[Role, str]] = ()
) -> dict[str, Any]:
    """The first event of a session: model, instructions, audio, delegation and history."""
    session: dict[str, Any] = {
        "model": config.model,
        "audio": {
            "format": {"type": "audio/pcm", "rate": config.rate},
            "output": {"voice": config.voice},
        },
    }
    if config.instructions.strip():
        session["instructions"] = config.instructions
    if config.tools:
        responses: dict[str, Any] = {
            "model": config.delegation_model,
            "tools": [function_tool(t) for t in config.tools],
        }
        if config.delegation_instructions:
            responses["instructions"] = config.delegation_instructions
        session["delegation"] = {"type": "responses", "responses": responses}
    items = history(transcript)
    if items:
        session["input"] = items
    return {"type": "session.start", "session": session}


def append_audio(pcm16: bytes) -> str:
    """``session.input_audio.append`` as JSON text (hot path: no dict, no json.dumps)."""
    b64 = binascii.b2a_base64(pcm16, newline=False).decode("ascii")
    return f'{{"type":"session.input_audio.append","audio":"{b64}"}}'


def commentary(text: str) -> dict[str, Any]:
    """Speakable context with no delegation: the model says it in its own words (the greeting
    right after ``session.started`` makes the model speak first)."""
    return {
        "type": "session.commentary.append",
        "content": clip_append(text),
        "delegation_id": None,
    }


def instructions_append(text: str) -> dict[str, Any]:
    """Developer context the model keeps (through compaction, and in later delegations)."""
    return {
        "type": "session.instructions.append",
        "content": clip_append(text),
        "delegation_id": None,
    }


def function_call_output(call_id: str, output: str) -> dict[str, Any]:
    """A tool's answer to the Responses backend (then :func:`response_create`)."""
    return {
        "type": "response.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output},
    }


def developer_item(text: str) -> dict[str, Any]:
    """A note to the Responses backend, e.g. a result for a call an earlier session made."""
    return {
        "type": "response.item.create",
        "item": {"type": "message", "role": "developer", "content": text},
    }


def response_create() -> dict[str, Any]:
    return {"type": "response.create"}


def session_close() -> dict[str, Any]:
    return {"type": "session.close"}


class LiveReplies:
    """What :class:`shared.tool_calls.CallTools` sends the model, in GPT-Live's words: outputs
    and notes go to the Responses backend, then one ``response.create`` continues it. A word
    while a tool runs is not needed: the live model acknowledges a delegation by itself
    (``acknowledgement_delay_ms``), so the filler is disabled for this dialect."""

    @staticmethod
    def function_call_output(call_id: str, output: str) -> dict[str, Any]:
        return function_call_output(call_id, output)

    @staticmethod
    def system_text_item(text: str) -> dict[str, Any]:
        return developer_item(text)

    @staticmethod
    def response_create(
        instructions: str | None = None, *, out_of_band: bool = False
    ) -> dict[str, Any]:
        return response_create()


# --- server events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    session_id: str


@dataclass(frozen=True, slots=True)
class OutputAudio:
    audio: bytes  # PCM16 at the session's rate, silence included (zeros)


@dataclass(frozen=True, slots=True)
class TranscriptPart:
    role: Role
    text: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class DelegationCreated:
    delegation_id: str
    target: str
    response_id: str


@dataclass(frozen=True, slots=True)
class BackendStarted:
    """A Responses backend response began (``response.created`` in a ``response.event``)."""

    response_id: str
    delegation_id: str


@dataclass(frozen=True, slots=True)
class BackendCall:
    """A completed function call item of the backend's (``response.output_item.done``)."""

    response_id: str
    delegation_id: str
    call: FunctionCall


@dataclass(frozen=True, slots=True)
class BackendDone:
    """A backend response ended (``response.completed`` / ``incomplete`` / ``failed``)."""

    response_id: str
    delegation_id: str
    status: str


@dataclass(frozen=True, slots=True)
class Usage:
    seconds: float


@dataclass(frozen=True, slots=True)
class Closed:
    reason: str


class LiveErrorKind(enum.Enum):
    FATAL = "fatal"  # no session can work (auth, model, our configuration)
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class LiveError:
    code: str
    message: str
    param: str
    kind: LiveErrorKind


@dataclass(frozen=True, slots=True)
class OtherLive:
    type: str


LiveEvent = (
    Started
    | OutputAudio
    | TranscriptPart
    | DelegationCreated
    | BackendStarted
    | BackendCall
    | BackendDone
    | Usage
    | Closed
    | LiveError
    | OtherLive
)

_FATAL_CODES = {
    "invalid_api_key",
    "model_not_found",
    "insufficient_quota",
    "unsupported_audio_format",
    "invalid_model",
}
_FATAL_TYPES = {"authentication_error", "permission_error"}


def _s(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _i(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def parse(message: str | bytes) -> LiveEvent:
    """One server message as a typed event; :class:`LiveProtocolError` for garbage."""
    try:
        data = json.loads(message)
    except (ValueError, UnicodeDecodeError):
        raise LiveProtocolError(f"not JSON: {str(message)[:60]!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise LiveProtocolError("not an event object with a type")
    kind = data["type"]
    try:
        return _parse(kind, data)
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
        raise LiveProtocolError(f"malformed {kind}: {exc}") from None


def _parse(kind: str, d: dict[str, Any]) -> LiveEvent:
    if kind == "session.output_audio.delta":
        delta = d["delta"]
        if not isinstance(delta, str):
            raise ValueError("delta is not a string")
        return OutputAudio(binascii.a2b_base64(delta))
    if kind in ("session.input_transcript.delta", "session.output_transcript.delta"):
        role: Role = "user" if kind == "session.input_transcript.delta" else "assistant"
        return TranscriptPart(role, _s(d, "delta"), _i(d, "start_ms"), _i(d, "end_ms"))
    if kind == "response.event":
        return _backend(d)
    if kind == "session.started":
        session = d.get("session")
        return Started(_s(session, "id") if isinstance(session, dict) else "")
    if kind == "session.delegation.created":
        delegation = d["delegation"]
        return DelegationCreated(
            _s(delegation, "id"), _s(delegation, "target"), _s(delegation, "response_id")
        )
    if kind == "session.usage.updated":
        usage = d.get("usage")
        seconds = usage.get("seconds", 0) if isinstance(usage, dict) else 0
        return Usage(float(seconds) if isinstance(seconds, int | float) else 0.0)
    if kind == "session.closed":
        return Closed(_s(d, "reason"))
    if kind == "error":
        err = d.get("error")
        if not isinstance(err, dict):
            err = {}
        code = _s(err, "code")
        fatal = code in _FATAL_CODES or _s(err, "type") in _FATAL_TYPES
        return LiveError(
            code or _s(err, "type"),
            _s(err, "message"),
            _s(err, "param"),
            LiveErrorKind.FATAL if fatal else LiveErrorKind.OTHER,
        )
    return OtherLive(kind)


def _backend(d: dict[str, Any]) -> LiveEvent:
    """The Responses stream inside a ``response.event`` envelope: what the gateway acts on."""
    inner = d["event"]
    if not isinstance(inner, dict):
        raise ValueError("event is not an object")
    delegation = _s(d, "delegation_id")
    kind = _s(inner, "type")
    response = inner.get("response")
    response_id = _s(response, "id") if isinstance(response, dict) else _s(inner, "response_id")
    if kind in ("response.created", "response.in_progress"):
        return BackendStarted(response_id, delegation)
    if kind in ("response.completed", "response.incomplete", "response.failed"):
        return BackendDone(response_id, delegation, kind.removeprefix("response."))
    if kind == "response.output_item.done":
        item = inner.get("item")
        # Only completed calls run: an incomplete one was cut short mid-generation.
        if (
            isinstance(item, dict)
            and item.get("type") == "function_call"
            and item.get("status", "completed") == "completed"
            and _s(item, "call_id")
            and _s(item, "name")
        ):
            call = FunctionCall(
                _s(item, "call_id"), _s(item, "name"), _s(item, "arguments"), _s(item, "id")
            )
            return BackendCall(response_id, delegation, call)
    return OtherLive(f"response.event:{kind}")


# --- opening a session -------------------------------------------------------------------------


class LiveOpening:
    """The opening of one session: ``session.start`` first, then nothing until
    ``session.started`` (the rule the live API enforces). Feed it each server message until
    :attr:`started`; an error before that is the session refused."""

    def __init__(self, config: LiveConfig, transcript: Sequence[tuple[Role, str]] = ()) -> None:
        self.config = config
        self.first = json.dumps(session_start(config, transcript), separators=(",", ":"))
        self.started: Started | None = None
        self.refused: LiveError | None = None

    def receive(self, message: str | bytes) -> LiveEvent:
        event = parse(message)
        if isinstance(event, Started):
            self.started = event
        elif isinstance(event, LiveError) and self.started is None:
            self.refused = event
        return event
