"""A Twilio call simulator: places a call on a Media Streams endpoint the way Twilio does.

Optionally fetches the TwiML from the voice webhook first (signed like Twilio), then opens the
stream: ``connected``, ``start``, 20 ms mu-law ``media`` frames paced in real time on the
monotonic clock (silence after the caller's words, as a phone line keeps streaming), ``dtmf``,
``stop``. What the gateway sends back is checked as Twilio would check it and played out by a
playback clock at 8000 bytes a second: a ``mark`` is returned when the audio before it has
played, and ``clear`` empties what has not played and returns pending marks at once. The
simulator carries its own G.711 codec so that it shares no code with what it tests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import os
import secrets
import sys
import time
import wave
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import numpy as np
import websockets
from websockets.exceptions import ConnectionClosed

FRAME_BYTES = 160  # 20 ms of mu-law at 8 kHz
FRAME_S = 0.02
SILENCE = b"\xff" * FRAME_BYTES


# --- G.711 mu-law (independent of the product's codec) -----------------------------------------
def _ulaw_encode(samples: np.ndarray) -> bytes:
    x = samples.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def _ulaw_decode(data: bytes) -> np.ndarray:
    u = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    mag = ((((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)) - 0x84
    return np.where(u & 0x80, -mag, mag).astype(np.int16)


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass
class BargeIn:
    after_s: float
    audio: np.ndarray | bytes


@dataclass
class CallResult:
    call_sid: str
    stream_sid: str
    frames_sent: int = 0
    speech_frames: int = 0
    frames_received: int = 0
    heard: bytes = b""
    received_audio: bytes = b""
    marks_returned: list[tuple[str, float]] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    reply_delay_ms: float | None = None
    played_after_clear_ms: float = 0.0
    reply_heard_at_clear_ms: float | None = None  # reply audio the caller had heard when cleared
    barge_in_at: float | None = None
    clear_after_barge_ms: float | None = None
    violations: list[str] = field(default_factory=list)
    closed_by_gateway: bool = False
    close_code: int | None = None


class _Playback:
    """Twilio's outbound buffer: audio and marks in order, played at 8000 bytes a second."""

    def __init__(self) -> None:
        self.queue: deque[bytes | str] = deque()  # bytes: audio; str: a mark name
        self.heard = bytearray()
        self.reply_played = 0  # bytes of reply audio actually played
        self.played_after_clear = 0
        self.cleared_once = False

    def pending_audio(self) -> int:
        return sum(len(x) for x in self.queue if isinstance(x, bytes))

    def tick(self, nbytes: int) -> tuple[bytes, list[str]]:
        """Play ``nbytes``; the audio played and the marks reached."""
        out = bytearray()
        marks: list[str] = []
        while self.queue and (len(out) < nbytes or isinstance(self.queue[0], str)):
            head = self.queue[0]
            if isinstance(head, str):
                marks.append(self.queue.popleft())  # type: ignore[arg-type]
                continue
            take = nbytes - len(out)
            out += head[:take]
            if take >= len(head):
                self.queue.popleft()
            else:
                self.queue[0] = head[take:]
        self.reply_played += len(out)
        if self.cleared_once:
            self.played_after_clear += len(out)
        self.heard += out + b"\xff" * (nbytes - len(out))
        return bytes(out), marks

    def clear(self) -> list[str]:
        marks = [x for x in self.queue if isinstance(x, str)]
        self.queue.clear()
        self.cleared_once = True
        return marks


async def _fetch_twiml(
    url: str, params: dict[str, str], auth_token: str | None, signed_as: str | None = None
) -> str:
    parts = urlsplit(url)
    body = urlencode(params).encode()
    headers = {
        "Host": parts.netloc,
        "Content-Type": "application/x-www-form-urlencoded",
        "Content-Length": str(len(body)),
        "Connection": "close",
    }
    if auth_token:
        from twilio.request_validator import RequestValidator

        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(
            signed_as or url, params
        )
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    head = f"POST {parts.path or '/'} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    writer.write(head.encode() + b"\r\n" + body)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    if b" 200 " not in status_line + b" ":
        raise RuntimeError(f"webhook answered {status_line.decode(errors='replace')}")
    return rest.partition(b"\r\n\r\n")[2].decode()


