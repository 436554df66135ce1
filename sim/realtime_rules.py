"""What the emulated Realtime API accepts, per dialect, as data (the dialect report's rules).

Each table is a tree of the keys a client event may carry: ``None`` for a leaf (any value), a
dict for an object, a one-element list for a list of objects. A key outside the tree is answered
like the live API: ``Unknown parameter: '<dotted.path>'.``. The report's specific rejections and
the values the live API refuses follow the trees in :func:`check_session` and
:func:`check_response`; :class:`WireFormat` says what an accepted audio format means on the wire.

Built from the report and the official SDK's request (``*_param``) models, never from the
gateway's own code: the trees hold exactly the keys those models define (``tests`` compare them).
Where the SDK offers alternative object shapes for one value (function or MCP tool, server or
semantic VAD, a format with or without ``rate``), the tree holds the union of their keys: the
emulator checks names, not which alternative a set of keys belongs to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Tree = dict[str, Any]

# --- key trees ------------------------------------------------------------------------------------

_FORMAT = {"type": None, "rate": None}
_TURN_BETA = {
    "type": None,
    "threshold": None,
    "prefix_padding_ms": None,
    "silence_duration_ms": None,
    "create_response": None,
    "interrupt_response": None,
    "eagerness": None,
}
_TURN_GA = {**_TURN_BETA, "idle_timeout_ms": None}
_TRANSCRIPTION_BETA = {"model": None, "language": None, "prompt": None}
_TRANSCRIPTION_GA = {**_TRANSCRIPTION_BETA, "delay": None, "keywords": None, "languages": None}
_TRACING = {"group_id": None, "metadata": None, "workflow_name": None}
_PROMPT = {"id": None, "variables": None, "version": None}
_TOOL_FILTER = {"read_only": None, "tool_names": None}
_TOOLS_GA = [
    {
        # a function tool
        "type": None,
        "name": None,
        "description": None,
        "parameters": None,
        # an MCP tool
        "server_label": None,
        "server_url": None,
        "server_description": None,
        "connector_id": None,
        "authorization": None,
        "headers": None,
        "allowed_tools": _TOOL_FILTER,
        "require_approval": {"always": _TOOL_FILTER, "never": _TOOL_FILTER},
        "allowed_callers": None,
        "defer_loading": None,
        "tunnel_id": None,
    }
]
_TOOLS_BETA = [{"type": None, "name": None, "description": None, "parameters": None}]
_TOOL_CHOICE_GA = {"type": None, "name": None, "server_label": None}

ITEM_GA: Tree = {
    "id": None,
    "type": None,
    "object": None,
    "status": None,
    # messages
    "role": None,
    "content": [
        {
            "type": None,
            "text": None,
            "audio": None,
            "transcript": None,
            "image_url": None,
            "detail": None,
        }
    ],
    # function calls and their outputs
    "call_id": None,
    "name": None,
    "arguments": None,
    "output": None,
    # MCP items
    "server_label": None,
    "tools": [{"name": None, "description": None, "input_schema": None, "annotations": None}],
    "approval_request_id": None,
    "approve": None,
    "reason": None,
    "error": {"type": None, "code": None, "message": None},
}
ITEM_BETA: Tree = {
    "id": None,
    "type": None,
    "object": None,
    "status": None,
    "role": None,
    "content": [{"type": None, "id": None, "text": None, "audio": None, "transcript": None}],
    "call_id": None,
    "name": None,
    "arguments": None,
    "output": None,
}

GA_SESSION: Tree = {
    "type": None,
    "model": None,
    "instructions": None,
    "output_modalities": None,
    "audio": {
        "input": {
            "format": _FORMAT,
            "turn_detection": _TURN_GA,
            "transcription": _TRANSCRIPTION_GA,
            "noise_reduction": {"type": None, "strength": None},
        },
        "output": {"format": _FORMAT, "voice": {"id": None}, "speed": None},
    },
    "tools": _TOOLS_GA,
    "tool_choice": _TOOL_CHOICE_GA,
    "parallel_tool_calls": None,
    "reasoning": {"effort": None},
    "max_output_tokens": None,
    "tracing": _TRACING,
    "truncation": {
        "type": None,
        "retention_ratio": None,
        "token_limits": {"post_instructions": None},
    },
    "include": None,
    "prompt": _PROMPT,
}
BETA_SESSION: Tree = {
    "model": None,
    "instructions": None,
    "modalities": None,
    "voice": None,
    "input_audio_format": None,
    "output_audio_format": None,
    "turn_detection": _TURN_BETA,
    "input_audio_transcription": _TRANSCRIPTION_BETA,
    "input_audio_noise_reduction": {"type": None},
    "tools": _TOOLS_BETA,
    "tool_choice": None,
    "temperature": None,
    "max_response_output_tokens": None,
    "speed": None,
    "tracing": _TRACING,
    "client_secret": {"expires_after": {"anchor": None, "seconds": None}},
}
GA_RESPONSE: Tree = {
    "output_modalities": None,
    "instructions": None,
    "audio": {"output": {"format": _FORMAT, "voice": {"id": None}}},
    "conversation": None,
    "input": [ITEM_GA],  # items, or {type: item_reference, id} references (keys of an item)
    "metadata": None,
    "max_output_tokens": None,
    "tool_choice": _TOOL_CHOICE_GA,
    "tools": _TOOLS_GA,
    "parallel_tool_calls": None,
    "reasoning": {"effort": None},
    "prompt": _PROMPT,
}
BETA_RESPONSE: Tree = {
    "modalities": None,
    "instructions": None,
    "voice": None,
    "output_audio_format": None,
    "conversation": None,
    "input": [ITEM_BETA],
    "metadata": None,
    "max_response_output_tokens": None,
    "tool_choice": None,
    "tools": _TOOLS_BETA,
    "temperature": None,
}


def _events(session: Tree, response: Tree, item: Tree) -> dict[str, Tree]:
    base = {"type": None, "event_id": None}
    return {
        "session.update": {**base, "session": session},
        "input_audio_buffer.append": {**base, "audio": None},
        "input_audio_buffer.commit": base,
        "input_audio_buffer.clear": base,
        "response.create": {**base, "response": response},
        "response.cancel": {**base, "response_id": None},
        "conversation.item.create": {**base, "previous_item_id": None, "item": item},
        "conversation.item.truncate": {
            **base,
            "item_id": None,
            "content_index": None,
            "audio_end_ms": None,
        },
        "conversation.item.delete": {**base, "item_id": None},
        "conversation.item.retrieve": {**base, "item_id": None},
    }


CLIENT_EVENTS = {
    "ga": _events(GA_SESSION, GA_RESPONSE, ITEM_GA),
    "beta": _events(BETA_SESSION, BETA_RESPONSE, ITEM_BETA),
}


# --- errors ---------------------------------------------------------------------------------------


class Rejection(Exception):
    """A client event the live API would refuse; carries the error's code, message and param."""

    def __init__(
        self,
        code: str,
        message: str,
        param: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.param, self.type = code, message, param, type_


def unknown_parameter(value: Any, tree: Any, path: str) -> None:
    """Raise for the first key of ``value`` that ``tree`` does not know."""
    if tree is None:
        return
    if isinstance(tree, list):
        if isinstance(value, list):
            for item in value:
                unknown_parameter(item, tree[0], path)
        return
    if not isinstance(value, dict):
        return
    for key, sub in value.items():
        if key not in tree:
            dotted = f"{path}.{key}" if path else key
            raise Rejection("unknown_parameter", f"Unknown parameter: '{dotted}'.", dotted)
        unknown_parameter(sub, tree[key], f"{path}.{key}" if path else key)


def _shown(value: Any) -> str:
    """A value as the live API quotes it in a message: strings in quotes, the rest as JSON."""
    if isinstance(value, str):
        return f"'{value}'"
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _choices(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def _invalid(param: str, message: str) -> Rejection:
    return Rejection("invalid_value", message, param)


def _bad_value(param: str, value: Any, allowed: tuple[str, ...]) -> Rejection:
    """A value outside an enumeration, worded like the live API's ``invalid_value`` errors."""
    return _invalid(
        param, f"Invalid value: {_shown(value)}. Supported values are: {_choices(allowed)}."
    )


def _wrong_type(param: str, expected: str, value: Any) -> Rejection:
    got = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, int | float) else "null"
    )
    return Rejection(
        "invalid_type",
        f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
        param,
    )


