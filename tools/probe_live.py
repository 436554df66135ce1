"""``make probe`` for combo C (GPT-Live, ``/v1/live/sessions``): what the endpoint accepted and
refused, beside the Realtime combos A and B.

Two kinds of findings, both raw (errors verbatim, close codes as sent):

* **runs** (``RUNS`` of them): ``session.start`` in the gateway's shape (``audio/pcm`` at
  ``REALTIME_AUDIO_RATE``), then ``AUDIO_MS`` of speech and silence streamed in real time; a run
  works when an output delta with sound comes back (the Live output carries silence as zeros);
* **checks**: one connection each, sending one shape and recording whether the endpoint
  answered ``session.started`` (accepted) or an ``error`` / a close (refused): the formats and
  rates the types allow and some they do not, a model in the URL, a command before
  ``session.start``, a second ``session.start``, unknown fields, the Realtime shape.

The judgement (:func:`summarise_live`) and the rendering are pure; :func:`probe_live` is the
network part.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from shared import live_dialect as live
from tools.probe_errors import ErrorSeen, trim
from tools.smoke_live import has_sound, speech_frames

LIVE_PATH = "/v1/live/sessions"
LIVE_MODEL = live.LIVE_MODEL
Outcome = Literal["accepted", "refused", "closed", "no answer", "unreachable"]


def live_url_beside(realtime_url: str) -> str:
    """The Live endpoint on the same host as a Realtime URL (no query string)."""
    parts = urlsplit(realtime_url)
    return urlunsplit((parts.scheme, parts.netloc, LIVE_PATH, "", ""))


@dataclass(frozen=True)
class LiveCheck:
    """One shape sent to the Live endpoint, and what the types and the docs expect of it."""

    id: str
    says: str  # what is being tried, for the report
    expect: Literal["accepted", "refused"]
    first: tuple[str, ...] = ()  # client events sent before session.start (raw JSON)
    start: dict[str, Any] | None = None  # mutations of the session config: path -> value
    drop: tuple[str, ...] = ()  # dotted paths removed from the session config
    again: bool = False  # a second session.start after session.started
    model_in_url: bool = False


LIVE_CHECKS: tuple[LiveCheck, ...] = (
    LiveCheck("pcm_24000", "`audio/pcm` at 24000", "accepted"),
    LiveCheck("pcm_16000", "`audio/pcm` at 16000", "accepted", start={"audio.format.rate": 16000}),
    LiveCheck(
        "pcmu_8000",
        "`audio/pcmu` at 8000",
        "accepted",
        start={"audio.format": {"type": "audio/pcmu", "rate": 8000}},
    ),
    LiveCheck("pcm_8000", "`audio/pcm` at 8000", "refused", start={"audio.format.rate": 8000}),
    LiveCheck(
        "pcm_without_rate", "`audio/pcm` without a rate", "refused", drop=("audio.format.rate",)
    ),
    LiveCheck("no_model", "`session.start` without `model`", "refused", drop=("model",)),
    LiveCheck("model_in_url", "the model in the URL (`?model=`)", "refused", model_in_url=True),
    LiveCheck(
        "append_before_start",
        "`session.input_audio.append` before `session.start`",
        "refused",
        first=(live.append_audio(bytes(640)),),
    ),
    LiveCheck("second_start", "a second `session.start`", "refused", again=True),
    LiveCheck(
        "unknown_field",
        "an unknown field (`session.turn_detection`)",
        "refused",
        start={"turn_detection": {"type": "server_vad"}},
    ),
    LiveCheck(
        "realtime_update_first",
        "Realtime's `session.update` as the first command",
        "refused",
        first=(json.dumps({"type": "session.update", "session": {"type": "realtime"}}),),
    ),
)


@dataclass
class LiveCheckFinding:
    check: str
    outcome: Outcome = "no answer"
    error: ErrorSeen | None = None
    close_code: int | None = None
    close_reason: str | None = None
    connect_error: str | None = None
    started: dict[str, Any] | None = None  # session.started's session, trimmed

    @property
    def spec(self) -> LiveCheck:
        return next(c for c in LIVE_CHECKS if c.id == self.check)

    @property
    def as_expected(self) -> bool:
        if self.spec.expect == "accepted":
            return self.outcome == "accepted"
        return self.outcome in ("refused", "closed")


@dataclass
class LiveRunFinding:
    run: int
    ok: bool = False
    ms_to_started: float | None = None
    ms_to_first_sound: float | None = None  # from the first caller frame
    event_types: dict[str, int] = field(default_factory=dict)
    errors: list[ErrorSeen] = field(default_factory=list)
    failure: str = ""


@dataclass
class LiveFindings:
    url: str
    model: str
    rate: int
    runs: list[LiveRunFinding] = field(default_factory=list)
    checks: list[LiveCheckFinding] = field(default_factory=list)


def summarise_live(findings: LiveFindings) -> tuple[str, str]:
    """(status, detail) of combo C: works / flaky / no audio / refused / unreachable."""
    runs = findings.runs
    ok = sum(r.ok for r in runs)
    if runs and ok == len(runs):
        return "works", f"{ok}/{len(runs)} runs returned audio"
    if ok:
        return "flaky", f"{ok}/{len(runs)} runs returned audio"
    failures = [r.failure for r in runs if r.failure]
    if failures and all(f.startswith("cannot connect") for f in failures):
        return "unreachable", failures[0]
    errors = [e for r in runs for e in r.errors]
    if errors:
        return "refused", f"{errors[0].code}: {errors[0].message}"
    return "no audio", failures[0] if failures else "no run"


# --- the network --------------------------------------------------------------------------------


def _config(model: str, rate: int, voice: str, instructions: str) -> dict[str, Any]:
    """The gateway's own ``session.start`` session (no tools), which the checks vary."""
    config = live.LiveConfig(model=model, instructions=instructions, voice=voice, rate=rate)
    return dict(live.session_start(config)["session"])