def _parse_twiml(twiml: str) -> tuple[str, dict[str, str]]:
    root = ET.fromstring(twiml)
    stream = root.find("./Connect/Stream")
    if stream is None or not stream.get("url"):
        raise RuntimeError("TwiML has no <Connect><Stream url>")
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return stream.get("url", ""), params


def _as_ulaw(audio: np.ndarray | bytes) -> bytes:
    return audio if isinstance(audio, bytes | bytearray) else _ulaw_encode(np.asarray(audio))


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
    signed_url: str | None = None,
    twiml_signed_url: str | None = None,
    extra_headers: dict[str, str] | None = None,
    hold_after_s: float = 3.0,
    barge_in: BargeIn | None = None,
    max_duration_s: float = 30.0,
    wait_for_reply: bool = True,
    dtmf: list[tuple[float, str]] | None = None,
    stop: bool = True,
) -> CallResult:
    call_sid = call_sid or _sid("CA")
    stream_sid = stream_sid or _sid("MZ")
    account_sid = account_sid or _sid("AC")
    params = dict(custom_parameters or {})
    headers = dict(extra_headers or {})
    stream_url = signed_url
    if twiml_url:
        form = {
            "CallSid": call_sid,
            "AccountSid": account_sid,
            "From": "+15550001111",
            "To": "+15550002222",
            "CallStatus": "ringing",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
        }
        url, twiml_params = _parse_twiml(
            await _fetch_twiml(twiml_url, form, auth_token, twiml_signed_url)
        )
        stream_url = stream_url or url
        params = {**twiml_params, **params}
    if auth_token:
        from twilio.request_validator import RequestValidator

        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(
            stream_url or media_url, {}
        )
    speech_bytes = _as_ulaw(caller_audio)
    result = CallResult(call_sid, stream_sid)
    playback = _Playback()
    received = bytearray()
    seq = 0
    t0 = time.monotonic()
    speech_end_t: float | None = None
    first_reply_t: float | None = None
    reply_started_t: float | None = None
    barge_bytes = _as_ulaw(barge_in.audio) if barge_in else b""
    last_play_t = 0.0

    def now() -> float:
        return time.monotonic() - t0

    def msg(event: str, **body: object) -> str:
        nonlocal seq
        seq += 1
        return json.dumps(
            {"event": event, "sequenceNumber": str(seq), "streamSid": stream_sid, **body}
        )

    async with websockets.connect(media_url, additional_headers=headers, max_size=1 << 22) as ws:
        seq += 1
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(
            msg(
                "start",
                start={
                    "accountSid": account_sid,
                    "streamSid": stream_sid,
                    "callSid": call_sid,
                    "tracks": ["inbound"],
                    "customParameters": params,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            )
        )

        async def receive() -> None:
            nonlocal first_reply_t
            try:
                async for raw in ws:
                    if isinstance(raw, bytes):
                        result.violations.append("binary frame")
                        continue
                    try:
                        data = json.loads(raw)
                    except ValueError:
                        result.violations.append(f"not JSON: {raw[:60]}")
                        continue
                    if not isinstance(data, dict) or data.get("event") not in (
                        "media",
                        "mark",
                        "clear",
                    ):
                        result.violations.append(f"unknown event: {str(raw)[:80]}")
                        continue
                    if data.get("streamSid") != stream_sid:
                        result.violations.append(f"wrong streamSid: {data.get('streamSid')!r}")
                        continue
                    event = data["event"]
                    if event == "media":
                        try:
                            payload = base64.b64decode(data["media"]["payload"], validate=True)
                        except (KeyError, TypeError, binascii.Error):
                            result.violations.append("bad media payload")
                            continue
                        received.extend(payload)
                        result.frames_received += 1
                        if first_reply_t is None:
                            first_reply_t = now()
                        playback.queue.append(payload)
                    elif event == "mark":
                        name = (data.get("mark") or {}).get("name")
                        if not isinstance(name, str):
                            result.violations.append("mark without a name")
                            continue
                        playback.queue.append(name)
                    else:
                        result.clears.append(now())
                        if result.reply_heard_at_clear_ms is None:
                            result.reply_heard_at_clear_ms = playback.reply_played / 8
                        for name in playback.clear():
                            await ws.send(msg("mark", mark={"name": name}))
                            result.marks_returned.append((name, now()))
            except ConnectionClosed:
                pass

        receiver = asyncio.create_task(receive())
        pending_dtmf = sorted(dtmf or [])
        position = 0
        barge_pos: int | None = None
        k = 0
        try:
            while True:
                target = t0 + k * FRAME_S
                delay = target - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if receiver.done():
                    result.closed_by_gateway = True
                    result.close_code = ws.close_code
                    break
                t = now()
                # Play out what Twilio holds for the caller, mark by mark.
                played, marks = playback.tick(FRAME_BYTES)
                if played:
                    last_play_t = t
                    if reply_started_t is None:
                        reply_started_t = t
                for name in marks:
                    await ws.send(msg("mark", mark={"name": name}))
                    result.marks_returned.append((name, t))
                # What the caller says now.
                if position < len(speech_bytes):
                    frame = speech_bytes[position : position + FRAME_BYTES].ljust(
                        FRAME_BYTES, b"\xff"
                    )
                    position += FRAME_BYTES
                    result.speech_frames += 1
                    if position >= len(speech_bytes):
                        speech_end_t = t + FRAME_S
                elif (
                    barge_in
                    and barge_pos is None
                    and reply_started_t is not None
                    and t - reply_started_t >= barge_in.after_s
                ):
                    barge_pos = 0
                    result.barge_in_at = t
                    frame = SILENCE
                elif barge_pos is not None and barge_pos < len(barge_bytes):
                    frame = barge_bytes[barge_pos : barge_pos + FRAME_BYTES].ljust(
                        FRAME_BYTES, b"\xff"
                    )
                    barge_pos += FRAME_BYTES
                else:
                    frame = SILENCE
                await ws.send(
                    msg(
                        "media",
                        media={
                            "track": "inbound",
                            "chunk": str(k + 1),
                            "timestamp": str(k * 20),
                            "payload": base64.b64encode(frame).decode(),
                        },
                    )
                )
                result.frames_sent += 1
                while pending_dtmf and pending_dtmf[0][0] <= t:
                    _, digit = pending_dtmf.pop(0)
                    await ws.send(msg("dtmf", dtmf={"track": "inbound_track", "digit": digit}))
                k += 1
                if t >= max_duration_s:
                    break
                if speech_end_t is None or (barge_pos is not None and barge_pos < len(barge_bytes)):
                    continue
                idle = not playback.queue
                last_activity = max(speech_end_t, reply_started_t or 0.0, result.barge_in_at or 0.0)
                waiting = wait_for_reply and first_reply_t is None
                if barge_in and result.barge_in_at is None and first_reply_t is not None:
                    waiting = True  # the barge-in has not happened yet
                if idle and not waiting and t - max(last_activity, last_play_t) >= hold_after_s:
                    break
                if waiting and t - speech_end_t > max_duration_s:
                    break
            if stop and not receiver.done():
                await ws.send(msg("stop", stop={"accountSid": account_sid, "callSid": call_sid}))
        except ConnectionClosed:
            result.closed_by_gateway = True
            result.close_code = ws.close_code
        finally:
            await ws.close()
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
    result.heard = bytes(playback.heard)
    result.received_audio = bytes(received)
    result.played_after_clear_ms = playback.played_after_clear / 8
    if speech_end_t is not None and first_reply_t is not None:
        result.reply_delay_ms = max(0.0, first_reply_t - speech_end_t) * 1000
    if result.barge_in_at is not None:
        after = [c for c in result.clears if c >= result.barge_in_at]
        if after:
            result.clear_after_barge_ms = (after[0] - result.barge_in_at) * 1000
    return result


def _write_wav(path: str, ulaw: bytes) -> None:
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(_ulaw_decode(ulaw).tobytes())


def _read_wav(path: str) -> np.ndarray:
    with wave.open(path) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        rate = w.getframerate()
        if w.getnchannels() > 1:
            data = data[:: w.getnchannels()]
    if rate != 8000:
        t = np.arange(int(data.size * 8000 / rate)) / 8000
        data = np.interp(t, np.arange(data.size) / rate, data.astype(float)).astype(np.int16)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Place a simulated Twilio call.")
    parser.add_argument("--url", help="Media Streams WebSocket URL (ws://host:port/media)")
    parser.add_argument("--twiml-url", help="voice webhook to fetch the TwiML from first")
    parser.add_argument("--say", help="what the caller says")
    parser.add_argument("--wav", help="a WAV file the caller plays")
    parser.add_argument("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN") or None)
    parser.add_argument("--out", default="heard.wav")
    parser.add_argument("--hold", type=float, default=2.0)
    parser.add_argument("--barge-after", type=float)
    parser.add_argument("--param", action="append", default=[], help="k=v custom parameter")
    parser.add_argument("--dtmf", action="append", default=[], help="SECONDS:DIGIT")
    parser.add_argument("--demo", action="store_true", help="call the local stack (EDGE_PORT)")
    args = parser.parse_args(argv)
    from sim.speech import speech

    if args.demo:
        port = os.environ.get("EDGE_PORT", "8080")
        args.url = args.url or f"ws://127.0.0.1:{port}/media"
        args.twiml_url = args.twiml_url or f"http://127.0.0.1:{port}/twiml"
        args.say = args.say or "Hello! I am calling to ask what your opening hours are this week."
    if not args.url or not (args.say or args.wav):
        parser.error("--url and one of --say/--wav are required (or --demo)")
    audio = _read_wav(args.wav) if args.wav else speech(args.say)
    barge = (
        BargeIn(args.barge_after, speech("Wait, sorry, let me interrupt you there."))
        if args.barge_after is not None
        else None
    )
    params = dict(p.split("=", 1) for p in args.param if "=" in p)
    dtmf = [(float(t), d) for t, _, d in (x.partition(":") for x in args.dtmf)]
    try:
        result = asyncio.run(
            place_call(
                args.url,
                audio,
                twiml_url=args.twiml_url,
                auth_token=args.auth_token,
                custom_parameters=params,
                hold_after_s=args.hold,
                barge_in=barge,
                dtmf=dtmf,
                signed_url=args.url if args.auth_token and not args.twiml_url else None,
            )
        )
    except (OSError, websockets.exceptions.InvalidHandshake, RuntimeError) as exc:
        print(f"twilio_call: cannot place the call on {args.url}: {exc}", file=sys.stderr)
        return 1
    _write_wav(args.out, result.heard)
    delay = f"{result.reply_delay_ms:.0f} ms" if result.reply_delay_ms is not None else "no reply"
    print(f"call {result.call_sid}: end of speech -> first reply audio: {delay}")
    print(
        f"frames sent {result.frames_sent} (speech {result.speech_frames}), received {result.frames_received}"
    )
    print(f"marks returned {len(result.marks_returned)}, clears {len(result.clears)}")
    if result.barge_in_at is not None:
        print(
            f"barge-in at {result.barge_in_at:.2f} s: clear after "
            f"{result.clear_after_barge_ms or float('nan'):.0f} ms, "
            f"reply played after the clear {result.played_after_clear_ms:.0f} ms"
        )
    if result.violations:
        print(f"protocol violations: {result.violations[:5]}")
    print(f"heard audio written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
