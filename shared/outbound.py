"""Outbound calls: the TwiML that connects an answered call to the gateway, and Twilio's word on it.

Pure: no sockets, no clock. The console places a call through Twilio's REST API with
:func:`outbound_twiml` inline (no webhook round trip), marked ``direction=outbound`` so the
console lists it as such, and the per-call overrides as ``<Parameter>``s, which reach the worker
in ``start.customParameters``. Twilio's answering-machine detection runs asynchronously beside the
stream and posts its verdict to the edge (:func:`amd_result`); a machine gets
:func:`voicemail_twiml` (the stream ends, the message plays after the beep, Twilio hangs up).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal
from xml.sax.saxutils import escape

from shared.agent import E164_RE
from shared.resumption import RESUME_PARAMETER
from shared.stream_token import OUTBOUND_TTL_S, TOKEN_PARAMETER, mint
from shared.twilio_media import _XML_ILLEGAL, connect_stream_twiml

DIRECTION_PARAM: Final = "direction"
OUTBOUND: Final = "outbound"
AMD_PATH: Final = "/amd"
CALL_STATUS_PATH: Final = "/call-status"
# Twilio's word on a Media Stream (every stream's TwiML names it, inbound or outbound).
STREAM_STATUS_PATH: Final = "/stream-status"

# Twilio takes inline TwiML of at most 4000 characters, and the edge takes parameter values of at
# most 1024 (shared.twilio_media): refuse more here, with a clear message, rather than at Twilio.
MAX_TWIML_CHARS: Final = 4000
MAX_PARAMETER_CHARS: Final = 1024
MAX_PARAMETERS: Final = 20
# Names the gateway sets itself; a request's "parameters" may not override them.
RESERVED_PARAMETERS: Final = frozenset(
    {DIRECTION_PARAM, "From", "To", "CallSid", TOKEN_PARAMETER, RESUME_PARAMETER}
)

# AnsweredBy values with DetectMessageEnd: the machine_end_* ones come after the greeting's end.
MACHINE_ANSWERS: Final = frozenset({"machine_end_beep", "machine_end_silence", "machine_end_other"})
HUMAN_ANSWERS: Final = frozenset({"human"})
KNOWN_ANSWERS: Final = MACHINE_ANSWERS | HUMAN_ANSWERS | {"fax", "unknown", "machine_start"}

CALL_STATUSES: Final = frozenset(
    {
        "queued",
        "initiated",
        "ringing",
        "in-progress",
        "answered",
        "completed",
        "busy",
        "no-answer",
        "failed",
        "canceled",
    }
)
# A call that ends in one of these never reached anybody.
UNANSWERED_STATUSES: Final = frozenset({"busy", "no-answer", "failed", "canceled"})


class OutboundError(ValueError):
    """A request or a callback that cannot be used; the message says what is wrong."""


def valid_e164(number: str) -> bool:
    return bool(E164_RE.fullmatch(number))


def outbound_parameters(
    to: str,
    from_: str,
    *,
    instructions: str | None = None,
    greeting: str | None = None,
    voice: str | None = None,
    parameters: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The ``<Parameter>``s of an outbound call's stream; raises OutboundError."""
    params: dict[str, str] = {DIRECTION_PARAM: OUTBOUND, "From": from_, "To": to}
    extra = dict(parameters or {})
    if len(extra) > MAX_PARAMETERS:
        raise OutboundError(f"at most {MAX_PARAMETERS} parameters")
    for name, value in extra.items():
        if name in RESERVED_PARAMETERS or name in {"instructions", "greeting", "voice"}:
            raise OutboundError(f"parameter {name!r} is set by the gateway or its own field")
        if not name or len(name) > 64:
            raise OutboundError("a parameter name has 1 to 64 characters")
        params[name] = value
    for name, override in (
        ("instructions", instructions),
        ("greeting", greeting),
        ("voice", voice),
    ):
        if override is not None:
            params[name] = override
    for name, value in params.items():
        if len(value) > MAX_PARAMETER_CHARS:
            raise OutboundError(f"{name} is longer than {MAX_PARAMETER_CHARS} characters")
    return params


def outbound_twiml(
    media_url: str,
    status_callback: str,
    parameters: Mapping[str, str],
    token_key: bytes | None = None,
    now_s: int = 0,
) -> str:
    """TwiML connecting the answered call to ``media_url``, with the stream token that covers
    ``parameters`` when there is a ``token_key`` (:mod:`shared.stream_token`: the call has no
    CallSid yet, so the token is one the edge takes once, good for OUTBOUND_TTL_S from
    ``now_s``); raises OutboundError when it is longer than Twilio takes inline."""
    params = dict(parameters)
    if token_key is not None:
        params[TOKEN_PARAMETER] = mint(token_key, None, params, now_s, OUTBOUND_TTL_S)
    twiml = connect_stream_twiml(media_url, params, status_callback=status_callback)
    if len(twiml) > MAX_TWIML_CHARS:
        raise OutboundError(
            f"the call's TwiML would be {len(twiml)} characters; Twilio takes {MAX_TWIML_CHARS}: "
            "shorten instructions, greeting or parameters"
        )
    return twiml


def voicemail_twiml(message: str) -> str:
    """What an answering machine gets after its beep: the message, then the hang-up."""
    text = escape(_XML_ILLEGAL.sub("\ufffd", message.strip()))
    say = f"<Say>{text}</Say>" if text else ""
    return f'<?xml version="1.0" encoding="UTF-8"?><Response>{say}<Hangup/></Response>'


AmdAction = Literal["voicemail", "agent", "none"]


@dataclass(frozen=True, slots=True)
class AmdResult:
    call_sid: str
    answered_by: str
    action: AmdAction  # voicemail: leave the message and hang up; agent: nothing changes


def amd_result(form: Mapping[str, str]) -> AmdResult:
    """Twilio's asynchronous AMD callback (``AnsweredBy``, ``CallSid``); raises OutboundError."""
    call_sid = form.get("CallSid", "")
    answered_by = form.get("AnsweredBy", "")
    if not call_sid or len(call_sid) > 64 or not call_sid.isalnum():
        raise OutboundError(f"CallSid={call_sid[:40]!r} is not a CallSid")
    if answered_by not in KNOWN_ANSWERS:
        raise OutboundError(f"AnsweredBy={answered_by[:40]!r} is not one of Twilio's values")
    action: AmdAction = (
        "voicemail"
        if answered_by in MACHINE_ANSWERS
        else "agent"
        if answered_by in HUMAN_ANSWERS
        else "none"
    )
    return AmdResult(call_sid, answered_by, action)


@dataclass(frozen=True, slots=True)
class CallStatusUpdate:
    call_sid: str
    status: str  # one of CALL_STATUSES


def call_status(form: Mapping[str, str]) -> CallStatusUpdate:
    """Twilio's call status callback (``CallStatus``, ``CallSid``); raises OutboundError."""
    call_sid = form.get("CallSid", "")
    status = form.get("CallStatus", "")
    if not call_sid or len(call_sid) > 64 or not call_sid.isalnum():
        raise OutboundError(f"CallSid={call_sid[:40]!r} is not a CallSid")
    if status not in CALL_STATUSES:
        raise OutboundError(f"CallStatus={status[:40]!r} is not one of Twilio's values")
    return CallStatusUpdate(call_sid, status)
