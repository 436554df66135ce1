"""The probe's I/O: connect with each dialect, send what the gateway sends, record what comes back.

Payloads come from the gateway's own :class:`~shared.realtime_dialect.RealtimeDialect`, so the
probe tests exactly what the gateway would send; the negative checks mutate those payloads with
the dialect report's known rejections. Everything observed is written raw into
:mod:`tools.probe_findings` records (event type strings as spelt by the server, errors verbatim);
judging them is not this module's business. An endpoint that cannot be reached is a finding, not
an exception.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from shared.realtime_dialect import RealtimeDialect, RealtimeProtocolError, SessionConfig
from shared.realtime_handshake import Dropped, Ready, RealtimeHandshake, Refused, SwitchDialect
from tools.probe_errors import ErrorSeen
from tools.probe_findings import (
    BENIGN_CODES,
    COMBOS,
    COMMIT_EMPTY_CODE,
    NEGATIVE_CHECKS,
    Combo,
    NegativeCheck,
    NegativeFinding,
    ProbeFindings,
    RunFinding,
    SessionSeen,
    apply_mutations,
)

SPEECH_TEXT = "Hello, can you hear me? Please tell me the time in one short sentence."
CHUNK_MS = 100  # append in 100 ms pieces: a commit needs at least that much audio
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Target:
    """Where and how hard to probe. ``api_key`` is only ever put in the Authorization header."""

    url: str
    models: list[str]
    api_key: str
    runs: int = 10
    audio_ms: int = 600
    timeout_ms: int = 8000
    concurrency: int = 4

    @property
    def timeout_s(self) -> float:
        return self.timeout_ms / 1000


def voiced_signal(samples: int, rate: int) -> np.ndarray:
    """Speech-like int16 audio: a gliding ~140 Hz harmonic voice in 4 Hz syllables.

    The fallback when ``sim.speech`` is not there; server VAD must hear it as speech, which pure
    tones and noise often are not.
    """
    t = np.arange(samples) / rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 1.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    harmonics = np.arange(1, 16)[:, None]
    # A crude vowel: harmonics near 700 Hz and 1200 Hz (formants) louder than the rest.
    freq = harmonics * 140.0
    weight = (
        1 / harmonics
        + 0.8 * np.exp(-(((freq - 700) / 200) ** 2))
        + 0.5 * np.exp(-(((freq - 1200) / 250) ** 2))
    )
    voice = (weight * np.sin(harmonics * phase)).sum(axis=0)
    syllables = 0.55 - 0.45 * np.cos(2 * np.pi * 4 * t)
    signal = voice * syllables
    peak = float(np.max(np.abs(signal))) or 1.0
    result: np.ndarray = (signal / peak * 0.4 * 32767).astype(np.int16)
    return result


def input_audio(audio_ms: int, rate: int) -> tuple[bytes, str]:
    """``audio_ms`` of PCM16 mono speech at ``rate``, and where it came from."""
    samples = rate * audio_ms // 1000
    try:
        from sim.speech import speech

        audio = np.asarray(speech(SPEECH_TEXT, rate=rate), dtype=np.int16)
        source = "sim.speech"
    except ImportError:
        audio = np.zeros(0, dtype=np.int16)
        source = "synthetic voiced signal"
    if audio.size == 0:
        audio, source = voiced_signal(samples, rate), "synthetic voiced signal"
    audio = np.tile(audio, math.ceil(samples / audio.size))[:samples]
    return audio.tobytes(), f"{source}, {audio_ms} ms at {rate} Hz"


def _headers(request: Any) -> list[tuple[str, str]]:
    raw = request.headers
    return list(raw.items()) if hasattr(raw, "items") else [tuple(h) for h in raw]


def redacted(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Headers fit for a report: the Authorization value never leaves this process."""
    return {k: ("Bearer <redacted>" if k.lower() == "authorization" else v) for k, v in headers}


