"""A Twilio call simulator: places a call on a Media Streams endpoint the way Twilio does.

Optionally it first POSTs the voice webhook (signed with ``X-Twilio-Signature`` when given the
auth token) and takes the ``<Connect><Stream url>`` and its ``<Parameter>``s from the TwiML.
Then it opens the stream (the handshake signed over the ``wss://`` URL, no parameters) and sends
``connected``, ``start``, and 20 ms mu-law ``media`` frames paced in real time on the monotonic
clock (frame k at t0 + k x 20 ms, so there is no drift), silence after the caller's words (a
phone line keeps streaming), optional ``dtmf``, and ``stop``.

What the gateway sends back is checked as Twilio checks it (:func:`parse_gateway_message`;
anything wrong is recorded in ``CallResult.violations``) and played out by :class:`Playback`,
Twilio's outbound buffer, at 8000 bytes a second on the same clock: a ``mark`` comes back when
the audio sent before it has played, and a ``clear`` drops what has not played and returns the
pending marks at once. ``Playback`` and the message checks are pure and tested on their own;
:func:`place_call` is the asyncio shell around them.

The simulator carries its own G.711 codec, so that it shares no code with what it tests.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
import wave
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import numpy as np
import websockets
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from sim.speech import resample, speech

FRAME_BYTES = 160  # 20 ms of mu-law at 8 kHz
FRAME_S = 0.02
BYTES_PER_S = 8000
SILENCE = b"\xff" * FRAME_BYTES  # mu-law 0xFF is digital silence (+0)
_SOUND_THRESHOLD = 100  # |sample| above which a caller frame counts as speech (about -50 dBFS)
_HTTP_USER_AGENT = "TwilioProxy/1.1"
_WS_USER_AGENT = "Twilio.TmeWs/1.0"


# --- G.711 mu-law (independent of the product's codec) -----------------------------------------
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


def _as_ulaw(audio: np.ndarray | bytes) -> bytes:
    return bytes(audio) if isinstance(audio, bytes | bytearray) else ulaw_encode(audio)


def _speech_end_s(ulaw: bytes) -> float:
    """When the caller's last audible frame ends (trailing silence is not speech)."""
    frames = len(ulaw) // FRAME_BYTES + (len(ulaw) % FRAME_BYTES > 0)
    loud = np.flatnonzero(np.abs(ulaw_decode(ulaw).astype(np.int32)) > _SOUND_THRESHOLD)
    last = int(loud[-1]) // FRAME_BYTES + 1 if loud.size else frames
    return last * FRAME_S


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


# --- Twilio's outbound buffer -------------------------------------------------------------------


@dataclass(slots=True)
class ReplyChunk:
    """One ``media`` message from the gateway, in seconds since the stream started.

    ``received_at`` is read off the monotonic clock; ``played_at`` and ``finished_at`` are on the
    playback clock (frame k's window starts at k x 20 ms). The two agree while pacing keeps time.
    """

    size: int  # bytes of mu-law = samples = size / 8 ms
    received_at: float
    played_at: float | None = None  # when its first sample played
    finished_at: float | None = None  # when its last sample played
    cleared_bytes: int = 0  # dropped unplayed by a clear


@dataclass(slots=True)
class _Queued:
    data: bytes
    chunk: ReplyChunk
    pos: int = 0