def _missing(param: str) -> Rejection:
    return Rejection("missing_required_parameter", f"Missing required parameter: '{param}'.", param)


def _object(parent: dict[str, Any], key: str, param: str) -> dict[str, Any]:
    """``parent[key]`` as an object ({} when absent or null), else an ``invalid_type`` error."""
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _wrong_type(f"{param}.{key}", "an object", value)
    return value


# --- audio formats --------------------------------------------------------------------------------

Encoding = Literal["pcm16", "g711_ulaw", "g711_alaw"]
_GA_NAMES: dict[str, Encoding] = {
    "audio/pcm": "pcm16",
    "audio/pcmu": "g711_ulaw",
    "audio/pcma": "g711_alaw",
}
_BETA_NAMES: tuple[Encoding, ...] = ("pcm16", "g711_ulaw", "g711_alaw")
G711_RATE = 8000
MIN_PCM_RATE = 24000  # the report: audio/pcm requires rate >= 24000


@dataclass(frozen=True, slots=True)
class WireFormat:
    """One direction's audio on the wire: its encoding and sample rate.

    G.711 (mu-law, A-law) is one byte a sample at 8 kHz; PCM16 two bytes at the session's rate
    (always 24 kHz in the beta dialect). Durations of buffered or sent audio (commit sizes,
    ``audio_end_ms``, truncation bounds) follow from these two numbers.
    """

    encoding: Encoding
    rate: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "pcm16" else 1

    def ms(self, nbytes: int) -> float:
        """How long ``nbytes`` of this format play, in milliseconds."""
        return nbytes / self.bytes_per_sample / self.rate * 1000

    def nbytes(self, ms: int) -> int:
        """How many bytes ``ms`` milliseconds of this format take (whole samples)."""
        return self.rate * ms // 1000 * self.bytes_per_sample

    def ga(self) -> dict[str, Any]:
        """The format as the GA dialect echoes it: only ``audio/pcm`` carries a rate."""
        if self.encoding == "pcm16":
            return {"type": "audio/pcm", "rate": self.rate}
        return {"type": "audio/pcmu" if self.encoding == "g711_ulaw" else "audio/pcma"}

    def beta(self) -> str:
        """The format as the beta dialect names it."""
        return self.encoding