def _mutate(config: dict[str, Any], check: LiveCheck) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(config))
    for path, value in (check.start or {}).items():
        *parents, last = path.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    for path in check.drop:
        *parents, last = path.split(".")
        node = out
        for key in parents:
            node = node.get(key, {})
        node.pop(last, None)
    return out


async def _check(
    url: str, api_key: str, config: dict[str, Any], check: LiveCheck, timeout_s: float
) -> LiveCheckFinding:
    found = LiveCheckFinding(check.id)
    target = f"{url}?model={config.get('model', LIVE_MODEL)}" if check.model_in_url else url
    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        async with asyncio.timeout(timeout_s):
            async with websockets.connect(target, additional_headers=headers) as ws:
                for text in check.first:
                    await ws.send(text)
                start = {"type": "session.start", "session": _mutate(config, check)}
                await ws.send(json.dumps(start))
                async for message in ws:
                    event = json.loads(message)
                    kind = event.get("type")
                    if kind == "error":
                        found.outcome, found.error = "refused", ErrorSeen.from_event(event)
                        return found
                    if kind == "session.started":
                        found.started = trim(event.get("session"))
                        if check.again and found.outcome == "no answer":
                            found.outcome = "accepted"  # the first one: now the second
                            await ws.send(json.dumps(start))
                            continue
                        found.outcome = "accepted"
                        if not check.again:
                            return found
    except TimeoutError:
        pass  # a second start left unanswered: accepted stays the verdict
    except InvalidStatus as exc:
        found.outcome, found.connect_error = "refused", f"HTTP {exc.response.status_code}"
    except (OSError, InvalidHandshake) as exc:
        found.outcome, found.connect_error = "unreachable", str(exc)
    except ConnectionClosed as exc:
        if exc.rcvd is not None:
            found.close_code, found.close_reason = exc.rcvd.code, exc.rcvd.reason
        if found.outcome != "refused":
            found.outcome = "closed"
    return found


async def _run(
    url: str,
    api_key: str,
    config: dict[str, Any],
    run: int,
    speech: bytes,
    timeout_s: float,
) -> LiveRunFinding:
    found = LiveRunFinding(run)
    rate = config["audio"]["format"]["rate"]
    frames, silence = speech_frames(speech, rate)
    t0 = time.monotonic()
    first_frame_at: list[float] = []

    async def stream(ws: Any) -> None:
        start = time.monotonic()
        first_frame_at.append(start)
        for sent in range(10_000):
            chunk = frames[sent] if sent < len(frames) else silence
            try:
                await ws.send(live.append_audio(chunk))
            except ConnectionClosed:
                return
            delay = start + (sent + 1) * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    sender: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(timeout_s):
            headers = {"Authorization": f"Bearer {api_key}"}
            async with websockets.connect(url, additional_headers=headers, max_size=1 << 24) as ws:
                await ws.send(json.dumps({"type": "session.start", "session": config}))
                async for message in ws:
                    event = json.loads(message)
                    kind = str(event.get("type"))
                    found.event_types[kind] = found.event_types.get(kind, 0) + 1
                    if kind == "error":
                        found.errors.append(ErrorSeen.from_event(event))
                        found.failure = f"error {found.errors[-1].code}"
                        return found
                    if kind == "session.started" and sender is None:
                        found.ms_to_started = round((time.monotonic() - t0) * 1000, 1)
                        sender = asyncio.create_task(stream(ws))
                    elif kind == "session.output_audio.delta" and not found.ok:
                        delta = base64.b64decode(str(event.get("delta", "")))
                        if has_sound(delta) and first_frame_at:
                            found.ok = True
                            found.ms_to_first_sound = round(
                                (time.monotonic() - first_frame_at[0]) * 1000, 1
                            )
                            await ws.send(json.dumps(live.session_close()))
                            return found
    except TimeoutError:
        found.failure = found.failure or f"no audio within {timeout_s * 1000:.0f} ms"
    except (OSError, InvalidHandshake) as exc:
        found.failure = f"cannot connect to {url}: {exc}"
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else 1006
        found.failure = found.failure or f"closed {code}"
    finally:
        if sender is not None:
            sender.cancel()
    return found