def describe_connect_error(exc: BaseException, url: str, timeout_ms: int) -> str:
    """One line saying why a connection failed, without a traceback."""
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'wss' else 80)}"
    if isinstance(exc, InvalidStatus):
        body = (exc.response.body or b"").decode("utf-8", "replace").strip()[:300]
        return f"HTTP {exc.response.status_code} from {where}" + (f": {body}" if body else "")
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup of {parts.hostname} failed: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(exc, TimeoutError):
        return f"no WebSocket handshake with {where} within {timeout_ms} ms"
    if isinstance(exc, OSError):
        return f"cannot reach {where}: {exc.strerror or exc}"
    return f"WebSocket handshake with {where} failed: {exc}"


class _Exchange:
    """One connection's receiving side: records every server event into a :class:`RunFinding`."""

    def __init__(self, ws: ClientConnection, finding: RunFinding, dialect: Any, started: float):
        self.ws, self.finding, self.dialect, self.started = ws, finding, dialect, started
        self.loop = asyncio.get_running_loop()
        self.phase = "session.created"
        self.ids: dict[str, str] = {}  # client event_id -> what it was
        self.response_sent_at: float | None = None
        self.response_done = False
        # The worker's own handshake, fed the same events: what the gateway would decide.
        self.handshake = RealtimeHandshake(
            dialect.config, dialect.combo, negotiate=False, beta_header=dialect.beta_header
        )

    async def send(self, payload: dict[str, Any] | str, event_id: str | None = None) -> None:
        """Send a client event; ``event_id`` (kept if the dialect set one) ties errors to it."""
        if isinstance(payload, dict) and event_id:
            payload = {**payload, "event_id": payload.get("event_id") or event_id}
            self.ids[payload["event_id"]] = event_id
        await self.ws.send(payload if isinstance(payload, str) else json.dumps(payload))

    async def until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Record events until ``done()`` or the timeout; False on timeout."""
        deadline = self.loop.time() + timeout_s
        while not done():
            remaining = deadline - self.loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(self.ws.recv(), remaining)
            except TimeoutError:
                self.finding.timed_out = True
                return False
            self.record(message)
        return True

    def record(self, message: str | bytes) -> None:
        f, now = self.finding, self.loop.time()
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        try:
            event = json.loads(text)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            event = {"type": "<not a JSON object>"}
        etype = str(event.get("type"))
        f.event_types[etype] = f.event_types.get(etype, 0) + 1
        parsed = self._parse(text)
        if etype == "session.created" and f.session_created is None:
            seen = SessionSeen.from_session(event.get("session"))
            f.session_created = replace(seen, gateway_reads=getattr(parsed, "dialect_seen", None))
            f.ms_to_session_created = round((now - self.started) * 1000, 1)
        elif etype == "session.updated" and f.session_update_result == "no answer":
            f.session_update_result = "accepted"
        elif etype == "response.created" and f.response_result == "no answer":
            f.response_result = "accepted"
        elif etype == "response.done":
            self.response_done = True
        elif etype == "error":
            kind = getattr(parsed, "kind", None)
            self._error(
                replace(ErrorSeen.from_event(event), gateway_kind=getattr(kind, "value", None))
            )
        if "transcript" in etype:
            # The reply's transcript only; the caller's input transcription is in event_types.
            if etype.startswith("response.") and etype not in f.transcript_types:
                f.transcript_types.append(etype)
        elif "audio" in etype and etype.endswith(".delta"):
            if etype not in f.audio_types:
                f.audio_types.append(etype)
            if f.audio_deltas == 0:
                since = self.response_sent_at or self.started
                f.ms_to_first_audio = round((now - since) * 1000, 1)
            f.audio_deltas += 1

    def _parse(self, text: str) -> object | None:
        """What the gateway's dialect layer makes of the event; counted by class name."""
        try:
            parsed: object | None = self.dialect.parse(text)
            name = type(parsed).__name__
        except RealtimeProtocolError:
            parsed, name = None, "RealtimeProtocolError"
        self.finding.parsed[name] = self.finding.parsed.get(name, 0) + 1
        if parsed is not None and not self.handshake.done:
            self.handshake.event(parsed)  # type: ignore[arg-type]  # a ServerEvent
            self.finding.gateway_verdict = _verdict(self.handshake.outcome)
        return parsed

    def _error(self, error: ErrorSeen) -> None:
        f = self.finding
        if error.code == COMMIT_EMPTY_CODE:
            f.commit_empty = True
            return
        target = self.ids.get(error.event_id or "")
        if target is None and error.code not in BENIGN_CODES and not error.beta_disabled:
            target = self.phase  # the server did not echo our event_id: blame what is pending
        if target == "session.update" and f.session_update_result == "no answer":
            f.session_update_result, f.session_update_error = "rejected", error
        elif target == "response.create" and f.response_result == "no answer":
            f.response_result, f.response_error = "rejected", error
        else:
            f.other_errors.append(error)

    def has_session(self) -> bool:
        # Not satisfied by an error: a server refusing the dialect closes the socket next, and
        # the close code is part of the finding (4000 for beta_api_shape_disabled).
        return self.finding.session_created is not None

    async def session_update(self, payload: dict[str, Any], timeout_s: float) -> None:
        self.phase = "session.update"
        self.finding.session_update_result = "no answer"
        await self.send(payload, "session.update")
        await self.until(lambda: self.finding.session_update_result != "no answer", timeout_s)
        self.phase = "audio"

    async def response_create(self, payload: dict[str, Any]) -> None:
        self.phase = "response.create"
        self.finding.response_result = "no answer"
        self.response_sent_at = self.loop.time()
        await self.send(payload, "response.create")


