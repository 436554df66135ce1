"""``make smoke``: the dialect report's smoke test, same variables, same verdict.

Each run connects, updates the session in the configured dialect, appends ``AUDIO_MS`` of speech,
commits, asks for a response and waits up to ``TIMEOUT_MS`` for an audio delta (either event
name). One line per run, a summary, and exit 0 only if ``RUNS`` consecutive runs returned audio.
Without ``OPENAI_API_KEY`` it starts the local emulator itself; the code path is the same.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from shared.audio import StreamResampler
from shared.realtime_dialect import (
    AudioDelta,
    DialectNegotiator,
    RealtimeDialect,
    ServerError,
    SessionCreated,
    SessionUpdated,
    dialect_from_settings,
)
from shared.runtime.settings import Settings, settings_or_exit


def caller_speech(ms: int, rate: int) -> bytes:
    """Speech-like PCM16 at ``rate`` (the simulator's voice when present)."""
    try:
        from sim.speech import speech

        audio8k = speech("Hello, can you hear me? I would like to check my order status.")
    except ImportError:
        t = np.arange(8000 * 3) / 8000
        audio8k = (
            6000 * np.sin(2 * np.pi * 140 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
        ).astype(np.int16)
    need = ms * 8
    audio8k = np.resize(audio8k, need) if audio8k.size < need else audio8k[:need]
    if rate == 8000:
        return audio8k.tobytes()
    return StreamResampler(8000, rate).process(audio8k).tobytes()


@dataclass
class RunResult:
    ok: bool
    combo: str
    session_ms: float | None = None
    first_delta_ms: float | None = None
    errors: Counter[str] = field(default_factory=Counter)
    failure: str = ""


async def one_run(settings: Settings, api_key: str) -> RunResult:
    plan = dialect_from_settings(settings)
    dialect: RealtimeDialect = plan.current if isinstance(plan, DialectNegotiator) else plan
    t0 = time.monotonic()
    errors: Counter[str] = Counter()
    timeout = settings.timeout_ms / 1000
    for _attempt in range(2):
        request = dialect.connect_request(settings.realtime_url, settings.realtime_model, api_key)
        label = f"{dialect.schema}/beta_header={'1' if dialect.beta_header else '0'}"
        result = RunResult(False, label, errors=errors)
        try:
            async with asyncio.timeout(timeout):
                async with websockets.connect(
                    request.url, additional_headers=request.headers, max_size=1 << 24
                ) as ws:
                    switched = await _converse(ws, dialect, plan, settings, result, t0)
            if switched is None:
                return result
            dialect = switched
        except TimeoutError:
            result.failure = result.failure or f"timed out after {settings.timeout_ms} ms"
            return result
        except InvalidStatus as exc:
            result.failure = f"HTTP {exc.response.status_code} at handshake"
            return result
        except (OSError, InvalidHandshake) as exc:
            result.failure = f"cannot connect to {settings.realtime_url}: {exc}"
            return result
        except ConnectionClosed as exc:
            result.failure = result.failure or f"connection closed: {exc}"
            if isinstance(plan, DialectNegotiator) and exc.rcvd is not None:
                step = plan.on_close(exc.rcvd.code, exc.rcvd.reason)
                if step is not None and hasattr(step, "to"):
                    dialect = plan.current
                    continue
            return result
    return result


async def _converse(ws, dialect, plan, settings, result, t0):  # type: ignore[no-untyped-def]
    """One session; the dialect to switch to under ``auto``, or None when the run is decided."""
    sent_audio = False
    async for message in ws:
        event = dialect.parse(message)
        if isinstance(event, ServerError):
            result.errors[event.code or "unknown"] += 1
            if isinstance(plan, DialectNegotiator):
                step = plan.on_event(event)
                if step is not None and hasattr(step, "to"):
                    return plan.current
            if event.kind.name in ("DIALECT_MISMATCH", "FATAL") or event.code in ("invalid_value",):
                result.failure = f"server error {event.code}: {event.message}"
                return None
            continue
        if isinstance(event, SessionCreated):
            result.session_ms = (time.monotonic() - t0) * 1000
            await ws.send(json.dumps(dialect.session_update()))
        elif isinstance(event, SessionUpdated) and not sent_audio:
            if isinstance(plan, DialectNegotiator):
                plan.on_event(event)
            sent_audio = True
            pcm = caller_speech(settings.audio_ms, settings.pcm_rate)
            step = settings.pcm_rate // 50 * 2
            for i in range(0, len(pcm), step):
                await ws.send(dialect.append_audio(pcm[i : i + step]))
            await ws.send(json.dumps(dialect.commit()))
            await ws.send(json.dumps(dialect.response_create()))
        elif isinstance(event, AudioDelta):
            result.first_delta_ms = (time.monotonic() - t0) * 1000
            result.ok = True
            return None
    return None


async def smoke(settings: Settings, api_key: str) -> int:
    streak = 0
    for run in range(1, settings.runs + 1):
        r = await one_run(settings, api_key)
        errs = ",".join(f"{k}x{v}" for k, v in sorted(r.errors.items())) or "-"
        fmt = lambda v: f"{v:.0f}" if v is not None else "-"  # noqa: E731
        print(
            f"run {run:>3} {r.combo:<22} session.created {fmt(r.session_ms):>6} ms  "
            f"first delta {fmt(r.first_delta_ms):>6} ms  errors {errs}"
            + ("" if r.ok else f"  FAILED: {r.failure}"),
            flush=True,
        )
        streak = streak + 1 if r.ok else 0
        if not r.ok:
            break
    ok = streak >= settings.runs
    print(
        f"summary: {streak}/{settings.runs} consecutive runs returned audio -> "
        f"{'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


async def main_async(settings: Settings) -> int:
    if settings.openai_api_key is not None:
        return await smoke(settings, settings.openai_api_key.get_secret_value())
    from sim.openai_realtime import RealtimeEmulator

    emulator = RealtimeEmulator(host="127.0.0.1", port=0)
    await emulator.start()
    try:
        print(
            f"no OPENAI_API_KEY: smoke test against the local emulator at {emulator.url}",
            flush=True,
        )
        local = settings.model_copy(update={"realtime_url": emulator.url})
        return await smoke(local, "sk-local-emulator")
    finally:
        await emulator.stop()


def main() -> None:
    settings = settings_or_exit("smoke", any_combo=True)
    sys.exit(asyncio.run(main_async(settings)))


if __name__ == "__main__":
    main()