async def probe_live(
    url: str,
    api_key: str,
    *,
    model: str,
    rate: int,
    voice: str,
    instructions: str,
    runs: int,
    speech: bytes,
    timeout_ms: int,
    checks: Sequence[LiveCheck] = LIVE_CHECKS,
) -> LiveFindings:
    """Probe the Live endpoint at ``url``: ``runs`` sessions one after another (each streams in
    real time), then the checks at once."""
    config = _config(model, rate, voice, instructions)
    findings = LiveFindings(url, model, rate)
    timeout_s = timeout_ms / 1000
    for run in range(1, runs + 1):
        findings.runs.append(await _run(url, api_key, config, run, speech, timeout_s))
    findings.checks = list(
        await asyncio.gather(*(_check(url, api_key, config, c, timeout_s) for c in checks))
    )
    return findings


# --- rendering ------------------------------------------------------------------------------------


def _said(f: LiveCheckFinding) -> str:
    if f.error is not None:
        return f"{f.error.code}: {f.error.message}"
    if f.close_code is not None:
        return f"close {f.close_code} {f.close_reason or ''}".strip()
    return f.connect_error or ""


def live_markdown(findings: LiveFindings) -> list[str]:
    status, detail = summarise_live(findings)
    started = [r.ms_to_started for r in findings.runs if r.ms_to_started is not None]
    sound = [r.ms_to_first_sound for r in findings.runs if r.ms_to_first_sound is not None]
    types = sorted({t for r in findings.runs for t in r.event_types})
    lines = [
        "### Combo C (GPT-Live, `REALTIME_SCHEMA=live`)",
        f"- URL: `{findings.url}` (no query string: the model goes in `session.start`)",
        f"- Model: `{findings.model}`; audio `audio/pcm` at {findings.rate} Hz",
        f"- Result: **{status}**, {detail}",
    ]
    if started:
        lines.append(f"- `session.started` after {min(started):.0f}-{max(started):.0f} ms")
    if sound:
        lines.append(
            f"- first reply audio {min(sound):.0f}-{max(sound):.0f} ms after the first caller "
            "frame (speech, then silence, streamed in real time)"
        )
    if types:
        lines.append("- server events seen: " + ", ".join(f"`{t}`" for t in types))
    lines += ["", "| check | expected | endpoint answered | as expected | the endpoint said |"]
    lines.append("|---|---|---|---|---|")
    for f in findings.checks:
        said = _said(f).replace("|", "\\|")
        lines.append(
            f"| {f.spec.says} | {f.spec.expect} | {f.outcome} | "
            f"{'yes' if f.as_expected else '**no**'} | {said} |"
        )
    return lines + [""]


def live_json(findings: LiveFindings) -> dict[str, Any]:
    status, detail = summarise_live(findings)
    return {
        "combo": "C",
        "schema": "live",
        "url": findings.url,
        "model": findings.model,
        "rate": findings.rate,
        "status": status,
        "detail": detail,
        "works": status == "works",
        "runs": [asdict(r) for r in findings.runs],
        "checks": [
            {**asdict(f), "says": f.spec.says, "expect": f.spec.expect, "ok": f.as_expected}
            for f in findings.checks
        ],
    }


def live_table(findings: LiveFindings) -> list[str]:
    status, detail = summarise_live(findings)
    out = [f"combo C (live) {findings.model} at {findings.url}: {status}, {detail}"]
    for f in findings.checks:
        mark = "ok" if f.as_expected else "NO"
        said = _said(f)
        out.append(
            f"  {mark}  {f.check}: {f.outcome} (expected {f.spec.expect})"
            + (f": {said}" if said else "")
        )
    return out
