"""Twilio Media Streams, as the edge sees one bidirectional stream: a sans-I/O session core.

:class:`TwilioMediaSession` takes each WebSocket message Twilio sends and returns typed events.
It raises only :class:`TwilioProtocolError` (one of three kinds, each with a short ``reason`` fit
for a metric label, listed in :data:`REASONS`) and stays usable afterwards: a shell counts the
rejection and goes on. It checks what a careful server must: text frames holding JSON objects,
numbers that arrive as strings, ``streamSid`` matching the stream, media only between ``start``
and ``stop``, strict base64 of a bounded payload, and the mu-law 8 kHz mono format the gateway
is built for. Gaps in ``sequenceNumber`` are counted, not raised: a lost message is not a reason
to drop the ones that did arrive.

The ``media`` path runs 50 times a second per call: one ``json.loads``, dictionary look-ups and
one strict ``binascii.a2b_base64``; no pydantic, no regular expressions. The outbound builders
sit on the reply's hot path: one f-string each, base64 from :mod:`binascii`, no ``json.dumps``
of audio.
"""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

from twilio.request_validator import (
    RequestValidator,
    get_signature_algorithm,
)

MAX_PAYLOAD_BYTES: Final = 1600  # 200 ms of mu-law; Twilio sends 160 (20 ms)
MAX_MARK_NAME: Final = 256  # ours are "<item_id>:<end_ms>", a few dozen characters
MAX_CUSTOM_PARAMETERS: Final = 32
_MAX_PAYLOAD_B64: Final = (MAX_PAYLOAD_BYTES + 2) // 3 * 4
_MAX_NUMBER: Final = 10**18
_DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
# SIDs are echoed unescaped into every outbound message, and name Redis keys: plain tokens only.
_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Characters XML 1.0 cannot carry at all, not even escaped.
_XML_ILLEGAL: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

REASONS: Final = frozenset(
    {
        "binary_frame",
        "not_json",
        "bad_shape",
        "unknown_event",
        "bad_base64",
        "bad_payload_size",
        "bad_encoding",
        "media_before_start",
        "before_start",
        "duplicate_start",
        "out_of_order",
        "after_stop",
        "stream_sid_mismatch",
        "bad_stream_event",
    }
)
"""Every ``TwilioProtocolError.reason``: a closed set, safe as a metric label."""


class TwilioProtocolError(ValueError):
    """A message Twilio should not have sent, or not in this state; ``reason`` is in REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail[:160]}" if detail else reason)
        self.reason = reason


class MalformedMessage(TwilioProtocolError):
    """The message itself is wrong (framing, JSON, shape, audio): drop it, keep the stream."""


class OutOfOrder(TwilioProtocolError):
    """A well-formed message the stream's state does not allow (media before start, after stop)."""


class StreamMismatch(TwilioProtocolError):
    """A message naming another stream: never let it touch this call."""