async def _exchange(
    target: Target,
    model: str,
    dialect: RealtimeDialect,
    finding: RunFinding,
    unreachable: dict[str, str],
    script: Callable[[_Exchange], Awaitable[None]],
) -> None:
    """Connect as ``dialect`` would, wait for session.created and run ``script``.

    Every failure (unreachable, HTTP error, timeout, close) ends up in ``finding``, never raised.
    """
    request = dialect.connect_request(target.url, model, target.api_key)
    headers = _headers(request)
    finding.url, finding.headers = request.url, redacted(headers)
    host = urlsplit(request.url).netloc
    if host in unreachable:  # one network failure per host is enough: do not wait out every run
        finding.connect_error = f"{unreachable[host]} (not retried)"
        return
    loop = asyncio.get_running_loop()
    started = loop.time()
    options: dict[str, Any] = {}
    if urlsplit(request.url).hostname in LOOPBACK:
        options["proxy"] = None  # the emulator is local: never route it through a proxy
    try:
        ws = await connect(
            request.url,
            additional_headers=headers,
            open_timeout=target.timeout_s,
            close_timeout=2,
            max_size=16 * 2**20,
            **options,
        )
    except (OSError, TimeoutError, WebSocketException) as exc:
        finding.connect_error = describe_connect_error(exc, request.url, target.timeout_ms)
        if isinstance(exc, OSError):  # refused, DNS, timeout: the host, not the dialect
            unreachable.setdefault(host, finding.connect_error)
        return
    exchange = _Exchange(ws, finding, dialect, started)
    try:
        async with ws:
            if await exchange.until(exchange.has_session, target.timeout_s):
                await script(exchange)
    except ConnectionClosed as exc:
        close = exc.rcvd
        finding.close_code = close.code if close else 1006
        finding.close_reason = close.reason if close else "closed without a close frame"
        if not exchange.handshake.done:
            exchange.handshake.closed(finding.close_code, finding.close_reason)
            finding.gateway_verdict = _verdict(exchange.handshake.outcome)


def _verdict(step: object) -> str | None:
    """A handshake outcome in the report's words."""
    if isinstance(step, Ready):
        return "ready"
    if isinstance(step, Refused | SwitchDialect):
        return f"{'refused' if isinstance(step, Refused) else 'switch'}: {step.reason}"
    if isinstance(step, Dropped):
        return "dropped"
    return None


async def probe_run(
    target: Target,
    model: str,
    combo: Combo,
    run: int,
    config: SessionConfig,
    pcm: bytes,
    unreachable: dict[str, str],
) -> RunFinding:
    """One run of one combination: session.update, audio, commit, response.create, audio back."""
    finding = RunFinding(model=model, schema=combo.schema, beta_header=combo.beta_header, run=run)
    chunk = len(pcm) * CHUNK_MS // max(1, target.audio_ms) // 2 * 2 or len(pcm)
    dialect = RealtimeDialect(combo.schema, combo.beta_header, config)
    finding.session_update = dialect.session_update()
    finding.response_create = dialect.response_create()

    async def script(ex: _Exchange) -> None:
        f = ex.finding
        await ex.session_update(finding.session_update or {}, target.timeout_s)
        for start in range(0, len(pcm), chunk):
            await ex.send(dialect.append_audio(pcm[start : start + chunk]))
        await ex.send(dialect.commit(), "commit")
        await ex.response_create(finding.response_create or {})
        await ex.until(
            lambda: (
                f.response_result == "rejected"
                or ex.response_done
                or (f.audio_deltas > 0 and any(t.endswith(".delta") for t in f.transcript_types))
            ),
            target.timeout_s,
        )

    await _exchange(target, model, dialect, finding, unreachable, script)
    return finding


