"""Combo C's barge-in figure: how much of a reply the caller heard after the model stopped
sending it.

GPT-Live has no cancel and no truncate: when the caller talks over the model, the model stops
and its output stream carries silence from then on. Whatever the pipeline buffered ahead of real
time (in the transcoder, the edge, Twilio's buffer) the caller still hears after that moment;
the issue's bound is 200 ms.

``python -m bench.barge_in`` (also part of ``make bench`` with ``BENCH_DIALECTS`` naming
``live``): the emulator in this process (so its sessions can be read), the stages as real
processes over a real redis-server with ``REALTIME_SCHEMA=live``, and ``BENCH_BARGE_IN_CALLS``
(default 5) calls, one after another, each talking over the reply one second into it. Per call:
the wall-clock moment the model's output went quiet against the last moment of reply audio the
caller heard (the simulated Twilio's playback clock, on the same machine's wall clock). The
emulator does not stamp its deltas, so :class:`OutputClock` wraps its Live sessions' ``send``
in this process: the model stopped sending when its last delta with sound had been sent and its
audio had played out in real time (send time + the delta's duration), which is when a bridge
that buffers nothing would have stopped playing it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.pipeline import Procs, free_port, wait_port
from shared.audio import mulaw_decode
from sim.openai_realtime import RealtimeEmulator
from sim.speech import speech
from sim.twilio_call import BargeIn, place_call
from tools.local_redis import redis_server_argv

ROOT = Path(__file__).resolve().parent.parent
# Above the mu-law codec's idle noise: a sample this loud is reply audio, not silence.
SOUND = 64


# A pause this long in what the caller hears ends the interrupted reply (the model's answer to
# the interruption comes later, after the caller's turn and the model's own delay).
GAP_S = 0.15


def end_of_sound_s(heard: bytes, after_s: float) -> float | None:
    """Seconds since the call's start at which the sound playing at ``after_s`` ended: the
    last audible sample before the first pause of :data:`GAP_S` (``heard`` is mu-law at 8 kHz,
    one byte per sample slot); None if nothing was audible after ``after_s``."""
    start = max(0, int(after_s * 8000))
    pcm = np.abs(mulaw_decode(heard[start:]).astype(np.int32))
    loud = np.flatnonzero(pcm > SOUND)
    if loud.size == 0:
        return None
    gaps = np.flatnonzero(np.diff(loud) > GAP_S * 8000)
    last = loud[gaps[0]] if gaps.size else loud[-1]
    return (start + int(last) + 1) / 8000


def model_stopped_at(chunks: list[tuple[float, float, bool]], after_wall: float) -> float | None:
    """When the model stopped sending the reply it was sending at ``after_wall``: the real-time
    end of the last delta with sound before the first silent one (``chunks``: each delta's
    wall-clock span and whether it carried sound, in order)."""
    end = None
    for start, stop, sound in chunks:
        if stop <= after_wall:
            continue
        if not sound:
            return end if end is not None else start
        end = stop
    return end


def heard_after_stop_ms(
    heard: bytes, started_wall: float, barge_in_at: float, stopped_wall: float
) -> float:
    """Reply audio the caller heard after the model stopped sending it, in ms (0 if none)."""
    last = end_of_sound_s(heard, barge_in_at)
    if last is None:
        return 0.0
    return max(0.0, (started_wall + last - stopped_wall) * 1000)


class OutputClock:
    """Per Live session (by id), each output delta's real-time span (its send time, plus its
    duration) and whether it carried sound."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[tuple[float, float, bool]]] = {}
        self._original: Any = None

    def __enter__(self) -> OutputClock:
        from sim.openai_live import LiveSession

        original = self._original = LiveSession.send
        clock = self

        async def send(session: Any, event: dict[str, Any]) -> None:
            if event.get("type") == "session.output_audio.delta":
                pcm = np.frombuffer(base64.b64decode(event["delta"]), dtype="<i2")
                sound = bool(pcm.size) and int(np.abs(pcm.astype(np.int32)).max()) > SOUND
                now = time.time()
                span = (now, now + pcm.size / session.format.rate, sound)
                clock.chunks.setdefault(session.id, []).append(span)
            await original(session, event)

        LiveSession.send = send  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        from sim.openai_live import LiveSession

        LiveSession.send = self._original  # type: ignore[method-assign]


async def measure(calls: int | None = None) -> dict[str, Any]:
    calls = calls or int(os.environ.get("BENCH_BARGE_IN_CALLS", "5"))
    with tempfile.TemporaryDirectory(prefix="bench-barge-in-") as tmp:
        work = Path(tmp)
        procs = Procs(work)
        emulator = RealtimeEmulator()
        await emulator.start()
        clock = OutputClock().__enter__()
        redis_port, edge_port = free_port(), free_port()
        figures: list[float] = []
        missing = 0
        try:
            procs.start("redis", redis_server_argv(redis_port, work), dict(os.environ))
            wait_port(redis_port)
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("REALTIME_", "OPENAI_", "TWILIO_", "REDIS_", "EDGE_"))
            }
            env.update(
                REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
                REALTIME_SCHEMA="live",
                REALTIME_URL=emulator.live_url,
                REALTIME_GREETING="",
                EDGE_HOST="127.0.0.1",
                EDGE_PORT=str(edge_port),
                LOG_LEVEL="WARNING",
            )
            for name, module in (
                ("transcoder", "services.transcoder"),
                ("worker", "services.realtime_worker"),
                ("edge", "services.twilio_edge"),
            ):
                procs.start(name, [sys.executable, "-m", module], dict(env))
            wait_port(edge_port)
            question = speech("Could you tell me everything about the plans you offer today?")
            interruption = speech("Wait, stop, I have another question.")
            media = f"ws://127.0.0.1:{edge_port}/media"
            for i in range(calls):
                result = await place_call(
                    media,
                    question,
                    hold_after_s=1.0,
                    max_duration_s=40,
                    barge_in=BargeIn(after_s=1.0, audio=interruption),
                    custom_parameters={"instructions": f"barge-in call {i}"},
                )
                session = emulator.live_sessions[-1]
                if result.barge_in_at is None or result.started_wall is None:
                    missing += 1
                    continue
                barge_wall = result.started_wall + result.barge_in_at
                stopped = model_stopped_at(clock.chunks.get(session.id, []), barge_wall)
                if stopped is None:
                    missing += 1
                    continue
                figures.append(
                    heard_after_stop_ms(
                        result.heard, result.started_wall, result.barge_in_at, stopped
                    )
                )
        finally:
            clock.__exit__()
            procs.stop()
            await emulator.stop()
    return {
        "calls": len(figures),
        "calls_without_a_figure": missing,
        "heard_after_stop_ms": [round(f, 1) for f in figures],
        "heard_after_stop_ms_p50": float(np.median(figures)) if figures else float("nan"),
        "heard_after_stop_ms_max": float(max(figures)) if figures else float("nan"),
    }


def main() -> None:
    t0 = time.monotonic()
    result = asyncio.run(measure())
    print(
        f"combo C barge-in: reply heard after the model stopped sending p50 "
        f"{result['heard_after_stop_ms_p50']:.0f} ms, max {result['heard_after_stop_ms_max']:.0f}"
        f" ms over {result['calls']} calls ({time.monotonic() - t0:.0f} s)",
        flush=True,
    )
    out = ROOT / "bench" / "results" / "barge_in.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