def _show(value: object, limit: int = 60) -> str:
    """A bounded repr of an offending value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamConnected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class StreamStarted:
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    custom_parameters: dict[str, str]  # the TwiML's <Parameter>s, name -> value
    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class InboundMedia:
    payload: bytes  # mu-law 8 kHz, decoded from base64 (normally 160 bytes = 20 ms)
    sequence: int
    chunk: int
    timestamp_ms: int  # since the stream started, on Twilio's clock
    track: str


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    digit: str
    sequence: int


@dataclass(frozen=True, slots=True)
class MarkReturned:
    """Twilio played everything sent before this mark (or a ``clear`` discarded it)."""

    name: str
    sequence: int


@dataclass(frozen=True, slots=True)
class StreamStopped:
    sequence: int


Event = StreamConnected | StreamStarted | InboundMedia | DtmfReceived | MarkReturned | StreamStopped


class StreamState(StrEnum):
    NEW = "new"
    STARTED = "started"
    STOPPED = "stopped"


# --- field checks -------------------------------------------------------------------------------


def _number(value: Any, what: str) -> int:
    """A non-negative integer sent as a decimal string (Twilio's way) or, tolerated, a number."""
    if type(value) is str:
        # isascii: str.isdigit() is also true for "²" and other digits int() refuses or misreads.
        if value.isascii() and value.isdigit() and len(value) <= 18:
            return int(value)
    elif type(value) is int and 0 <= value < _MAX_NUMBER:
        return value
    raise MalformedMessage("bad_shape", f"{what}={_show(value)}")


def _text(value: Any, what: str, limit: int) -> str:
    if type(value) is not str or len(value) > limit:
        raise MalformedMessage("bad_shape", f"{what}={_show(value)}")
    return value


def _token(value: Any, what: str) -> str:
    if type(value) is not str or not _TOKEN.fullmatch(value):
        raise MalformedMessage("bad_shape", f"{what}={_show(value)}")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise MalformedMessage("bad_shape", f"{what} is not an object: {_show(value)}")
    return value


# --- the session --------------------------------------------------------------------------------


@dataclass(slots=True)
class TwilioMediaSession:
    """One Media Stream's state machine: ``new`` -> ``started`` -> ``stopped``.

    Counters for the shell's metrics: ``frames_in`` (media accepted), ``sequence_gaps`` (times
    ``sequenceNumber`` did not follow the previous one: a skip or a step back), ``rejected``
    (messages refused with :class:`TwilioProtocolError`), ``start_refused`` (the stream's
    start was refused, so it will never carry audio: the shell hangs up). The sequence number of
    every message of this stream is noted, even when its body is then refused, so that a refused
    message does not also show up as a gap.
    """

    state: StreamState = StreamState.NEW
    stream_sid: str = ""
    call_sid: str = ""
    account_sid: str = ""
    connected: bool = False
    last_sequence: int = 0
    frames_in: int = 0
    sequence_gaps: int = 0
    rejected: int = 0
    start_refused: bool = False  # the start was refused: the stream can carry nothing

    def receive(self, message: str | bytes) -> list[Event]:
        """The events one WebSocket message from Twilio carries; raises TwilioProtocolError."""
        try:
            return self._receive(message)
        except TwilioProtocolError:
            self.rejected += 1
            raise

    def _receive(self, message: str | bytes) -> list[Event]:
        if self.state is StreamState.STOPPED:
            raise OutOfOrder("after_stop", _show(message))
        if not isinstance(message, str):
            size = len(message) if isinstance(message, bytes | bytearray | memoryview) else "?"
            raise MalformedMessage("binary_frame", f"{size} bytes of {type(message).__name__}")
        try:
            data = json.loads(message)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
            raise MalformedMessage("not_json", _show(message)) from None
        if type(data) is not dict:
            raise MalformedMessage("bad_shape", f"not a JSON object: {_show(message)}")
        event = data.get("event")
        if event == "media":  # the hot path first
            return [self._media(data)]
        if event == "start":
            try:
                return [self._start(data)]
            except (MalformedMessage, StreamMismatch):
                # A stream whose start cannot be taken will never carry audio we can use.
                self.start_refused = self.state is StreamState.NEW
                raise
        if event == "connected":
            return [self._connected(data)]
        if event == "mark":
            mark = _object(self._ours(data, "mark").get("mark"), "mark")
            name = _text(mark.get("name"), "mark.name", MAX_MARK_NAME)
            return [MarkReturned(name, self.last_sequence)]
        if event == "dtmf":
            dtmf = _object(self._ours(data, "dtmf").get("dtmf"), "dtmf")
            digit = dtmf.get("digit")
            if type(digit) is not str or digit not in _DTMF_DIGITS:
                raise MalformedMessage("bad_shape", f"dtmf.digit={_show(digit)}")
            return [DtmfReceived(digit, self.last_sequence)]
        if event == "stop":
            self._ours(data, "stop")
            self.state = StreamState.STOPPED
            return [StreamStopped(self.last_sequence)]
        raise MalformedMessage("unknown_event", f"event={_show(event)}")

    def _ours(self, data: dict[str, Any], event: str) -> dict[str, Any]:
        """Check a mid-stream message belongs to this started stream; note its sequence."""
        if self.state is not StreamState.STARTED:
            raise OutOfOrder("media_before_start" if event == "media" else "before_start", event)
        sid = data.get("streamSid")
        if sid != self.stream_sid:
            raise StreamMismatch("stream_sid_mismatch", f"{event} for streamSid={_show(sid)}")
        sequence = _number(data.get("sequenceNumber"), "sequenceNumber")
        if sequence != self.last_sequence + 1:
            self.sequence_gaps += 1
        self.last_sequence = sequence
        return data

    def _media(self, data: dict[str, Any]) -> InboundMedia:
        self._ours(data, "media")
        media = data.get("media")
        if type(media) is not dict:
            raise MalformedMessage("bad_shape", f"media is not an object: {_show(media)}")
        payload = media.get("payload")
        if type(payload) is not str:
            raise MalformedMessage("bad_shape", f"media.payload={_show(payload)}")
        if not payload or len(payload) > _MAX_PAYLOAD_B64:
            raise MalformedMessage("bad_payload_size", f"{len(payload)} base64 characters")
        try:
            audio = binascii.a2b_base64(payload, strict_mode=True)
        except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
            raise MalformedMessage("bad_base64", _show(payload)) from None
        if not 0 < len(audio) <= MAX_PAYLOAD_BYTES:
            raise MalformedMessage("bad_payload_size", f"{len(audio)} bytes")
        # With <Connect><Stream> Twilio sends the caller's track only; anything else must not be
        # taken for the caller's voice.
        track = media.get("track", "inbound")
        if track != "inbound":
            raise MalformedMessage("bad_shape", f"media.track={_show(track)}")
        chunk = _number(media.get("chunk"), "media.chunk")
        timestamp = _number(media.get("timestamp"), "media.timestamp")
        self.frames_in += 1
        return InboundMedia(audio, self.last_sequence, chunk, timestamp, "inbound")

    def _connected(self, data: dict[str, Any]) -> StreamConnected:
        if self.connected or self.state is not StreamState.NEW:
            raise OutOfOrder("out_of_order", f"connected in state {self.state.value}")
        protocol = _text(data.get("protocol", ""), "protocol", 32)
        version = _text(data.get("version", ""), "version", 32)
        self.connected = True
        return StreamConnected(protocol, version)

    def _start(self, data: dict[str, Any]) -> StreamStarted:
        if self.state is not StreamState.NEW:
            raise OutOfOrder("duplicate_start", f"start in state {self.state.value}")
        sequence = _number(data.get("sequenceNumber"), "sequenceNumber")
        start = _object(data.get("start"), "start")
        stream_sid = _token(start.get("streamSid"), "start.streamSid")
        outer_sid = data.get("streamSid", stream_sid)
        if outer_sid != stream_sid:
            raise StreamMismatch("stream_sid_mismatch", f"{_show(outer_sid)} != {stream_sid}")
        call_sid = _token(start.get("callSid"), "start.callSid")
        account_sid = _text(start.get("accountSid", ""), "start.accountSid", 64)
        fmt = _object(start.get("mediaFormat"), "start.mediaFormat")
        encoding = _text(fmt.get("encoding"), "mediaFormat.encoding", 64)
        rate = _number(fmt.get("sampleRate"), "mediaFormat.sampleRate")
        channels = _number(fmt.get("channels", 1), "mediaFormat.channels")
        if (encoding, rate, channels) != ("audio/x-mulaw", 8000, 1):
            raise MalformedMessage("bad_encoding", f"{_show(encoding)} {rate} Hz x{channels}")
        tracks = start.get("tracks", ["inbound"])
        if (
            type(tracks) is not list
            or not all(type(t) is str and len(t) <= 32 for t in tracks)
            or "inbound" not in tracks
        ):
            raise MalformedMessage("bad_shape", f"start.tracks={_show(tracks)}")
        params = _object(start.get("customParameters", {}), "start.customParameters")
        if len(params) > MAX_CUSTOM_PARAMETERS or not all(
            type(v) is str and len(k) <= 64 and len(v) <= 1024 for k, v in params.items()
        ):
            raise MalformedMessage("bad_shape", f"start.customParameters={_show(params)}")
        self.state = StreamState.STARTED
        self.stream_sid, self.call_sid, self.account_sid = stream_sid, call_sid, account_sid
        self.last_sequence = sequence
        return StreamStarted(
            stream_sid, call_sid, account_sid, tuple(tracks), dict(params), encoding, rate, channels
        )


# --- outbound -----------------------------------------------------------------------------------
# ``stream_sid`` goes in unescaped: pass the one from StreamStarted, which is a checked token.


def media_message(stream_sid: str, pcmu: bytes) -> str:
    """A ``media`` message carrying mu-law 8 kHz audio for Twilio to play (no header)."""
    payload = binascii.b2a_base64(pcmu, newline=False).decode("ascii")
    return f'{{"event":"media","streamSid":"{stream_sid}","media":{{"payload":"{payload}"}}}}'


def mark_message(stream_sid: str, name: str) -> str:
    """A ``mark`` Twilio returns once the audio sent before it has played.

    A name longer than MAX_MARK_NAME is cut to it, and comes back cut.
    """
    quoted = json.dumps(name[:MAX_MARK_NAME])  # escaped, ASCII-only
    return f'{{"event":"mark","streamSid":"{stream_sid}","mark":{{"name":{quoted}}}}}'


def clear_message(stream_sid: str) -> str:
    """A ``clear``: Twilio drops the audio not yet played and returns the pending marks."""
    return f'{{"event":"clear","streamSid":"{stream_sid}"}}'


def _xml_text(value: str) -> str:
    # Control characters cannot appear in XML even as references; a caller's From/To arrive from
    # an HTTP form, so replace them rather than fail the webhook.
    return quoteattr(_XML_ILLEGAL.sub("\ufffd", value))


_XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>'


def _xml_body(value: str) -> str:
    return escape(_XML_ILLEGAL.sub("\ufffd", value))


def connect_stream_twiml(
    stream_url: str,
    parameters: dict[str, str],
    status_callback: str | None = None,
    action: str | None = None,
) -> str:
    """TwiML connecting the call to a bidirectional Media Stream, passing ``parameters``.

    Twilio gives the ``<Parameter>``s back in ``start.customParameters``; the ``url`` itself
    must carry no query string (Twilio does not pass one on), so this raises ValueError for one,
    as for a URL that is not ``ws://``/``wss://``. ``status_callback``: where Twilio POSTs the
    stream's events (:func:`stream_status`), the only word the edge gets of a stream that never
    reached it (a failed handshake). ``action``: the URL Twilio requests when the stream ends
    (``<Connect action>``), whose answer (:func:`after_stream_twiml`) says what happens to the
    caller next.
    """
    parts = urlsplit(stream_url)
    if parts.scheme not in ("wss", "ws") or not parts.hostname:
        raise ValueError(f"stream URL must be wss:// (or ws://) with a host: {_show(stream_url)}")
    if parts.query or parts.fragment:
        raise ValueError(f"stream URL must not carry a query string: {_show(stream_url)}")
    params = "".join(
        f"<Parameter name={_xml_text(name)} value={_xml_text(value)}/>"
        for name, value in parameters.items()
    )
    callback = (
        f' statusCallback={_xml_text(status_callback)} statusCallbackMethod="POST"'
        if status_callback
        else ""
    )
    connect = f' action={_xml_text(action)} method="POST"' if action else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Connect{connect}><Stream url={_xml_text(stream_url)}{callback}>{params}"
        "</Stream></Connect></Response>"
    )