class Playback:
    """Twilio's playback of what the gateway sends: audio and marks in order, 8000 bytes a second.

    Pure: :meth:`tick` is handed the playback clock. Each tick plays the next 20 ms window; a
    mark comes back at the first tick after all audio before it has finished playing (never
    early, at most one window late), or at once from :meth:`clear`.
    """

    def __init__(self) -> None:
        self._queue: deque[_Queued | str] = deque()  # str: a mark's name
        self._due: list[str] = []  # marks whose audio finished inside the last window
        self.chunks: list[ReplyChunk] = []
        self.heard = bytearray()  # what the caller heard, window by window (0xFF: nothing)
        self.played_bytes = 0

    def add_audio(self, payload: bytes, now: float) -> ReplyChunk:
        chunk = ReplyChunk(len(payload), now)
        self.chunks.append(chunk)
        self._queue.append(_Queued(payload, chunk))
        return chunk

    def add_mark(self, name: str) -> None:
        self._queue.append(name)

    @property
    def idle(self) -> bool:
        """Nothing left to play and no mark left to return."""
        return not self._queue and not self._due

    def pending_bytes(self) -> int:
        return sum(len(q.data) - q.pos for q in self._queue if isinstance(q, _Queued))

    def tick(self, at: float, nbytes: int = FRAME_BYTES) -> tuple[bytes, list[str]]:
        """Play the window [at, at + nbytes/8000): the audio played, and the marks now due."""
        marks, self._due = self._due, []
        queue = self._queue
        while queue and isinstance(queue[0], str):
            marks.append(queue.popleft())  # type: ignore[arg-type]
        out = bytearray()
        while queue and len(out) < nbytes:
            head = queue[0]
            if isinstance(head, str):
                self._due.append(queue.popleft())  # type: ignore[arg-type]
                continue
            if head.chunk.played_at is None:
                head.chunk.played_at = at + len(out) / BYTES_PER_S
            take = min(nbytes - len(out), len(head.data) - head.pos)
            out += head.data[head.pos : head.pos + take]
            head.pos += take
            if head.pos == len(head.data):
                queue.popleft()
                head.chunk.finished_at = at + len(out) / BYTES_PER_S
        self.played_bytes += len(out)
        self.heard += out
        self.heard += b"\xff" * (nbytes - len(out))
        return bytes(out), marks

    def clear(self) -> list[str]:
        """Drop everything unplayed; every pending mark comes back at once, in order."""
        marks = self._due
        for item in self._queue:
            if isinstance(item, str):
                marks.append(item)
            else:
                item.chunk.cleared_bytes += len(item.data) - item.pos
        self._queue.clear()
        self._due = []
        return marks


# --- the webhook --------------------------------------------------------------------------------


class WebhookError(RuntimeError):
    """The voice webhook failed or its TwiML has no bidirectional stream: Twilio would hang up."""


