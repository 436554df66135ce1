"""What the Live API (``/v1/live/sessions``) accepts, as the emulator enforces it.

Every client event is parsed with the official types (``openai.types.live.ClientEvent``); a key
the types do not know is refused as the live API refuses it (``unknown_parameter``), found by
walking ``model_extra`` through the parsed tree. On top of the types: the event order (nothing
before ``session.start``, one ``session.start``), G.711's 8000 Hz, the immutable startup fields
that a ``session.update`` may not touch, the delegation type that may not change, and the 128
messages of startup history. Errors are :class:`~sim.realtime_rules.Rejection` values, sent as a
Live ``error`` event. The codes the Live docs name (``unknown_parameter``) are used as named; the
others follow the Realtime API's (``missing_required_parameter``, ``invalid_value``,
``invalid_type``) or are this emulator's own where the docs name none (see docs/emulator.md).
"""

from __future__ import annotations

import json
from typing import Any, get_args

from openai.types.live import ClientEvent, ServerEvent
from pydantic import BaseModel, TypeAdapter, ValidationError

from sim.realtime_rules import Rejection, WireFormat

CLIENT_EVENT: TypeAdapter[Any] = TypeAdapter(ClientEvent)
SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(ServerEvent)
# Each client event type's model: validating against the one the client named gives errors
# about what it sent, not about every other member of the union.
_MEMBERS: dict[str, type[BaseModel]] = {
    member.model_fields["type"].annotation.__args__[0]: member
    for member in get_args(get_args(ClientEvent)[0])
}

# Server event types whose model has an event_id (session.output_audio.delta has none).
WITH_EVENT_ID = {
    member.model_fields["type"].annotation.__args__[0]
    for member in get_args(get_args(ServerEvent)[0])
    if "event_id" in member.model_fields
}
MAX_INPUT_MESSAGES = 128
# Startup fields that session.update may not change (SessionUpdateConfig carries none of them).
IMMUTABLE = ("model", "instructions", "audio", "input", "client", "store", "safety_identifier")
BETA_DISABLED_MESSAGE = (
    "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
)


def parse_client_event(raw: str | bytes) -> tuple[dict[str, Any], BaseModel]:
    """The event as JSON and as the official model; Rejection for anything the types refuse."""
    try:
        event = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        event = None
    return event, validate_client_event(event)


def validate_client_event(event: Any) -> BaseModel:
    """A decoded client event (None: it was not JSON) as the official model, or Rejection."""
    if event is None:
        raise Rejection("invalid_json", "The server could not parse the event: invalid JSON.")
    if not isinstance(event, dict):
        raise Rejection("invalid_json", "The event must be a JSON object.")
    member = _MEMBERS.get(event.get("type"))  # type: ignore[arg-type]
    if member is None:
        raise Rejection(
            "invalid_value",
            f"Invalid value: '{event.get('type')}'. The event type is not supported.",
            "type",
        )
    if event["type"] == "session.update" and isinstance(event.get("session"), dict):
        check_immutable(event["session"])
    try:
        model = member.model_validate(event)
    except ValidationError as exc:
        raise _rejection(exc) from None
    extra = first_extra(model, "")
    if extra is not None:
        raise Rejection("unknown_parameter", f"Unknown parameter: '{extra}'.", extra)
    return model


def first_extra(value: Any, path: str) -> str | None:
    """The dotted path of the first key the types kept in ``model_extra``, or None."""
    if isinstance(value, BaseModel):
        for key in value.model_extra or {}:
            return f"{path}.{key}" if path else key
        for name in type(value).model_fields:
            found = first_extra(getattr(value, name), f"{path}.{name}" if path else name)
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = first_extra(item, f"{path}[{i}]")
            if found:
                return found
    return None


def _is_member(part: str) -> bool:
    # pydantic names the union member it tried (AudioPCM, ...); the wire path does not.
    return part[:1].isupper() or part.startswith(("function-", "tagged-union"))