def after_stream_twiml(disposition: str, transfer_to: str = "", caller_id: str = "") -> str:
    """What Twilio does once a call's stream has ended (the ``<Connect action>`` answer).

    ``transfer``: dial ``transfer_to`` (an E.164 number, or a ``sip:`` URI), showing the number
    the caller dialled (``caller_id``) to the person who answers. Anything else (``hang_up``, a
    stream the caller or a fault ended): hang up; a caller who hung up is gone already.
    """
    if disposition == "transfer" and transfer_to:
        shown = f" callerId={_xml_text(caller_id)}" if caller_id else ""
        target = (
            f"<Sip>{_xml_body(transfer_to)}</Sip>"
            if transfer_to.startswith(("sip:", "sips:"))
            else f"<Number>{_xml_body(transfer_to)}</Number>"
        )
        return f"{_XML_HEAD}<Response><Dial{shown}>{target}</Dial></Response>"
    return f"{_XML_HEAD}<Response><Hangup/></Response>"


STREAM_EVENTS: Final = frozenset({"stream-started", "stream-stopped", "stream-error"})


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """One of Twilio's Media Stream status callbacks (``StreamEvent`` and its sids)."""

    event: str  # one of STREAM_EVENTS: a safe metric label
    call_sid: str
    stream_sid: str
    error: str  # ``StreamError``, for stream-error (bounded)