async def probe_negative(
    target: Target,
    model: str,
    check: NegativeCheck,
    config: SessionConfig,
    unreachable: dict[str, str],
) -> NegativeFinding:
    """Send one known-rejected payload and record the server's exact answer."""
    dialect = RealtimeDialect(check.combo.schema, check.combo.beta_header, config)
    valid_update = dialect.session_update()
    base = valid_update if check.target == "session.update" else dialect.response_create()
    result = NegativeFinding(
        model=model, check=check.id, payload=apply_mutations(base, check.mutations)
    )
    scratch = RunFinding(
        model=model, schema=check.combo.schema, beta_header=check.combo.beta_header, run=0
    )

    async def script(ex: _Exchange) -> None:
        if check.target == "session.update":
            await ex.session_update(result.payload or {}, target.timeout_s)
            return
        await ex.session_update(valid_update, target.timeout_s)
        await ex.response_create(result.payload or {})
        await ex.until(lambda: scratch.response_result != "no answer", target.timeout_s)

    await _exchange(target, model, dialect, scratch, unreachable, script)
    if check.target == "session.update":
        outcome, error = scratch.session_update_result, scratch.session_update_error
    else:
        outcome, error = scratch.response_result, scratch.response_error
    result.close_code, result.close_reason = scratch.close_code, scratch.close_reason
    result.connect_error = scratch.connect_error
    if scratch.connect_error:
        result.result = "unreachable"
    elif scratch.beta_disabled:
        result.result, result.error = "retired", error or next(iter(scratch.errors), None)
    elif scratch.session_created is None:
        result.result = "no session"
    elif outcome in ("accepted", "rejected"):
        result.result, result.error = outcome, error
    elif scratch.close_code is not None:
        result.result = "closed"
    return result


async def probe(
    target: Target,
    config: SessionConfig,
    *,
    generated_at: str,
    emulator: bool,
    voice: str,
) -> ProbeFindings:
    """Every model x combination ``target.runs`` times plus the negative checks, a few at once."""
    gate = asyncio.Semaphore(max(1, target.concurrency))
    unreachable: dict[str, str] = {}
    audio: dict[int, tuple[bytes, str]] = {}

    def pcm_for(combo: Combo) -> bytes:
        # The flat dialect's pcm16 is 24 kHz by definition; the audio schema's rate is configured.
        rate = int(getattr(config, "rate", 24000)) if combo.schema == "audio" else 24000
        if rate not in audio:
            audio[rate] = input_audio(target.audio_ms, rate)
        return audio[rate][0]

    async def bounded(job: Awaitable[Any]) -> Any:
        async with gate:
            return await job

    runs = [
        probe_run(target, model, combo, run, config, pcm_for(combo), unreachable)
        for model in target.models
        for run in range(1, target.runs + 1)
        for combo in COMBOS
    ]
    negatives = [
        probe_negative(target, model, check, config, unreachable)
        for model in target.models
        for check in NEGATIVE_CHECKS
    ]
    results = await asyncio.gather(*(bounded(job) for job in runs + negatives))
    return ProbeFindings(
        generated_at=generated_at,
        url=target.url,
        models=list(target.models),
        emulator=emulator,
        runs=target.runs,
        audio_ms=target.audio_ms,
        timeout_ms=target.timeout_ms,
        voice=voice,
        audio_source="; ".join(dict.fromkeys(source for _, source in audio.values())),
        run_findings=[r for r in results if isinstance(r, RunFinding)],
        negatives=[n for n in results if isinstance(n, NegativeFinding)],
    )