PCM_24K = WireFormat("pcm16", 24000)


def _pcm_rate(rate: Any, param: str) -> int:
    """An ``audio/pcm`` rate as an int: an integral number (``24000.0`` is 24000) >= 24000."""
    if rate is None:
        raise _missing(param)
    integral = isinstance(rate, int) or (isinstance(rate, float) and rate.is_integer())
    if isinstance(rate, bool) or not integral or rate < MIN_PCM_RATE:
        raise _invalid(
            param,
            f"Invalid '{param}': {rate!r}. audio/pcm requires an integer rate of at least "
            f"{MIN_PCM_RATE}.",
        )
    return int(rate)


def ga_format(fmt: Any, param: str) -> WireFormat:
    """A GA ``{type, rate}`` format object as a :class:`WireFormat`, or the live API's error.

    A ``rate`` beside ``audio/pcmu``/``audio/pcma`` is ignored: G.711 is always 8 kHz.
    """
    if not isinstance(fmt, dict):
        raise _wrong_type(param, "an object", fmt)
    kind = fmt.get("type")
    if not isinstance(kind, str) or kind not in _GA_NAMES:
        raise _bad_value(f"{param}.type", kind, tuple(_GA_NAMES))
    encoding = _GA_NAMES[kind]
    if encoding != "pcm16":
        return WireFormat(encoding, G711_RATE)
    return WireFormat(encoding, _pcm_rate(fmt.get("rate"), f"{param}.rate"))


def beta_format(name: Any, param: str) -> WireFormat:
    """A beta format name as a :class:`WireFormat`, or the live API's error."""
    if name not in _BETA_NAMES:
        raise _bad_value(param, name, _BETA_NAMES)
    return PCM_24K if name == "pcm16" else WireFormat(name, G711_RATE)


# --- values ---------------------------------------------------------------------------------------

_MODALITIES = ("text", "audio")
_TURN_TYPES = ("server_vad", "semantic_vad")


def _modality_list(value: Any, param: str) -> list[str]:
    if not isinstance(value, list):
        raise _wrong_type(param, "an array", value)
    for i, entry in enumerate(value):
        if entry not in _MODALITIES:
            raise _bad_value(f"{param}[{i}]", entry, _MODALITIES)
    return value