def stream_status(form: dict[str, str]) -> StreamStatus:
    """The status callback a form carries; raises MalformedMessage for anything else."""
    event = form.get("StreamEvent", "")
    if event not in STREAM_EVENTS:
        raise MalformedMessage("bad_stream_event", f"StreamEvent={_show(event)}")
    call_sid = _token(form.get("CallSid"), "CallSid")
    stream_sid = _token(form.get("StreamSid"), "StreamSid")
    return StreamStatus(event, call_sid, stream_sid, form.get("StreamError", "")[:500])


# --- request signatures ----------------------------------------------------------------------

# A Host header a URL may be built from: a name or address, and a port.
_HOST_RE = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")


def public_base_url(public_url: str, host: str | None, forwarded_proto: str | None) -> str | None:
    """The edge's base URL as Twilio used it, which is what it signed: ``PUBLIC_URL`` when set,
    else the request's Host with the scheme a TLS-terminating proxy reports. ``None`` when the
    Host (missing, repeated, or not a host name) cannot say."""
    if public_url:
        return public_url
    if host is None or not _HOST_RE.fullmatch(host):
        return None
    proto = (forwarded_proto or "").split(",")[0].strip().lower()
    return f"{'https' if proto == 'https' else 'http'}://{host}"


SIGNATURE_SETTINGS_HEADER: Final = "X-Twilio-Webhooks-Signature-Settings"


