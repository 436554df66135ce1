"""``make smoke`` for combo C (``REALTIME_SCHEMA=live``, GPT-Live): one run is one Live session,
opened by the gateway's own Live core (:mod:`shared.live_dialect`).

A run connects to ``REALTIME_URL`` (no query string: the model goes in the session), sends
``session.start`` (model, instructions, ``audio.format`` ``audio/pcm`` at ``REALTIME_AUDIO_RATE``,
``audio.output.voice``) and nothing else until ``session.started``; then streams ``AUDIO_MS`` of
speech and silence after it as ``session.input_audio.append`` in real time (the Live API is
full duplex and paced: it hears a turn end in the audio itself, there is no commit), and passes
on the first ``session.output_audio.delta`` that carries sound (the output stream carries
silence as zero samples between replies). It ends with ``session.close``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from shared import live_dialect as live
from shared.runtime.settings import Settings
from tools.smoke_run import RunResult, caller_speech

FRAME_MS = 20
# Silence after the speech, so that the model hears the caller's turn end.
TRAILING_SILENCE_MS = 800


def live_config(settings: Settings, rate: int | None = None) -> live.LiveConfig:
    """The session the smoke test starts: the configured model, instructions, voice and rate
    (no tools: the smoke test is about audio)."""
    return live.LiveConfig(
        model=settings.realtime_model,
        instructions=settings.realtime_instructions,
        voice=settings.realtime_voice,
        rate=rate or settings.pcm_rate,
    )


def has_sound(pcm16: bytes) -> bool:
    """Whether an output delta carries sound (the Live stream's silence is zero samples)."""
    pcm = np.frombuffer(pcm16, dtype="<i2")
    return bool(pcm.size) and int(np.abs(pcm.astype(np.int32)).max()) > 64


def speech_frames(speech: bytes, rate: int) -> tuple[list[bytes], bytes]:
    """The caller's speech in 20 ms frames with trailing silence, and one frame of silence."""
    frame = rate * FRAME_MS // 1000 * 2
    silence = bytes(frame)
    frames = [speech[i : i + frame] for i in range(0, len(speech), frame)]
    return frames + [silence] * (TRAILING_SILENCE_MS // FRAME_MS), silence


async def live_run(
    settings: Settings, audio_ms: int, timeout_ms: int, api_key: str, result: RunResult
) -> None:
    """One Live session; fills ``result``."""
    t0 = time.monotonic()
    try:
        config = live_config(settings)
        request = live.connect_request(settings.realtime_url, api_key)
    except live.LiveConfigError as exc:
        result.failure = str(exc)
        return
    frames, silence = speech_frames(caller_speech(audio_ms, config.rate), config.rate)
    opening = live.LiveOpening(config)
    sender: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(timeout_ms / 1000):
            async with websockets.connect(
                request.url, additional_headers=request.headers, max_size=1 << 24
            ) as ws:
                await ws.send(opening.first)
                async for message in ws:
                    try:
                        event = opening.receive(message)
                    except live.LiveProtocolError:
                        result.errors["unparseable"] += 1
                        continue
                    if isinstance(event, live.LiveError):
                        result.errors[event.code or "unknown"] += 1
                        result.failure = f"server error {event.code}: {event.message}"
                        return
                    if isinstance(event, live.Started) and sender is None:
                        result.session_ms = (time.monotonic() - t0) * 1000
                        sender = asyncio.create_task(_stream(ws, frames, silence))
                    elif isinstance(event, live.OutputAudio) and has_sound(event.audio):
                        result.first_delta_ms = (time.monotonic() - t0) * 1000
                        result.ok = True
                        await ws.send(json.dumps(live.session_close()))
                        return
                    elif isinstance(event, live.Closed):
                        result.failure = f"session closed ({event.reason}) before audio"
                        return
                result.failure = result.failure or "connection closed before audio"
    except TimeoutError:
        result.failure = result.failure or f"timed out after {timeout_ms} ms"
    except InvalidStatus as exc:
        result.failure = f"HTTP {exc.response.status_code} at handshake"
    except (OSError, InvalidHandshake) as exc:
        result.failure = f"cannot connect to {settings.realtime_url}: {exc}"
    except ConnectionClosed as exc:
        close = exc.rcvd.code if exc.rcvd else 1006
        reason = exc.rcvd.reason if exc.rcvd else ""
        result.failure = result.failure or f"connection closed: {close} {reason}".strip()
    finally:
        if sender is not None:
            sender.cancel()


async def _stream(ws: Any, frames: list[bytes], silence: bytes) -> None:
    """The caller's audio in real time, then silence until cancelled (a phone line never
    stops sending)."""
    start = time.monotonic()
    sent = 0
    try:
        while True:
            await ws.send(live.append_audio(frames[sent] if sent < len(frames) else silence))
            sent += 1
            delay = start + sent * FRAME_MS / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    except ConnectionClosed:
        return  # the reader sees the close and says why