def _rejection(exc: ValidationError) -> Rejection:
    errors = exc.errors()
    # In a union, the members whose own ``type`` did not match are not what the client meant.
    wrong = {
        tuple(e["loc"][:-1])
        for e in errors
        if e["loc"] and e["loc"][-1] == "type" and e["type"] == "literal_error"
    }
    meant = [
        e
        for e in errors
        if not any(tuple(e["loc"][: len(w)]) == w and _is_member(str(w[-1])) for w in wrong if w)
    ]
    # None meant: the client named a ``type`` no member has; that is the error.
    error = meant[0] if meant else next(e for e in errors if e["loc"][-1:] == ("type",))
    param = (
        "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}"
            for p in error["loc"]
            if isinstance(p, int) or not _is_member(p)
        ).lstrip(".")
        or None
    )
    kind = error["type"]
    if kind == "missing" or kind == "union_tag_not_found":
        return Rejection(
            "missing_required_parameter", f"Missing required parameter: '{param}'.", param
        )
    if kind in ("literal_error", "union_tag_invalid", "enum"):
        return Rejection("invalid_value", f"Invalid value for '{param}': {error['msg']}.", param)
    return Rejection("invalid_type", f"Invalid type for '{param}': {error['msg']}.", param)


def audio_format(session: dict[str, Any]) -> WireFormat:
    """The session's audio format (both directions), checked beyond the types: G.711 is 8 kHz.
    None given: PCM16 at 24 kHz, the Live API's default."""
    fmt = (session.get("audio") or {}).get("format")
    if fmt is None:
        return WireFormat("pcm16", 24000)
    if fmt["type"] == "audio/pcm":
        return WireFormat("pcm16", int(fmt["rate"]))
    if fmt["rate"] != 8000:
        raise Rejection(
            "invalid_value",
            f"Invalid 'session.audio.format.rate': {fmt['rate']}. {fmt['type']} is 8000 Hz.",
            "session.audio.format.rate",
        )
    return WireFormat("g711_ulaw" if fmt["type"] == "audio/pcmu" else "g711_alaw", 8000)


def check_start(session: dict[str, Any]) -> None:
    """What session.start's types allow but the API refuses: too much history, a history
    message that is not one text part, a G.711 rate other than 8000."""
    history = session.get("input") or []
    if len(history) > MAX_INPUT_MESSAGES:
        raise Rejection(
            "invalid_value",
            f"Invalid 'session.input': {len(history)} messages; at most "
            f"{MAX_INPUT_MESSAGES} are supported.",
            "session.input",
        )
    for i, message in enumerate(history):
        if len(message.get("content") or []) != 1:
            raise Rejection(
                "invalid_value",
                f"Invalid 'session.input[{i}].content': supply exactly one text part.",
                f"session.input[{i}].content",
            )
    audio_format(session)


def check_immutable(raw_session: dict[str, Any]) -> None:
    """A session.update's raw ``session`` may not name a startup field. Checked before the
    types, so that such a field gets its own error rather than "unknown parameter" (the update
    types do not carry them at all)."""
    for name in IMMUTABLE:
        if name in raw_session:
            raise Rejection(
                "immutable_parameter",
                f"Cannot update 'session.{name}': it is fixed when the session starts.",
                f"session.{name}",
            )


def check_delegation_update(raw_session: dict[str, Any], delegation_type: str | None) -> None:
    """The delegation type may not change (None: the client's, as null selects)."""
    if "delegation" in raw_session:
        new = (raw_session["delegation"] or {}).get("type", "client")
        if new != (delegation_type or "client"):
            raise Rejection(
                "invalid_value",
                f"Invalid 'session.delegation.type': '{new}'. The delegation type cannot "
                f"change (the session delegates to '{delegation_type or 'client'}').",
                "session.delegation.type",
            )


def declared_functions(delegation: dict[str, Any] | None) -> set[str]:
    """The function tools a Responses delegation declares (none for the others)."""
    if not delegation or delegation.get("type") != "responses":
        return set()
    tools = (delegation.get("responses") or {}).get("tools") or []
    return {t["name"] for t in tools if isinstance(t, dict) and t.get("type") == "function"}
