"""What travels on a Twilio Media Stream, seen from Twilio's side (pure).

The messages Twilio sends (:class:`TwilioOutbox`, numbered as Twilio numbers them), the checks
Twilio applies to every message a gateway sends (:func:`parse_gateway_message`, raising
:class:`Violation`), and the simulator's own G.711 codec, so that it shares no code with what it
tests.
"""

from __future__ import annotations

import binascii
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

FRAME_BYTES = 160  # 20 ms of mu-law at 8 kHz
FRAME_S = 0.02
BYTES_PER_S = 8000
SILENCE = b"\xff" * FRAME_BYTES  # mu-law 0xFF is digital silence (+0)
DTMF_DIGITS = frozenset("0123456789*#")


def ulaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples -> mu-law bytes (classic G.711 segment search, vectorised)."""
    x = np.asarray(samples).astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.clip(np.floor(np.log2(mag)).astype(np.int32) - 7, 0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return bytes((~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes())


def ulaw_decode(data: bytes) -> np.ndarray:
    """mu-law bytes -> int16 samples."""
    u = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    mag = ((((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)) - 0x84
    return np.where(u & 0x80, -mag, mag).astype(np.int16)


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two letters and 32 hex digits (CA..., MZ..., AC...)."""
    return prefix + secrets.token_hex(16)


# --- what Twilio accepts from the gateway -------------------------------------------------------


class Violation(ValueError):
    """A message from the gateway that Twilio would refuse."""


@dataclass(frozen=True, slots=True)
class GatewayMedia:
    payload: bytes


@dataclass(frozen=True, slots=True)
class GatewayMark:
    name: str


@dataclass(frozen=True, slots=True)
class GatewayClear:
    pass


GatewayMessage = GatewayMedia | GatewayMark | GatewayClear


def parse_gateway_message(message: str | bytes, stream_sid: str) -> GatewayMessage:
    """One message the gateway sent, checked as strictly as Twilio does; raises Violation."""
    if not isinstance(message, str):
        raise Violation(f"binary frame ({len(message)} bytes): Twilio takes JSON text frames")
    try:
        data = json.loads(message)
    except (ValueError, RecursionError):
        raise Violation(f"not JSON: {message[:80]!r}") from None
    if not isinstance(data, dict):
        raise Violation(f"not a JSON object: {message[:80]!r}")
    event = data.get("event")
    if event not in ("media", "mark", "clear"):
        raise Violation(f"unknown event {event!r}: {message[:80]!r}")
    if data.get("streamSid") != stream_sid:
        raise Violation(f"{event} with streamSid {data.get('streamSid')!r}, not {stream_sid}")
    if event == "clear":
        return GatewayClear()
    body = data.get(event)
    if not isinstance(body, dict):
        raise Violation(f"{event} without a {event!r} object: {message[:80]!r}")
    if event == "mark":
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise Violation(f"mark.name must be a non-empty string, got {name!r}")
        return GatewayMark(name)
    payload = body.get("payload")
    if not isinstance(payload, str) or not payload:
        raise Violation(f"media.payload must be a non-empty string, got {str(payload)[:40]!r}")
    try:
        audio = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise Violation(f"media.payload is not valid base64: {payload[:40]!r}") from None
    if audio.startswith(b"RIFF"):
        raise Violation("media.payload has a WAV header: Twilio wants raw mu-law")
    return GatewayMedia(audio)


# --- what Twilio sends -------------------------------------------------------------------------


class TwilioOutbox:
    """Twilio's messages for one stream, numbered as Twilio numbers them."""

    def __init__(self, stream_sid: str) -> None:
        self.stream_sid = stream_sid
        self.sequence = 0  # start is 1; connected carries no number

    def _message(self, event: str, body: Mapping[str, object]) -> str:
        self.sequence += 1
        return json.dumps(
            {
                "event": event,
                "sequenceNumber": str(self.sequence),
                "streamSid": self.stream_sid,
                event: body,
            }
        )

    @staticmethod
    def connected() -> str:
        return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self, account_sid: str, call_sid: str, params: dict[str, str]) -> str:
        media_format = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        return self._message(
            "start",
            {
                "accountSid": account_sid,
                "streamSid": self.stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": params,
                "mediaFormat": media_format,
            },
        )

    def media(self, k: int, frame: bytes) -> str:
        payload = binascii.b2a_base64(frame, newline=False).decode()
        body = {"track": "inbound", "chunk": str(k + 1), "timestamp": str(k * 20)}
        return self._message("media", body | {"payload": payload})

    def mark(self, name: str) -> str:
        return self._message("mark", {"name": name})

    def dtmf(self, digit: str) -> str:
        return self._message("dtmf", {"track": "inbound_track", "digit": digit})

    def stop(self, account_sid: str, call_sid: str) -> str:
        return self._message("stop", {"accountSid": account_sid, "callSid": call_sid})
