"""What the emulated Realtime API accepts, per dialect, as data (the dialect report's rules).

Each table is a tree of the keys a client event may carry: ``None`` for a leaf (any value), a
dict for an object, a one-element list for a list of objects. A key outside the tree is answered
like the live API: ``Unknown parameter: '<dotted.path>'.``. The report's specific rejections
follow the trees in :func:`check_session` and :func:`check_response`.

Built from the report and the official SDK's models, never from the gateway's own code.
"""

from __future__ import annotations

from typing import Any

Tree = dict[str, Any]

_TURN = {
    "type": None,
    "threshold": None,
    "prefix_padding_ms": None,
    "silence_duration_ms": None,
    "create_response": None,
    "interrupt_response": None,
    "idle_timeout_ms": None,
    "eagerness": None,
}
_TRANSCRIPTION = {"model": None, "language": None, "prompt": None}
_FORMAT = {"type": None, "rate": None}
_TOOLS = [None]
_CONTENT = [
    {
        "type": None,
        "text": None,
        "audio": None,
        "transcript": None,
        "id": None,
        "image_url": None,
        "detail": None,
    }
]
ITEM: Tree = {
    "id": None,
    "type": None,
    "object": None,
    "role": None,
    "status": None,
    "content": _CONTENT,
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
            "turn_detection": _TURN,
            "transcription": _TRANSCRIPTION,
            "noise_reduction": {"type": None},
        },
        "output": {"format": _FORMAT, "voice": None, "speed": None},
    },
    "tools": _TOOLS,
    "tool_choice": None,
    "max_output_tokens": None,
    "tracing": None,
    "truncation": None,
    "include": None,
    "prompt": None,
}
BETA_SESSION: Tree = {
    "model": None,
    "instructions": None,
    "modalities": None,
    "voice": None,
    "input_audio_format": None,
    "output_audio_format": None,
    "turn_detection": _TURN,
    "input_audio_transcription": _TRANSCRIPTION,
    "input_audio_noise_reduction": {"type": None},
    "tools": _TOOLS,
    "tool_choice": None,
    "temperature": None,
    "max_response_output_tokens": None,
    "speed": None,
    "tracing": None,
}
GA_RESPONSE: Tree = {
    "output_modalities": None,
    "instructions": None,
    "audio": {"output": {"format": _FORMAT, "voice": None}},
    "conversation": None,
    "input": [ITEM],
    "metadata": None,
    "max_output_tokens": None,
    "tool_choice": None,
    "tools": _TOOLS,
    "prompt": None,
}
BETA_RESPONSE: Tree = {
    "modalities": None,
    "instructions": None,
    "voice": None,
    "output_audio_format": None,
    "conversation": None,
    "input": [ITEM],
    "metadata": None,
    "max_response_output_tokens": None,
    "tool_choice": None,
    "tools": _TOOLS,
    "temperature": None,
}


def _events(session: Tree, response: Tree) -> dict[str, Tree]:
    base = {"type": None, "event_id": None}
    return {
        "session.update": {**base, "session": session},
        "input_audio_buffer.append": {**base, "audio": None},
        "input_audio_buffer.commit": base,
        "input_audio_buffer.clear": base,
        "response.create": {**base, "response": response},
        "response.cancel": {**base, "response_id": None},
        "conversation.item.create": {**base, "previous_item_id": None, "item": ITEM},
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
    "ga": _events(GA_SESSION, GA_RESPONSE),
    "beta": _events(BETA_SESSION, BETA_RESPONSE),
}


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


def _invalid(param: str, message: str) -> Rejection:
    return Rejection("invalid_value", message, param)


def _check_ga_format(fmt: Any, param: str) -> None:
    if not isinstance(fmt, dict):
        raise _invalid(param, f"Invalid type for '{param}': expected an object.")
    kind = fmt.get("type")
    if kind not in ("audio/pcm", "audio/pcmu", "audio/pcma"):
        raise _invalid(
            f"{param}.type",
            f"Invalid value: '{kind}'. Supported values are: "
            "'audio/pcm', 'audio/pcmu', and 'audio/pcma'.",
        )
    if kind == "audio/pcm":
        rate = fmt.get("rate")
        if rate is None:
            raise Rejection(
                "missing_required_parameter",
                f"Missing required parameter: '{param}.rate'.",
                f"{param}.rate",
            )
        if not isinstance(rate, int) or isinstance(rate, bool) or rate < 24000:
            raise _invalid(
                f"{param}.rate",
                f"Invalid '{param}.rate': {rate!r}. audio/pcm requires a rate of at least 24000.",
            )


def _check_modalities(value: Any, param: str) -> None:
    if value is None:
        return
    if not isinstance(value, list) or sorted(value) not in (["text"], ["audio", "text"]):
        raise _invalid(
            param,
            f"Invalid modalities: {value!r}. Supported combinations are: "
            "['text'] and ['audio', 'text'].",
        )


def check_session(dialect: str, session: Any) -> None:
    if not isinstance(session, dict):
        raise _invalid("session", "Invalid type for 'session': expected an object.")
    if dialect == "ga":
        unknown_parameter(session, GA_SESSION, "session")
        if "type" not in session:
            raise Rejection(
                "missing_required_parameter",
                "Missing required parameter: 'session.type'.",
                "session.type",
            )
        if session["type"] not in ("realtime", "transcription"):
            raise _invalid("session.type", f"Invalid value: '{session['type']}'.")
        audio = session.get("audio") or {}
        for side in ("input", "output"):
            part = audio.get(side) or {}
            if "format" in part:
                _check_ga_format(part["format"], f"session.audio.{side}.format")
        mods = session.get("output_modalities")
        if mods is not None and mods not in (["audio"], ["text"]):
            raise _invalid("session.output_modalities", f"Invalid output_modalities: {mods!r}.")
    else:
        unknown_parameter(session, BETA_SESSION, "session")
        _check_modalities(session.get("modalities"), "session.modalities")
        for key in ("input_audio_format", "output_audio_format"):
            if key in session and session[key] not in ("pcm16", "g711_ulaw", "g711_alaw"):
                raise _invalid(
                    f"session.{key}",
                    f"Invalid value: '{session[key]}'. Supported "
                    "values are: 'pcm16', 'g711_ulaw', and 'g711_alaw'.",
                )


def check_response(dialect: str, response: Any) -> None:
    if response is None:
        return
    if not isinstance(response, dict):
        raise _invalid("response", "Invalid type for 'response': expected an object.")
    if dialect == "ga":
        unknown_parameter(response, GA_RESPONSE, "response")
        fmt = ((response.get("audio") or {}).get("output") or {}).get("format")
        if fmt is not None:
            _check_ga_format(fmt, "response.audio.output.format")
    else:
        unknown_parameter(response, BETA_RESPONSE, "response")
        _check_modalities(response.get("modalities"), "response.modalities")