def _check_ga_modalities(value: Any, param: str) -> None:
    """GA: one modality, ``["audio"]`` (with a transcript) or ``["text"]``. The SDK's models
    say both together are not possible."""
    if value is None:
        return
    if _modality_list(value, param) not in (["audio"], ["text"]):
        raise _invalid(
            param,
            f"Invalid value: {_shown(value)}. Supported combinations are: ['text'] and ['audio'].",
        )


def _check_beta_modalities(value: Any, param: str) -> None:
    """Beta: ``["text"]`` or both; the report saw ``["audio"]`` refused."""
    if value is None:
        return
    if sorted(_modality_list(value, param)) not in (["text"], ["audio", "text"]):
        raise _invalid(
            param,
            f"Invalid modalities: {value!r}. Supported combinations are: "
            "['text'] and ['audio', 'text'].",
        )


def _check_turn_detection(parent: dict[str, Any], param: str, type_required: bool) -> None:
    """``turn_detection`` is null (off) or an object whose ``type`` names a VAD.

    The GA SDK marks ``type`` required; the beta one leaves it out (server VAD by default).
    """
    if "turn_detection" not in parent or parent["turn_detection"] is None:
        return
    td = _object(parent, "turn_detection", param)
    where = f"{param}.turn_detection.type"
    if "type" not in td:
        if type_required:
            raise _missing(where)
        return
    if td["type"] not in _TURN_TYPES:
        raise _bad_value(where, td["type"], _TURN_TYPES)


# --- sessions and responses -----------------------------------------------------------------------


def _transcription_session() -> Rejection:
    """This emulator serves realtime sessions only, and a session.update cannot turn one into a
    transcription session (that is another kind of session, opened as one)."""
    return _invalid(
        "session.type",
        "Invalid value: 'transcription'. A realtime session cannot be updated to a "
        "transcription session; session.type must be 'realtime'.",
    )


def _check_ga_session(session: dict[str, Any]) -> None:
    if session.get("type") == "transcription":  # before its keys: they are another session's
        raise _transcription_session()
    unknown_parameter(session, GA_SESSION, "session")
    if "type" not in session:
        raise _missing("session.type")
    if session["type"] != "realtime":
        raise _bad_value("session.type", session["type"], ("realtime", "transcription"))
    audio = _object(session, "audio", "session")
    for side in ("input", "output"):
        part = _object(audio, side, "session.audio")
        if "format" in part:
            ga_format(part["format"], f"session.audio.{side}.format")
    inp = _object(audio, "input", "session.audio")
    _check_turn_detection(inp, "session.audio.input", type_required=True)
    _object(inp, "transcription", "session.audio.input")
    _check_ga_modalities(session.get("output_modalities"), "session.output_modalities")


def _check_beta_session(session: dict[str, Any]) -> None:
    unknown_parameter(session, BETA_SESSION, "session")
    _check_beta_modalities(session.get("modalities"), "session.modalities")
    for key in ("input_audio_format", "output_audio_format"):
        if key in session:
            beta_format(session[key], f"session.{key}")
    _check_turn_detection(session, "session", type_required=False)
    _object(session, "input_audio_transcription", "session")


def _check_instructions(parent: dict[str, Any], param: str) -> None:
    if "instructions" in parent and not isinstance(parent["instructions"], str):
        raise _wrong_type(f"{param}.instructions", "a string", parent["instructions"])


def check_session(dialect: str, session: Any) -> None:
    """Raise :class:`Rejection` for a ``session.update`` session the live API would refuse."""
    if not isinstance(session, dict):
        raise _wrong_type("session", "an object", session)
    if dialect == "ga":
        _check_ga_session(session)
    else:
        _check_beta_session(session)
    _check_instructions(session, "session")


def check_response(dialect: str, response: Any) -> None:
    """Raise :class:`Rejection` for a ``response.create`` response the live API would refuse."""
    if response is None:
        return
    if not isinstance(response, dict):
        raise _wrong_type("response", "an object", response)
    if dialect == "ga":
        unknown_parameter(response, GA_RESPONSE, "response")
        output = _object(_object(response, "audio", "response"), "output", "response.audio")
        if "format" in output:
            ga_format(output["format"], "response.audio.output.format")
        _check_ga_modalities(response.get("output_modalities"), "response.output_modalities")
    else:
        unknown_parameter(response, BETA_RESPONSE, "response")
        _check_beta_modalities(response.get("modalities"), "response.modalities")
        if "output_audio_format" in response:
            beta_format(response["output_audio_format"], "response.output_audio_format")
    _check_instructions(response, "response")