async def fetch_twiml(
    url: str,
    form: dict[str, str],
    auth_token: str | None = None,
    signed_as: str | None = None,
    timeout_s: float = 10.0,
) -> str:
    """POST the voice webhook as Twilio does; the TwiML it answers.

    ``signed_as`` is the URL Twilio was configured with (behind a proxy it differs from ``url``).
    """
    headers = {
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "User-Agent": _HTTP_USER_AGENT,
    }
    if auth_token:
        validator = RequestValidator(auth_token)
        headers["X-Twilio-Signature"] = validator.compute_signature(signed_as or url, form)
    request = urllib.request.Request(url, urlencode(form).encode(), headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an env proxy

    def post() -> tuple[str, bytes]:
        with opener.open(request, timeout=timeout_s) as response:
            return response.headers.get_content_type(), bytes(response.read())

    try:
        content_type, body = await asyncio.to_thread(post)
    except urllib.error.HTTPError as exc:
        raise WebhookError(f"webhook {url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise WebhookError(f"webhook {url} unreachable: {exc}") from None
    if content_type not in TWIML_CONTENT_TYPES:
        # Twilio's error 12300: it reads TwiML only from an XML (or HTML) response.
        raise WebhookError(f"webhook {url} answered Content-Type {content_type!r}, not TwiML")
    return body.decode("utf-8", errors="replace")


TWIML_CONTENT_TYPES = frozenset({"text/xml", "application/xml", "text/html"})
DTMF_DIGITS = frozenset("0123456789*#")
_LOOPBACK = ("127.", "localhost", "::1")


def parse_connect_stream(twiml: str) -> tuple[str, dict[str, str]]:
    """The ``<Connect><Stream url>`` and its ``<Parameter>``s; raises WebhookError."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError as exc:
        raise WebhookError(f"TwiML is not XML ({exc}): {twiml[:80]!r}") from None
    stream = root.find("./Connect/Stream") if root.tag == "Response" else None
    url = stream.get("url", "") if stream is not None else ""
    if stream is None or not url:
        raise WebhookError(f"TwiML has no <Response><Connect><Stream url>: {twiml[:120]!r}")
    parts = urlsplit(url)
    # Twilio dials only wss:// (error 31922) and takes no query string (parameters go in
    # <Parameter>). ws:// passes only for a loopback host: a local run without TLS, which Twilio
    # could not reach anyway.
    secure = parts.scheme == "wss" or (
        parts.scheme == "ws" and (parts.hostname or "").startswith(_LOOPBACK)
    )
    if not secure or not parts.hostname or parts.query:
        raise WebhookError(f"Stream url must be wss:// with no query string: {url!r}")
    params: dict[str, str] = {}
    for p in stream.findall("Parameter"):
        name = p.get("name")
        if not name:
            raise WebhookError("<Parameter> without a name")
        params[name] = p.get("value", "")
    return url, params


class StatusCallbacks:
    """The ``<Stream statusCallback>`` POSTs Twilio makes: stream-started, stream-stopped, or
    stream-error when the stream cannot connect. Signed like the webhook over the URL the TwiML
    names; sent to that path on the webhook's own host (the public host is this machine here).
    Twilio does not wait for them, and neither does the call; ``answered`` has each one's HTTP
    status (0: unreachable)."""

    def __init__(
        self,
        url: str | None,
        dial: str | None,
        auth_token: str | None,
        sids: tuple[str, str, str],
    ) -> None:
        self.url, self.dial, self.auth_token, self.sids = url, dial, auth_token, sids
        self.answered: list[tuple[str, int]] = []
        self._posts: list[asyncio.Task[None]] = []

    @classmethod
    def from_twiml(
        cls, twiml: str, webhook: str | None, auth_token: str | None, sids: tuple[str, str, str]
    ) -> StatusCallbacks:
        url = dial = None
        if twiml and webhook:
            root = ET.fromstring(twiml)
            stream = root.find("./Connect/Stream")
            url = stream.get("statusCallback") if stream is not None else None
            if url:
                hook, target = urlsplit(webhook), urlsplit(url)
                dial = f"{hook.scheme}://{hook.netloc}{target.path}"
        return cls(url, dial, auth_token, sids)

    def post(self, event: str, error: str = "") -> None:
        if self.url and self.dial:
            self._posts.append(asyncio.create_task(self._post(event, error)))

    async def sent(self) -> None:
        await asyncio.gather(*self._posts)

    async def _post(self, event: str, error: str) -> None:
        assert self.url and self.dial
        account_sid, call_sid, stream_sid = self.sids
        form = {
            "AccountSid": account_sid,
            "CallSid": call_sid,
            "StreamSid": stream_sid,
            "StreamEvent": event,
            "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if error:
            form["StreamError"] = error[:300]
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        if self.auth_token:
            validator = RequestValidator(self.auth_token)
            headers["X-Twilio-Signature"] = validator.compute_signature(self.url, form)
        request = urllib.request.Request(
            self.dial, urlencode(form).encode(), headers, method="POST"
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def send() -> int:
            try:
                with opener.open(request, timeout=5) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return exc.code
            except (urllib.error.URLError, OSError):
                return 0

        self.answered.append((event, await asyncio.to_thread(send)))


# --- the call -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BargeIn:
    """The caller talks over the reply once it has been playing for ``after_s`` seconds."""

    after_s: float
    audio: np.ndarray | bytes  # int16 at 8 kHz, or mu-law


@dataclass
class CallResult:
    """What happened on the call. Times are seconds since ``start`` was sent (frame 0's slot).

    ``heard[i]`` played at i / 8000 s; ``clears``, ``marks_*`` and ``barge_in_at`` are arrival or
    send times on the monotonic clock; ``*_ms`` figures are milliseconds of audio or of delay.
    """

    call_sid: str
    stream_sid: str
    account_sid: str = ""
    stream_url: str = ""  # the URL the handshake was signed over (the TwiML's, if fetched)
    custom_parameters: dict[str, str] = field(default_factory=dict)  # as sent in start
    frames_sent: int = 0
    speech_frames: int = 0  # of which carried the caller's audio (first turn)
    frames_received: int = 0
    heard: bytes = b""  # mu-law as played to the caller, 8000 bytes a second, 0xFF when nothing
    received_audio: bytes = b""  # every media payload received, concatenated
    reply_chunks: list[ReplyChunk] = field(default_factory=list)
    marks_received: list[tuple[str, float]] = field(default_factory=list)  # from the gateway
    marks_returned: list[tuple[str, float]] = field(default_factory=list)  # echoed back
    clears: list[float] = field(default_factory=list)
    speech_end_at: float | None = None  # the end of the caller's last audible frame
    first_reply_at: float | None = None  # first media received after speech_end_at
    reply_delay_ms: float | None = None  # first_reply_at - speech_end_at
    reply_heard_at_clear_ms: float | None = None  # reply audio played when the first clear came
    played_after_clear_ms: float = 0.0  # reply audio played after the first clear
    barge_in_at: float | None = None
    clear_after_barge_ms: float | None = None  # first clear after barge_in_at, minus it
    played_after_barge_ms: float | None = None  # reply audio talked over until that clear
    violations: list[str] = field(default_factory=list)
    closed_by_gateway: bool = False
    # (StreamEvent, HTTP status) of each <Stream statusCallback> POST, when the TwiML named one
    status_callbacks: list[tuple[str, int]] = field(default_factory=list)
    close_code: int | None = None
    duration_s: float = 0.0


class _Outbox:
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


class _Caller:
    """What the caller says in each 20 ms frame: the first turn, silence, maybe a barge-in.

    Pure: the shell hands it the playback clock and when the reply began to play.
    """

    def __init__(self, first_turn: bytes, barge_in: BargeIn | None) -> None:
        self.first_turn = first_turn
        self.barge_in = barge_in
        self.barge_audio = _as_ulaw(barge_in.audio) if barge_in else b""
        self.barge_pos: int | None = None  # bytes of the barge-in sent; None: not begun

    @property
    def barge_started(self) -> bool:
        return self.barge_pos is not None

    def speaking(self, k: int) -> bool:
        """Is there still something to say at frame k?"""
        if k * FRAME_BYTES < len(self.first_turn):
            return True
        return self.barge_pos is not None and self.barge_pos < len(self.barge_audio)

    def frame(self, k: int, at: float, reply_playing_since: float | None) -> bytes:
        pos = k * FRAME_BYTES
        if pos < len(self.first_turn):
            return self.first_turn[pos : pos + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff")
        if (
            self.barge_in is not None
            and self.barge_pos is None
            and reply_playing_since is not None
            and at - reply_playing_since >= self.barge_in.after_s
        ):
            self.barge_pos = 0
        if self.barge_pos is not None and self.barge_pos < len(self.barge_audio):
            pos, self.barge_pos = self.barge_pos, self.barge_pos + FRAME_BYTES
            return self.barge_audio[pos : pos + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff")
        return SILENCE


async def place_call(
    media_url: str,
    caller_audio: np.ndarray | bytes,
    *,
    call_sid: str | None = None,
    stream_sid: str | None = None,
    account_sid: str | None = None,
    custom_parameters: dict[str, str] | None = None,
    twiml_url: str | None = None,
    auth_token: str | None = None,
    extra_headers: dict[str, str] | None = None,
    hold_after_s: float = 3.0,
    barge_in: BargeIn | None = None,
    max_duration_s: float = 30.0,
    wait_for_reply: bool = True,
    dtmf: list[tuple[float, str]] | None = None,
    signed_url: str | None = None,
    twiml_signed_url: str | None = None,
    stop: bool = True,
    hang_up: asyncio.Event | None = None,
) -> CallResult:
    """Place one call on ``media_url`` (the socket actually dialled) and return what happened.

    ``twiml_url``: POST the voice webhook first; the TwiML's ``<Parameter>``s become
    ``customParameters`` (``custom_parameters`` adds to and overrides them). ``auth_token``:
    sign the webhook over ``twiml_signed_url or twiml_url`` and the handshake over ``signed_url``,
    else the TwiML's stream URL, else ``media_url``. The call streams the caller's audio, then
    silence; it hangs up (``stop``, close) once nothing has been said, received or played for
    ``hold_after_s`` and the buffer is empty, but not before a reply has come when
    ``wait_for_reply`` (nor before a configured barge-in), and never after ``max_duration_s``.
    ``dtmf``: (seconds, digit) key presses. ``hang_up``: when set, the call ends at the next
    frame (Twilio's side ending it: a call redirected through the REST API, say). Raises
    WebhookError, OSError or InvalidHandshake when the call cannot be placed.
    """
    call_sid = call_sid or new_sid("CA")
    stream_sid = stream_sid or new_sid("MZ")
    account_sid = account_sid or new_sid("AC")
    params: dict[str, str] = {}
    stream_url = media_url
    twiml = ""
    if any(digit not in DTMF_DIGITS for _, digit in dtmf or ()):
        raise ValueError(f"Twilio sends one digit of 0-9, * or # a press: {dtmf!r}")
    if twiml_url:
        form = {
            "AccountSid": account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": call_sid,
            "CallStatus": "ringing",
            "Called": "+15550002222",
            "Caller": "+15550001111",
            "Direction": "inbound",
            "From": "+15550001111",
            "To": "+15550002222",
        }
        twiml = await fetch_twiml(twiml_url, form, auth_token, twiml_signed_url)
        stream_url, params = parse_connect_stream(twiml)
    params |= custom_parameters or {}
    stream_url = signed_url or stream_url
    headers = dict(extra_headers or {})
    if auth_token:
        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(
            stream_url, {}
        )
    speech_bytes = _as_ulaw(caller_audio)
    caller = _Caller(speech_bytes, barge_in)
    barge_s = len(caller.barge_audio) / BYTES_PER_S
    speech_end = _speech_end_s(speech_bytes)
    audio_end = len(speech_bytes) / BYTES_PER_S
    result = CallResult(call_sid, stream_sid, account_sid, stream_url, dict(params))
    result.speech_end_at = speech_end
    playback = Playback()
    outbox = _Outbox(stream_sid)
    received = bytearray()
    last_received = 0.0
    barge_cleared = False  # a clear has come since the caller began talking over the reply
    hanging_up = False

    status = StatusCallbacks.from_twiml(
        twiml, twiml_url, auth_token, (account_sid, call_sid, stream_sid)
    )
    try:
        async with websockets.connect(
            media_url,
            additional_headers=headers,
            user_agent_header=_WS_USER_AGENT,
            compression=None,  # Twilio does not negotiate permessage-deflate
            proxy=None,
            max_size=1 << 22,
        ) as ws:
            await ws.send(outbox.connected())
            await ws.send(outbox.start(account_sid, call_sid, params))
            status.post("stream-started")
            t0 = time.monotonic()

            def now() -> float:
                return time.monotonic() - t0

            async def echo_marks(names: list[str], at: float) -> None:
                for name in names:
                    await ws.send(outbox.mark(name))
                    result.marks_returned.append((name, at))

            async def receive() -> None:
                try:
                    async for raw in ws:
                        await on_message(raw)
                except ConnectionClosed:
                    pass  # the gateway went away: the pacing loop notices and records it

            async def on_message(raw: str | bytes) -> None:
                nonlocal last_received, barge_cleared
                t = now()
                if not hanging_up:
                    try:
                        message = parse_gateway_message(raw, stream_sid)
                    except Violation as exc:
                        result.violations.append(f"{t:.3f}s: {exc}")
                        return
                    if isinstance(message, GatewayMedia):
                        playback.add_audio(message.payload, t)
                        received.extend(message.payload)
                        result.frames_received += 1
                        last_received = t
                        if result.first_reply_at is None and t >= speech_end:
                            result.first_reply_at = t
                    elif isinstance(message, GatewayMark):
                        playback.add_mark(message.name)
                        result.marks_received.append((message.name, t))
                    else:
                        result.clears.append(t)
                        if result.reply_heard_at_clear_ms is None:
                            result.reply_heard_at_clear_ms = playback.played_bytes / 8
                        if result.barge_in_at is not None:
                            barge_cleared = True
                        await echo_marks(playback.clear(), t)

            receiver = asyncio.create_task(receive())
            pending_dtmf = sorted(dtmf or [])
            reply_playing_since: float | None = None  # playback clock, after the caller spoke
            talked_over = 0  # reply bytes played during the barge-in, before its clear
            after_clear = 0
            last_played = 0.0
            k = 0
            try:
                while not receiver.done():
                    delay = t0 + k * FRAME_S - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if receiver.done():
                        break
                    at = k * FRAME_S  # the playback clock: frame k's window
                    played, marks = playback.tick(at)
                    await echo_marks(marks, now())
                    if played:
                        last_played = at + len(played) / BYTES_PER_S
                        if at >= speech_end and reply_playing_since is None:
                            reply_playing_since = at
                        if result.clears:
                            after_clear += len(played)
                        if caller.barge_started and not barge_cleared:
                            talked_over += len(played)
                    barging = caller.barge_started
                    await ws.send(outbox.media(k, caller.frame(k, at, reply_playing_since)))
                    result.frames_sent += 1
                    if k * FRAME_BYTES < len(speech_bytes):
                        result.speech_frames += 1
                    if caller.barge_started and not barging:
                        result.barge_in_at = now()
                    t = now()
                    while pending_dtmf and pending_dtmf[0][0] <= t:
                        await ws.send(outbox.dtmf(pending_dtmf.pop(0)[1]))
                    k += 1
                    if t >= max_duration_s or (hang_up is not None and hang_up.is_set()):
                        break
                    # Hang up? Not while the caller still has something to say.
                    if caller.speaking(k):
                        continue
                    at = k * FRAME_S
                    waiting = wait_for_reply and result.frames_received == 0
                    if barge_in and not caller.barge_started and result.first_reply_at is not None:
                        waiting = True  # the reply has come; the caller is yet to interrupt it
                    barge_end = (result.barge_in_at or 0.0) + barge_s
                    quiet_since = max(audio_end, last_received, last_played, barge_end)
                    if playback.idle and not waiting and at - quiet_since >= hold_after_s:
                        break
                hanging_up = True
                if stop and not receiver.done():
                    await ws.send(outbox.stop(account_sid, call_sid))
            except ConnectionClosed:
                pass
            finally:
                hanging_up = True
                if receiver.done() or ws.close_code is not None:
                    result.closed_by_gateway = True
                    result.close_code = ws.close_code
                result.duration_s = now()
                await ws.close()
                receiver.cancel()
                (outcome,) = await asyncio.gather(receiver, return_exceptions=True)
                if isinstance(outcome, Exception):
                    raise outcome  # a bug in the simulator, not something the gateway did
    except (OSError, InvalidHandshake) as exc:
        status.post("stream-error", f"the stream could not connect: {exc}")
        await status.sent()
        raise
    status.post("stream-stopped")
    await status.sent()
    result.status_callbacks = status.answered

    result.heard = bytes(playback.heard)
    result.received_audio = bytes(received)
    result.reply_chunks = playback.chunks
    result.played_after_clear_ms = after_clear / 8
    if result.first_reply_at is not None:
        result.reply_delay_ms = (result.first_reply_at - speech_end) * 1000
    if result.barge_in_at is not None:
        result.played_after_barge_ms = talked_over / 8
        after = [c for c in result.clears if c >= result.barge_in_at]
        if after:
            result.clear_after_barge_ms = (after[0] - result.barge_in_at) * 1000
    return result


# --- command line -------------------------------------------------------------------------------


def write_wav(path: str, ulaw: bytes) -> None:
    """Mu-law audio to an 8 kHz 16-bit mono WAV."""
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(ulaw_decode(ulaw).astype("<i2").tobytes())


def read_wav(path: str) -> np.ndarray:
    """A 16-bit WAV as int16 at 8 kHz (first channel)."""
    with wave.open(path) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV files are supported")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")[:: w.getnchannels()]
        rate = w.getframerate()
    return resample(data.astype(np.int16), rate, 8000)


def _report(result: CallResult, out: str) -> None:
    delay = f"{result.reply_delay_ms:.0f} ms" if result.reply_delay_ms is not None else "no reply"
    print(f"call {result.call_sid} ({result.duration_s:.1f} s)")
    print(f"end of caller speech -> first reply audio: {delay}")
    print(
        f"frames sent {result.frames_sent} (speech {result.speech_frames}), "
        f"received {result.frames_received}"
    )
    print(
        f"marks received {len(result.marks_received)}, returned {len(result.marks_returned)}; "
        f"clears {len(result.clears)}"
    )
    if result.barge_in_at is not None:
        clear = result.clear_after_barge_ms
        print(
            f"barge-in at {result.barge_in_at:.2f} s: "
            f"clear {'never came' if clear is None else f'after {clear:.0f} ms'}, "
            f"reply talked over {result.played_after_barge_ms or 0:.0f} ms"
        )
    if result.closed_by_gateway:
        print(f"the gateway closed the stream (code {result.close_code})")
    for violation in result.violations[:10]:
        print(f"protocol violation: {violation}")
    print(f"heard audio written to {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Place a simulated Twilio call.")
    parser.add_argument("--url", help="Media Streams WebSocket URL (ws://host:port/media)")
    parser.add_argument("--twiml-url", help="voice webhook to POST first (takes its TwiML)")
    parser.add_argument("--say", help="what the caller says")
    parser.add_argument("--wav", help="a 16-bit WAV file the caller plays")
    parser.add_argument("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN") or None)
    parser.add_argument("--public-url", help="the gateway's public base URL (what is signed)")
    parser.add_argument("--out", default="heard.wav")
    parser.add_argument("--hold", type=float, default=2.0, help="seconds of quiet before hang-up")
    parser.add_argument("--max-duration", type=float, default=30.0)
    parser.add_argument("--barge-after", type=float, help="interrupt the reply after SECONDS")
    parser.add_argument("--param", action="append", default=[], help="k=v custom parameter")
    parser.add_argument("--dtmf", action="append", default=[], help="SECONDS:DIGIT")
    parser.add_argument("--demo", action="store_true", help="call the local stack (EDGE_PORT)")
    args = parser.parse_args(argv)
    if args.demo:
        port = os.environ.get("EDGE_PORT", "8080")
        args.url = args.url or f"ws://127.0.0.1:{port}/media"
        args.twiml_url = args.twiml_url or f"http://127.0.0.1:{port}/twiml"
        args.public_url = args.public_url or os.environ.get("PUBLIC_URL") or None
        args.say = args.say or "Hello! I am calling to ask what your opening hours are this week."
    if not args.url or not (args.say or args.wav):
        parser.error("--url and one of --say/--wav are required (or --demo)")
    try:
        params = dict(p.split("=", 1) for p in args.param)
        dtmf = [(float(t), d) for t, _, d in (x.partition(":") for x in args.dtmf)]
    except ValueError:
        parser.error("--param takes k=v and --dtmf SECONDS:DIGIT")
    if any(digit not in DTMF_DIGITS for _, digit in dtmf):
        parser.error("--dtmf takes SECONDS:DIGIT, one of 0-9, * or #")
    public = args.public_url.rstrip("/") if args.public_url else None
    twiml_signed = f"{public}/twiml" if public and args.twiml_url else None
    signed = None
    if public and not args.twiml_url:
        scheme = "ws" if public.startswith(("http:", "ws:")) else "wss"
        signed = f"{scheme}://{urlsplit(public).netloc}{urlsplit(public).path}/media"
    try:
        audio = read_wav(args.wav) if args.wav else speech(args.say)
    except (OSError, EOFError, ValueError, wave.Error) as exc:
        print(f"twilio_call: cannot read {args.wav}: {exc}", file=sys.stderr)
        return 2
    barge = None
    if args.barge_after is not None:
        barge = BargeIn(args.barge_after, speech("Wait, sorry, let me interrupt you there."))
    try:
        result = asyncio.run(
            place_call(
                args.url,
                audio,
                twiml_url=args.twiml_url,
                auth_token=args.auth_token,
                custom_parameters=params,
                hold_after_s=args.hold,
                max_duration_s=args.max_duration,
                barge_in=barge,
                dtmf=dtmf,
                signed_url=signed,
                twiml_signed_url=twiml_signed,
            )
        )
    except (OSError, InvalidHandshake, WebhookError, TimeoutError) as exc:
        print(f"twilio_call: cannot place the call on {args.url}: {exc}", file=sys.stderr)
        return 1
    write_wav(args.out, result.heard)
    _report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
