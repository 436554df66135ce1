"""Twilio Media Streams, as the edge sees one bidirectional stream: a sans-I/O session core.

:class:`TwilioMediaSession` takes each WebSocket message Twilio sends and returns typed events,
raising only :class:`TwilioProtocolError` (with a short ``reason`` for the rejection counter).
It checks what a careful server must: JSON objects only, numbers that arrive as strings,
``streamSid`` matching the stream, media only between ``start`` and ``stop``, strict base64 of a
bounded payload, and the mu-law 8 kHz mono format the gateway is built for.

The outbound builders sit on the hot path (a reply chunk every few tens of milliseconds per
call): one f-string each, with base64 from :mod:`binascii`, no ``json.dumps`` of media.
"""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

MAX_PAYLOAD_BYTES = 1600  # 200 ms; Twilio sends 160 (20 ms)
MAX_MARK_NAME = 256
_DTMF_DIGITS = set("0123456789*#ABCD")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class TwilioProtocolError(ValueError):
    """A message Twilio should not have sent (or not in this state)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail[:120]}" if detail else reason)
        self.reason = reason


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
    custom_parameters: dict[str, str]
    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class InboundMedia:
    payload: bytes  # mu-law, decoded from base64
    sequence: int
    chunk: int
    timestamp_ms: int
    track: str


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    digit: str
    sequence: int


@dataclass(frozen=True, slots=True)
class MarkPlayed:
    name: str
    sequence: int


@dataclass(frozen=True, slots=True)
class StreamStopped:
    sequence: int


Event = StreamConnected | StreamStarted | InboundMedia | DtmfReceived | MarkPlayed | StreamStopped


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise TwilioProtocolError("bad_shape", f"{what}={value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 19:
        return int(value)
    raise TwilioProtocolError("bad_shape", f"{what}={value!r}")


def _as_str(value: Any, what: str, limit: int = 128) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise TwilioProtocolError("bad_shape", f"{what}={str(value)[:60]!r}")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TwilioProtocolError("bad_shape", f"{what} is not an object")
    return value


@dataclass
class TwilioMediaSession:
    """One Media Stream's state: ``new`` -> ``started`` -> ``stopped``."""

    state: str = "new"
    stream_sid: str = ""
    call_sid: str = ""
    frames_in: int = 0
    sequence_gaps: int = 0
    rejected: int = 0
    last_sequence: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def receive(self, message: str | bytes) -> list[Event]:
        try:
            return self._receive(message)
        except TwilioProtocolError:
            self.rejected += 1
            raise

    def _receive(self, message: str | bytes) -> list[Event]:
        if isinstance(message, bytes | bytearray | memoryview):
            raise TwilioProtocolError("binary_frame", f"{len(message)} bytes")
        try:
            data = json.loads(message)
        except ValueError:
            raise TwilioProtocolError("not_json", message[:60]) from None
        if not isinstance(data, dict):
            raise TwilioProtocolError("bad_shape", "message is not a JSON object")
        event = data.get("event")
        if self.state == "stopped":
            raise TwilioProtocolError("after_stop", str(event))
        if "sequenceNumber" in data:
            self._sequence(_as_int(data["sequenceNumber"], "sequenceNumber"))
        if event == "media":
            return [self._media(data)]
        if event == "connected":
            return [StreamConnected(str(data.get("protocol", "")), str(data.get("version", "")))]
        if event == "start":
            return [self._start(data)]
        if event in ("mark", "dtmf", "stop"):
            self._check_started(data, str(event))
            seq = self.last_sequence
            if event == "mark":
                mark = _object(data.get("mark"), "mark")
                return [MarkPlayed(_as_str(mark.get("name"), "mark.name", MAX_MARK_NAME), seq)]
            if event == "dtmf":
                dtmf = _object(data.get("dtmf"), "dtmf")
                digit = _as_str(dtmf.get("digit"), "dtmf.digit", 1)
                if digit not in _DTMF_DIGITS:
                    raise TwilioProtocolError("bad_shape", f"dtmf.digit={digit!r}")
                return [DtmfReceived(digit, seq)]
            self.state = "stopped"
            return [StreamStopped(seq)]
        raise TwilioProtocolError("unknown_event", repr(event)[:60])

    def _sequence(self, sequence: int) -> None:
        if self.last_sequence and sequence != self.last_sequence + 1:
            self.sequence_gaps += 1
        self.last_sequence = sequence

    def _check_started(self, data: dict[str, Any], event: str) -> None:
        if self.state != "started":
            raise TwilioProtocolError(
                f"{event}_before_start" if event == "media" else "before_start", event
            )
        sid = data.get("streamSid")
        if sid != self.stream_sid:
            raise TwilioProtocolError("stream_sid_mismatch", repr(sid)[:60])

    def _media(self, data: dict[str, Any]) -> InboundMedia:
        if self.state != "started":
            raise TwilioProtocolError("media_before_start")
        if data.get("streamSid") != self.stream_sid:
            raise TwilioProtocolError("stream_sid_mismatch", repr(data.get("streamSid"))[:60])
        media = data.get("media")
        if not isinstance(media, dict):
            raise TwilioProtocolError("bad_shape", "media is not an object")
        payload = media.get("payload")
        if not isinstance(payload, str) or not payload:
            raise TwilioProtocolError("bad_base64", "missing payload")
        if len(payload) > MAX_PAYLOAD_BYTES * 4 // 3 + 4:
            raise TwilioProtocolError("bad_payload_size", f"{len(payload)} base64 chars")
        try:
            audio = binascii.a2b_base64(payload, strict_mode=True)
        except (binascii.Error, ValueError):
            raise TwilioProtocolError("bad_base64", payload[:40]) from None
        if not audio:
            raise TwilioProtocolError("bad_payload_size", "0 bytes")
        track = media.get("track", "inbound")
        if track not in ("inbound", "inbound_track"):
            raise TwilioProtocolError("bad_shape", f"media.track={str(track)[:30]!r}")
        self.frames_in += 1
        return InboundMedia(
            audio,
            self.last_sequence,
            _as_int(media.get("chunk", "0"), "media.chunk"),
            _as_int(media.get("timestamp", "0"), "media.timestamp"),
            "inbound",
        )

    def _start(self, data: dict[str, Any]) -> StreamStarted:
        if self.state != "new":
            raise TwilioProtocolError("duplicate_start")
        start = _object(data.get("start"), "start")
        stream_sid = _as_str(start.get("streamSid", data.get("streamSid")), "streamSid", 64)
        if data.get("streamSid", stream_sid) != stream_sid:
            raise TwilioProtocolError("stream_sid_mismatch", stream_sid)
        if not _TOKEN.fullmatch(stream_sid):
            # It is echoed into every outbound message unescaped: plain tokens only.
            raise TwilioProtocolError("bad_shape", f"streamSid={stream_sid[:40]!r}")
        call_sid = _as_str(start.get("callSid"), "start.callSid", 64)
        account_sid = _as_str(start.get("accountSid", ""), "start.accountSid", 64)
        fmt = _object(start.get("mediaFormat"), "start.mediaFormat")
        encoding = _as_str(fmt.get("encoding"), "mediaFormat.encoding", 40)
        rate = _as_int(fmt.get("sampleRate"), "mediaFormat.sampleRate")
        channels = _as_int(fmt.get("channels", 1), "mediaFormat.channels")
        if (encoding, rate, channels) != ("audio/x-mulaw", 8000, 1):
            raise TwilioProtocolError("bad_encoding", f"{encoding} {rate} Hz x{channels}")
        params_raw = start.get("customParameters") or {}
        params = _object(params_raw, "start.customParameters")
        if len(params) > 32 or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 1024
            for k, v in params.items()
        ):
            raise TwilioProtocolError("bad_shape", "customParameters must be a small string map")
        tracks = start.get("tracks") or ["inbound"]
        if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
            raise TwilioProtocolError("bad_shape", "start.tracks")
        self.state = "started"
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        return StreamStarted(
            stream_sid, call_sid, account_sid, tuple(tracks), dict(params), encoding, rate, channels
        )


# --- outbound -----------------------------------------------------------------------------------


def media_message(stream_sid: str, pcmu: bytes) -> str:
    """A ``media`` message for Twilio (stream SIDs are plain tokens: no escaping needed)."""
    payload = binascii.b2a_base64(pcmu, newline=False).decode("ascii")
    return f'{{"event":"media","streamSid":"{stream_sid}","media":{{"payload":"{payload}"}}}}'


def mark_message(stream_sid: str, name: str) -> str:
    return json.dumps(
        {"event": "mark", "streamSid": stream_sid, "mark": {"name": name[:MAX_MARK_NAME]}},
        separators=(",", ":"),
    )


def clear_message(stream_sid: str) -> str:
    return f'{{"event":"clear","streamSid":"{stream_sid}"}}'


def connect_stream_twiml(stream_url: str, parameters: dict[str, str]) -> str:
    """TwiML that connects the call to a bidirectional Media Stream with ``<Parameter>``s."""
    params = "".join(
        f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in parameters.items()
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Connect><Stream url={quoteattr(stream_url)}>{params}</Stream></Connect>"
        "</Response>"
    )
