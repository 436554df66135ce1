"""``make smoke``: the dialect report's smoke test, same variables, same verdict.

Each run connects, updates the session in the configured dialect, appends ``AUDIO_MS`` of speech,
commits, asks for a response and waits up to ``TIMEOUT_MS`` for an audio delta (either event
name). One line per run, a summary, and exit 0 only if ``RUNS`` consecutive runs returned audio.
Without ``OPENAI_API_KEY`` it starts the local emulator itself; the code path is the same.

Combo C (``REALTIME_SCHEMA=live``, GPT-Live) has no commit or response.create: a run streams the
speech in real time and waits for the model's reply (:mod:`tools.smoke_live`).

Combo B (``REALTIME_SCHEMA=flat`` with the beta header) against an API that retired the beta
shape (the live one, since May 2026) fails at once with one line quoting the API's own message;
``auto`` goes on in GA as the worker does.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from shared.realtime_dialect import (
    AudioDelta,
    ErrorKind,
    RealtimeDialect,
    ServerError,
    SessionCreated,
)
from shared.realtime_handshake import Ready, RealtimeHandshake, Refused, SendText, SwitchDialect
from shared.runtime.settings import Settings, settings_or_exit
from tools.run_settings import RunSettings, run_settings_or_exit
from tools.smoke_live import live_run
from tools.smoke_run import RunResult, caller_speech


async def one_run(settings: Settings, runs: RunSettings, api_key: str) -> RunResult:
    """One run: a session opened by the gateway's own handshake core, then speech, a commit and
    a response; decided by the first audio delta (either event name). Combo C: a Live session
    (:func:`tools.smoke_live.live_run`)."""
    if settings.realtime_schema == "live":
        live = RunResult(False, f"live/{settings.realtime_model}")
        await live_run(settings, runs.audio_ms, runs.timeout_ms, api_key, live)
        return live
    config = settings.session_config()
    handshake = RealtimeHandshake.for_schema(
        config, settings.realtime_schema, settings.realtime_beta_header
    )
    t0 = time.monotonic()
    errors: Counter[str] = Counter()
    timeout = runs.timeout_ms / 1000
    result = RunResult(False, _label(handshake.dialect), errors=errors)
    for _attempt in range(2):  # a second attempt only after a dialect switch (auto)
        request = handshake.connect_request(settings.realtime_url, settings.realtime_model, api_key)
        result = RunResult(False, _label(handshake.dialect), errors=errors)
        try:
            async with asyncio.timeout(timeout):
                async with websockets.connect(
                    request.url, additional_headers=request.headers, max_size=1 << 24
                ) as ws:
                    switched = await _converse(ws, handshake, settings, runs, result, t0)
            if not switched:
                return result
            handshake = handshake.next_attempt()
        except TimeoutError:
            result.failure = result.failure or f"timed out after {runs.timeout_ms} ms"
            return result
        except InvalidStatus as exc:
            result.failure = f"HTTP {exc.response.status_code} at handshake"
            return result
        except (OSError, InvalidHandshake) as exc:
            result.failure = f"cannot connect to {settings.realtime_url}: {exc}"
            return result
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            step = handshake.closed(code, exc.rcvd.reason if exc.rcvd else "")
            if isinstance(step, SwitchDialect):
                if _stops_at_retirement(step, settings):
                    result.retired = result.failure = step.reason
                    return result
                handshake = handshake.next_attempt()
                continue
            result.failure = result.failure or (
                step.reason if isinstance(step, Refused) else f"connection closed: {exc}"
            )
            return result
    return result


def _stops_at_retirement(step: SwitchDialect, settings: Settings) -> bool:
    """A configured beta dialect refused as retired: the smoke test's verdict, where the worker
    would go on in GA (``auto`` goes on here too: that is what it is for)."""
    return step.beta_retired and settings.realtime_schema != "auto"


def retired_line(reason: str) -> str:
    """The one line ``make smoke`` prints when the API retired the beta shape."""
    return (
        "FAIL: the Realtime API retired the beta shape (combo B: REALTIME_SCHEMA=flat with "
        f"OpenAI-Beta: realtime=v1); it answered: {reason}; "
        "use REALTIME_SCHEMA=audio (combo A) or REALTIME_SCHEMA=live (combo C)"
    )


def _label(dialect: RealtimeDialect) -> str:
    return f"{dialect.schema}/beta_header={'1' if dialect.beta_header else '0'}"


async def _converse(  # type: ignore[no-untyped-def]
    ws, handshake: RealtimeHandshake, settings: Settings, runs: RunSettings, result, t0: float
) -> bool:
    """One session; True when the handshake says to try the other dialect (auto)."""
    dialect = handshake.dialect
    async for message in ws:
        if not handshake.done:
            event = dialect.parse(message)
            if isinstance(event, SessionCreated):
                result.session_ms = (time.monotonic() - t0) * 1000
            if isinstance(event, ServerError):
                result.errors[event.code or "unknown"] += 1
            for step in handshake.event(event):
                if isinstance(step, SendText):
                    await ws.send(step.text)
                elif isinstance(step, SwitchDialect):
                    if _stops_at_retirement(step, settings):
                        result.retired = result.failure = step.reason
                        return False
                    return True
                elif isinstance(step, Refused):
                    result.failure = f"server error {step.reason}"
                    return False
                elif isinstance(step, Ready):
                    pcm = caller_speech(runs.audio_ms, settings.pcm_rate)
                    chunk = settings.pcm_rate // 50 * 2
                    for i in range(0, len(pcm), chunk):
                        await ws.send(dialect.append_audio(pcm[i : i + chunk]))
                    await ws.send(json.dumps(dialect.commit()))
                    await ws.send(json.dumps(dialect.response_create()))
            continue
        event = dialect.parse(message)
        if isinstance(event, ServerError):
            result.errors[event.code or "unknown"] += 1
            if (
                event.kind in (ErrorKind.DIALECT_MISMATCH, ErrorKind.FATAL)
                or event.code == "invalid_value"
            ):
                result.failure = f"server error {event.code}: {event.message}"
                return False
        elif isinstance(event, AudioDelta):
            result.first_delta_ms = (time.monotonic() - t0) * 1000
            result.ok = True
            return False
    return False


def _ms(value: float | None) -> str:
    return f"{value:.0f}" if value is not None else "-"


async def smoke(settings: Settings, runs: RunSettings, api_key: str) -> int:
    streak = 0
    # The event that says the session is open: GPT-Live's session.started, Realtime's created.
    opened = "session.started" if settings.realtime_schema == "live" else "session.created"
    for run in range(1, runs.runs + 1):
        r = await one_run(settings, runs, api_key)
        if r.retired:  # no run can pass: one line says why, in the API's words
            print(retired_line(r.retired), flush=True)
            return 1
        errs = ",".join(f"{k}x{v}" for k, v in sorted(r.errors.items())) or "-"
        print(
            f"run {run:>3} {r.combo:<22} {opened} {_ms(r.session_ms):>6} ms  "
            f"first delta {_ms(r.first_delta_ms):>6} ms  errors {errs}"
            + ("" if r.ok else f"  FAILED: {r.failure}"),
            flush=True,
        )
        streak = streak + 1 if r.ok else 0
        if not r.ok:
            break
    ok = streak >= runs.runs
    print(
        f"summary: {streak}/{runs.runs} consecutive runs returned audio -> "
        f"{'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


async def main_async(settings: Settings, runs: RunSettings) -> int:
    if settings.openai_api_key is not None:
        return await smoke(settings, runs, settings.openai_api_key.get_secret_value())
    from sim.openai_realtime import RealtimeEmulator

    emulator = RealtimeEmulator(host="127.0.0.1", port=0)
    await emulator.start()
    try:
        # The emulator serves GPT-Live beside Realtime.
        url = emulator.live_url if settings.realtime_schema == "live" else emulator.url
        print(f"no OPENAI_API_KEY: smoke test against the local emulator at {url}", flush=True)
        local = settings.model_copy(update={"realtime_url": url})
        return await smoke(local, runs, "sk-local-emulator")
    finally:
        await emulator.stop()


def main() -> None:
    settings = settings_or_exit("smoke", any_combo=True)
    runs = run_settings_or_exit("smoke")
    sys.exit(asyncio.run(main_async(settings, runs)))


if __name__ == "__main__":
    main()
