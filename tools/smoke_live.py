"""``make smoke`` for combo C (``REALTIME_SCHEMA=live``, GPT-Live): one run is one Live session.

A run connects to ``REALTIME_URL`` (no query string: the model goes in the session), sends
``session.start`` (model, instructions, ``audio.format`` ``audio/pcm`` at ``REALTIME_AUDIO_RATE``,
``audio.output.voice``) and nothing else until ``session.started``; then streams ``AUDIO_MS`` of
speech and silence after it as ``session.input_audio.append`` in real time (the Live API is
full duplex and paced: it hears a turn end in the audio itself, there is no commit), and passes
on the first ``session.output_audio.delta`` that carries sound (the output stream carries
silence as zero samples between replies). It ends with ``session.close``.

The payloads are checked against the official ``openai.types.live`` models in the tests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter
from typing import Any

import numpy as np
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from shared.runtime.settings import Settings

FRAME_MS = 20
# Silence after the speech, so that the model hears the caller's turn end.
TRAILING_SILENCE_MS = 800


def session_start(model: str, instructions: str, rate: int, voice: str) -> dict[str, Any]:
    """The first client event: the whole session configuration (immutable afterwards)."""
    return {
        "type": "session.start",
        "session": {
            "model": model,
            "instructions": instructions,
            "audio": {
                "format": {"type": "audio/pcm", "rate": rate},
                "output": {"voice": voice},
            },
        },
    }


def append(pcm16: bytes) -> str:
    return json.dumps(
        {"type": "session.input_audio.append", "audio": base64.b64encode(pcm16).decode()}
    )


def has_sound(delta_b64: str) -> bool:
    """Whether an output delta carries sound (the Live stream's silence is zero samples)."""
    pcm = np.frombuffer(base64.b64decode(delta_b64), dtype="<i2")
    return bool(pcm.size) and int(np.abs(pcm.astype(np.int32)).max()) > 64


def error_text(event: dict[str, Any]) -> tuple[str, str]:
    body = event.get("error") if isinstance(event.get("error"), dict) else {}
    assert isinstance(body, dict)
    return str(body.get("code") or "unknown"), str(body.get("message") or "")


async def live_run(  # type: ignore[no-untyped-def]
    settings: Settings, audio_ms: int, timeout_ms: int, api_key: str, result
) -> None:
    """One Live session; fills ``result`` (a :class:`tools.smoke.RunResult`)."""
    from tools.smoke import caller_speech

    errors: Counter[str] = result.errors
    t0 = time.monotonic()
    rate = settings.pcm_rate
    speech = caller_speech(audio_ms, rate)
    frame = rate * FRAME_MS // 1000 * 2
    silence = bytes(frame)
    frames = [speech[i : i + frame] for i in range(0, len(speech), frame)]
    frames += [silence] * (TRAILING_SILENCE_MS // FRAME_MS)
    try:
        async with asyncio.timeout(timeout_ms / 1000):
            async with websockets.connect(
                settings.realtime_url,
                additional_headers={"Authorization": f"Bearer {api_key}"},
                max_size=1 << 24,
            ) as ws:
                start = session_start(
                    settings.realtime_model,
                    settings.realtime_instructions,
                    rate,
                    settings.realtime_voice,
                )
                await ws.send(json.dumps(start))
                sender: asyncio.Task[None] | None = None
                try:
                    async for message in ws:
                        event = json.loads(message)
                        kind = event.get("type")
                        if kind == "error":
                            code, text = error_text(event)
                            errors[code] += 1
                            result.failure = f"server error {code}: {text}"
                            return
                        if kind == "session.started" and sender is None:
                            result.session_ms = (time.monotonic() - t0) * 1000
                            sender = asyncio.create_task(_stream(ws, frames, silence))
                        elif kind == "session.output_audio.delta" and has_sound(
                            str(event.get("delta", ""))
                        ):
                            result.first_delta_ms = (time.monotonic() - t0) * 1000
                            result.ok = True
                            if sender is not None:
                                sender.cancel()
                            await ws.send(json.dumps({"type": "session.close"}))
                            return
                        elif kind == "session.closed":
                            result.failure = f"session closed ({event.get('reason')}) before audio"
                            return
                finally:
                    if sender is not None:
                        sender.cancel()
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


async def _stream(ws: Any, frames: list[bytes], silence: bytes) -> None:
    """The caller's audio in real time, then silence until cancelled (a phone line never
    stops sending)."""
    start = time.monotonic()
    sent = 0
    try:
        while True:
            await ws.send(append(frames[sent] if sent < len(frames) else silence))
            sent += 1
            delay = start + sent * FRAME_MS / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    except ConnectionClosed:
        return  # the reader sees the close and says why