class TwilioSignatures:
    """Which secret and algorithm verify a request Twilio signed.

    Twilio signs with the account's Auth Token (HMAC-SHA1) unless a Webhook Rule matches the URL:
    then it signs with that rule's SharedKey and names the key and algorithm in
    ``X-Twilio-Webhooks-Signature-Settings``. The signed string is the same either way (the URL,
    then the sorted POST parameters), so the ``twilio`` package's ``RequestValidator`` checks
    both; only the secret and the hash differ.
    """

    def __init__(self, auth_token: str | None, shared_key_secret: str | None) -> None:
        self._token = RequestValidator(auth_token) if auth_token else None
        self._shared = RequestValidator(shared_key_secret) if shared_key_secret else None

    @property
    def enabled(self) -> bool:
        return self._token is not None or self._shared is not None

    def refusal(
        self, url: str, params: Any, signature: str | None, settings_header: str | None
    ) -> str | None:
        """Why the request is refused (a metric label), or ``None`` when it verifies (or no
        secret is configured). ``params`` may keep repeated names (``getlist``)."""
        if not self.enabled:
            return None
        if not signature:
            return "missing_signature"
        if settings_header:
            if self._shared is None:
                return "shared_key_not_configured"
            validator, algorithm = self._shared, get_signature_algorithm(settings_header)
        else:
            if self._token is None:
                return "auth_token_not_configured"
            validator, algorithm = self._token, None
        return None if validator.validate(url, params, signature, algorithm) else "bad_signature"
